"""Subprocess mode: a built-in behaviour served by another process, for benchmarks."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self


class SpawnedModelServer:
    """A model server running in a child process; ``stop()`` ends it.

    The child also exits when this process dies, because it stops when its stdin closes.
    """

    def __init__(self, process: subprocess.Popen[bytes], base_url: str) -> None:
        self.process = process
        self.base_url = base_url

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the child (kill it if it lingers); safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def spawn_model_server(
    behaviour: str, delay: float = 0.0, *, port: int = 0, timeout: float = 30.0
) -> SpawnedModelServer:
    """Start ``python -m rho_agent.testing.model_server`` and wait for its base URL."""
    command = [
        sys.executable,
        "-m",
        "rho_agent.testing.model_server",
        "--port",
        str(port),
        "--behaviour",
        behaviour,
        "--delay",
        str(delay),
        "--stop-on-stdin-eof",
    ]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_env()
    )
    server = SpawnedModelServer(process, "")
    try:
        server.base_url = _read_first_line(process, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _child_env() -> dict[str, str]:
    """This environment, with rho_agent importable even from an uninstalled source tree."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, path]))}


def _read_first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The child's first stdout line, without blocking past ``timeout``."""
    assert process.stdout is not None
    what = f"model server subprocess ({' '.join(map(str, process.args))})"  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError(f"{what} printed no base URL within {timeout} s")
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(
                    f"{what} exited with code {process.wait()} before printing its base URL; "
                    "its stderr says why"
                )
            line += chunk
    return line.decode().splitlines()[0].strip()
