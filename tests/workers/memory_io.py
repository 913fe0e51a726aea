"""A worker's I/O in memory: the MemoryBus and a broker that only records what it sends.

What ``SessionHost`` connects to in tests of the worker (``WorkerIO`` injected), with no Redis
and no Celery broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from dispatch.engine.memory_bus import MemoryBus
from dispatch.spec import JobSpec
from workers.fleet_io import WorkerIO
from workers.lease import Requeued
from workers.worker_settings import WorkerSettings

NO_REDIS = "redis://127.0.0.1:9/0"
"""A broker URL nothing listens on: the injected I/O must be the only I/O."""


class RecordingBroker:
    """The worker's broker without Celery: remembers each job it sends, with its suffix."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.opened = 0
        self.closed = 0

    def send(self, specs: Sequence[JobSpec], *, attempt_suffix: str = "") -> None:
        self.sent += [(spec.job_id, attempt_suffix) for spec in specs]

    def close(self) -> None:
        self.closed += 1


class MemoryIO:
    """A ``Connect`` giving the host a MemoryBus (made on the host's loop) and the broker.

    ``hand_back`` stands in for the ``HAND_BACK`` script: it marks the owned jobs queued on the
    bus (as the script does in Redis) and remembers what the shutdown asked it.
    """

    def __init__(self) -> None:
        self.broker = RecordingBroker()
        self.bus = MemoryBus()
        self.specs: dict[str, JobSpec] = {}
        self.handed: list[tuple[list[tuple[str, int]], str]] = []

    async def __call__(self, settings: WorkerSettings) -> WorkerIO:
        self.bus = MemoryBus(settings.fleet.keys)
        return WorkerIO(bus=self.bus, open_broker=self._open, hand_back=self._hand_back)

    def _open(self) -> RecordingBroker:
        self.broker.opened += 1
        return self.broker

    async def _hand_back(self, owned: list[tuple[str, int]], worker: str) -> list[Requeued]:
        self.handed.append((owned, worker))
        for job_id, _ in owned:
            await self.bus.set_fields(job_id, {"status": "queued"})
        return [Requeued(job_id, self.specs[job_id], attempt) for job_id, attempt in owned]


def wait_for(condition: Callable[[], bool], within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)
