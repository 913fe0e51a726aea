"""LocalBackend: tools run on this machine, under one working directory.

Each command runs with ``bash -c`` in its own session (so its own process group), stdin closed and
stdout+stderr on one pipe. A timeout or a cancelled task kills the whole group. A command that
leaves a background process behind returns as soon as the shell exits; the pipe is then closed
(redirect a background process's output to a file if it must keep writing), and ``close()`` kills
whatever those background processes are still running.

A command run for a permission profile (``profile=``) is confined by the operating system as
``rho_agent.sandbox`` derives from it, and every command gets an allowlisted environment without
the worker's secrets (``rho_agent.sandbox.tool_environment``). Confined commands are forked by a
confined launcher that backends of this process with the same policy and working directory share
(``rho_agent.sandbox.LauncherPool``); exit codes, timeouts, cancellation, output limits and
background processes behave as for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, TypeVar

from rho_agent.backends._beneath import check_readable, read_beneath, write_beneath
from rho_agent.backends._local_search import glob_files, grep_files
from rho_agent.backends.base import CommandResult, FileEntry, GrepMatch
from rho_agent.errors import BackendError
from rho_agent.permissions import PermissionProfile
from rho_agent.sandbox import (
    UNCONFINED,
    LauncherPool,
    Sandbox,
    SandboxPolicy,
    check_extra_names,
    tool_environment,
)

T = TypeVar("T")

_DRAIN_GRACE = 0.25
"""Seconds to keep reading after the shell exits, for output still in the pipe."""


class LocalBackend:
    """Runs commands and file operations on this machine (see the module docstring).

    ``working_dir`` defaults to the current directory. ``max_output_bytes`` bounds the output
    kept per command (head and tail); ``max_file_bytes`` the size of a file ``read_file`` loads.
    ``sandbox`` confines commands (default: probe this machine, see ``Sandbox.from_env``);
    ``env_names`` adds variable names to the environment allowlist of commands (a profile's
    ``env`` adds more for the commands run for it). ``launchers`` starts confined commands
    (default: the process's shared ``LauncherPool``).
    """

    def __init__(
        self,
        working_dir: str | None = None,
        *,
        max_output_bytes: int = 4_000_000,
        max_file_bytes: int = 64 * 1024 * 1024,
        sandbox: Sandbox | None = None,
        env_names: Iterable[str] = (),
        launchers: LauncherPool | None = None,
    ) -> None:
        self._working_dir = os.path.abspath(working_dir if working_dir is not None else os.getcwd())
        self._max_output_bytes = max_output_bytes
        self._max_file_bytes = max_file_bytes
        self._shell = shutil.which("bash") or "/bin/sh"
        self._leftover_groups: set[int] = set()
        self._sandbox = sandbox if sandbox is not None else Sandbox.from_env()
        self._env_names = check_extra_names(env_names)
        self._pool = launchers if launchers is not None else LauncherPool.shared()
        self._joined: set[SandboxPolicy] = set()

    def __repr__(self) -> str:
        return f"LocalBackend(working_dir={self._working_dir!r})"

    @property
    def working_dir(self) -> str:
        return self._working_dir

    async def start(self) -> None:
        """Create the working directory if it does not exist yet."""
        os.makedirs(self._working_dir, exist_ok=True)

    async def close(self) -> None:
        """Kill the background processes commands left running; leave the confined launchers
        (the last backend to leave one stops it)."""
        for group in sorted(self._leftover_groups):
            _kill_group(group)
        self._leftover_groups.clear()
        joined, self._joined = self._joined, set()
        for policy in joined:
            await asyncio.to_thread(self._pool.leave, policy, self._working_dir)

    async def realpath(self, path: str) -> str:
        return await asyncio.to_thread(os.path.realpath, path)

    async def run_command(
        self,
        command: str,
        *,
        timeout: float,  # noqa: ASYNC109 - the protocol's signature
        cwd: str | None = None,
        profile: PermissionProfile | None = None,
    ) -> CommandResult:
        directory = cwd or self._working_dir
        if not await asyncio.to_thread(os.path.isdir, directory):
            raise BackendError(f"cannot run the command: directory {directory} does not exist")
        policy = UNCONFINED if profile is None else SandboxPolicy.for_profile(profile)
        argv = [self._shell, "-c", command]
        names = self._env_names if profile is None else (*self._env_names, *profile.env)
        env = tool_environment(os.environ, names)
        if self._sandbox.confines(policy):
            return await self._run_confined(policy, argv, env, directory, timeout)
        return await self._run(argv, env, directory, timeout)

    async def _run(
        self, argv: list[str], env: dict[str, str], directory: str, limit: float
    ) -> CommandResult:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                cwd=directory,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_fd)
            raise BackendError(f"cannot start {argv[0]}: {exc}") from exc
        finally:
            os.close(write_fd)
        return await self._supervise(process, read_fd, limit)

    async def _run_confined(
        self,
        policy: SandboxPolicy,
        argv: list[str],
        env: dict[str, str],
        directory: str,
        limit: float,
    ) -> CommandResult:
        read_fd, write_fd = os.pipe()
        try:
            if policy not in self._joined:  # before using it, so no other backend stops it
                self._pool.join(policy, self._working_dir)
                self._joined.add(policy)
            launcher = self._pool.current(policy, self._working_dir)
            if launcher is None:  # start it without blocking the loop
                launcher = await asyncio.to_thread(self._pool.start, policy, self._working_dir)
            process = await launcher.spawn(argv, env, directory, write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        try:
            return await self._supervise(process, read_fd, limit)
        finally:
            if not process.close():
                await asyncio.to_thread(process.remove_scratch)

    async def _supervise(self, process: _Process, read_fd: int, limit: float) -> CommandResult:
        loop = asyncio.get_running_loop()
        capture = _Capture(self._max_output_bytes, loop.create_future())
        transport: asyncio.BaseTransport | None = None
        timed_out = False
        try:
            pipe = os.fdopen(read_fd, "rb", 0)
            transport, _ = await loop.connect_read_pipe(lambda: capture, pipe)
            try:
                await asyncio.wait_for(process.wait(), limit)
            except TimeoutError:
                timed_out = True
                _kill_group(process.pid)
                with contextlib.suppress(TimeoutError):  # a process stuck in the kernel
                    await asyncio.wait_for(process.wait(), 5)
            await asyncio.wait([capture.closed], timeout=_DRAIN_GRACE)
        except BaseException:
            _kill_group(process.pid)
            raise
        finally:
            if transport is not None:
                transport.close()
        if not timed_out and _group_alive(process.pid):
            self._leftover_groups.add(process.pid)
        code = process.returncode if process.returncode is not None else -signal.SIGKILL
        return CommandResult(exit_code=code, output=capture.text(), timed_out=timed_out)

    async def read_file(self, path: str) -> bytes:
        return await asyncio.to_thread(self._read, path)

    def _read(self, path: str) -> bytes:
        # Regular files only, checked before the open and again after it: a FIFO would block
        # the open (a non-blocking one cannot), and opening a device may act on it.
        check_readable(os.stat(path), path, self._max_file_bytes)
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as file:
            check_readable(os.fstat(file.fileno()), path, self._max_file_bytes)
            os.set_blocking(file.fileno(), True)
            return file.read()

    async def write_file(self, path: str, data: bytes) -> None:
        def write() -> None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)

        await asyncio.to_thread(write)

    async def read_file_beneath(self, root: str, path: str) -> bytes:
        """Read ``path`` below ``root`` without following a symlink swapped in (``_beneath``)."""
        return await asyncio.to_thread(read_beneath, root, path, self._max_file_bytes)

    async def write_file_beneath(
        self, root: str, path: str, data: bytes, *, single_link: bool
    ) -> None:
        """Write ``path`` below ``root`` without following a symlink swapped in (``_beneath``)."""
        await asyncio.to_thread(write_beneath, root, path, data, single_link=single_link)

    async def list_dir(self, path: str) -> list[FileEntry]:
        return await asyncio.to_thread(_list, path)

    async def glob(self, pattern: str, path: str, *, limit: int) -> list[str]:
        return await _in_thread_stoppable(lambda stop: glob_files(pattern, path, limit, stop))

    async def grep(
        self, pattern: str, path: str, *, include: str | None, limit: int
    ) -> list[GrepMatch]:
        return await _in_thread_stoppable(
            lambda stop: grep_files(pattern, path, include, limit, stop)
        )


class _Process(Protocol):
    """What ``_supervise`` needs of a command: an asyncio subprocess or a ``ConfinedProcess``."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


class _Capture(asyncio.Protocol):
    """Keeps the head and the tail of a command's output, at most ``limit`` bytes in all."""

    def __init__(self, limit: int, closed: asyncio.Future[None]) -> None:
        self._half = max(limit // 2, 1)
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = 0
        self.closed = closed

    def data_received(self, data: bytes) -> None:
        room = self._half - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        self._tail += data
        excess = len(self._tail) - self._half
        if excess > 0:
            del self._tail[:excess]
            self._dropped += excess

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def text(self) -> str:
        if self._dropped:
            marker = f"\n[... {self._dropped:,} bytes of output omitted ...]\n".encode()
            data = bytes(self._head) + marker + bytes(self._tail)
        else:
            data = bytes(self._head + self._tail)
        return data.decode("utf-8", errors="replace")


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _list(path: str) -> list[FileEntry]:
    entries = []
    with os.scandir(path) as scan:
        for entry in scan:
            try:
                is_dir, size = entry.is_dir(), entry.stat().st_size
            except OSError:
                is_dir, size = False, entry.stat(follow_symlinks=False).st_size
            entries.append(FileEntry(entry.name, is_dir, size))
    return sorted(entries, key=lambda item: item.name)


async def _in_thread_stoppable(function: Callable[[threading.Event], T]) -> T:
    """Run ``function`` in a thread; if the awaiting task is cancelled, tell it to stop."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(function, stop)
    except asyncio.CancelledError:
        stop.set()
        raise
