"""Helpers the contract tests share: paths under the working dir, files, process checks."""

from __future__ import annotations

import asyncio
import posixpath
import time

from rho_agent.backends.base import ExecutionBackend

SLOW = 10.0
"""Seconds a remote backend may take for what is instant locally."""


def at(backend: ExecutionBackend, *parts: str) -> str:
    return posixpath.join(backend.working_dir, *parts)


async def put(backend: ExecutionBackend, relative: str, data: str | bytes) -> str:
    path = at(backend, relative)
    await backend.write_file(path, data.encode() if isinstance(data, str) else data)
    return path


async def alive(backend: ExecutionBackend, pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (read from /proc on the backend)."""
    check = (
        f"state=$(cut -d' ' -f3 /proc/{pid}/stat 2>/dev/null); "
        '[ -n "$state" ] && [ "$state" != Z ]'
    )
    return (await backend.run_command(check, timeout=SLOW)).exit_code == 0


async def wait_dead(backend: ExecutionBackend, pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not await alive(backend, pid):
            return True
        await asyncio.sleep(0.1)
    return not await alive(backend, pid)


async def read_pid(backend: ExecutionBackend, relative: str, within: float = 5.0) -> int:
    """Wait for a command to write its pid to ``relative``; return it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            text = (await backend.read_file(at(backend, relative))).decode().strip()
        except FileNotFoundError:
            text = ""
        if text.isdigit():
            return int(text)
        await asyncio.sleep(0.05)
    raise AssertionError(f"the command did not write {relative} within {within} s")
