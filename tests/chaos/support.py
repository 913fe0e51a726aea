"""A fleet on the test's own redis-server, a slow scripted model, and the counts to print."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rho_agent.testing import ScriptedResponse, text, tool_call
from tests.chaos.redis_server import RedisServer
from tests.integration.fleet import Fleet, started


@dataclass
class PortFleet(Fleet):
    """A Fleet whose broker and bus are ``server`` (db 0) instead of the shared Redis."""

    server: RedisServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url


@contextlib.contextmanager
def chaos_fleet(
    tmp: Path, server: RedisServer, workers: dict[str, dict[str, str]]
) -> Iterator[PortFleet]:
    with started(PortFleet(0, tmp, server=server), workers) as fleet:
        yield fleet


def stepping(steps: int, delay: float) -> Any:
    """A model that calls the harmless ``mark`` tool ``steps`` times, then answers ``done``."""

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        done = sum(message["role"] == "tool" for message in body["messages"])
        if done < steps:
            return tool_call("mark", {"path": "/dev/null", "n": done + 1}, delay=delay)
        return text("done", delay=delay)

    return respond


def lost_lease_lines(fleet: Fleet) -> int:
    """How many times any worker logged that it lost a job's lease."""
    workers = [*fleet.workers.values(), *fleet.retired]
    return sum(worker.log().count("lost its lease") for worker in workers)


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start
