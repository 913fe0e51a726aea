"""A redis-server of the test's own (a free port, no persistence), to pause or stop at will:
the shared one on 6379 is never paused. Stopped by its pid."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.integration.fleet import Fleet, free_port


@contextlib.contextmanager
def own_redis(tmp: Path) -> Iterator[str]:
    """Start redis-server on a free 127.0.0.1 port; yields its base URL (no database)."""
    port = free_port()
    with (tmp / f"redis-{port}.log").open("ab") as log:
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"redis://127.0.0.1:{port}"
    try:
        client = redis.Redis.from_url(url, socket_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.kill()
        process.wait(10)


@dataclass
class OwnRedisFleet(Fleet):
    """A ``Fleet`` on ``base`` (an ``own_redis`` URL) instead of the shared server."""

    base: str = ""

    @property
    def url(self) -> str:
        return f"{self.base}/{self.db}"
