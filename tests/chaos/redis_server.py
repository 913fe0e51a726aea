"""A redis-server process of the test's own, on a free port, that a test may stop and restart.

The shared Redis on 6379 must never be restarted by a test; these servers are started with
``--port P`` and either no persistence (``--save "" --appendonly no``) or AOF in a temporary
directory, and are stopped by their pid.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.integration.fleet import free_port


@dataclass
class RedisServer:
    """One redis-server; ``restart`` keeps its port (and, with ``aof``, its data)."""

    directory: Path
    aof: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
            if self.aof
            else ["--appendonly", "no"]
        )
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(self.directory), *persistence,
        ]  # fmt: skip
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        """SIGTERM by pid (without persistence Redis forgets everything)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@contextlib.contextmanager
def redis_server(directory: Path, *, aof: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(directory, aof=aof).start()
    try:
        yield server
    finally:
        server.stop()
