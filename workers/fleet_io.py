"""What a worker's session host connects to, as one injected value: ``WorkerIO``.

The job bus, the broker that sends jobs (``fan_out`` children, re-sends, hand-backs), the
shared budgets and rate limits, the background loops that keep a fleet's jobs alive (leases,
sweeper, janitor) and the hand-back of running jobs at shutdown. ``connect_fleet`` builds the
production ones on Redis and Celery; a test passes its own ``Connect`` (a MemoryBus and a broker
that records what it sends, tests/workers/), so the session host runs without Redis or Celery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dispatch.engine.bus import RunnerBus
from dispatch.engine.host import JobHost
from dispatch.fleet.celery_broker import CeleryBroker
from dispatch.fleet.ratelimit import RedisRateLimiter
from dispatch.fleet.redis_bus import RedisBus
from dispatch.fleet.script_batch import ScriptBatcher
from dispatch.fleet.spend import RedisSpendLedger
from dispatch.spec import JobSpec
from rho_agent.budgets import SpendLedger
from rho_agent.ratelimits import RateLimiter
from workers.janitor import Janitor
from workers.lease import LeaseKeeper, Requeued, Resend, Sweeper
from workers.shutdown import hand_back
from workers.worker_settings import WorkerSettings


class HostBus(RunnerBus, Protocol):
    """The session host's bus: what its jobs need, and closing it when the worker stops."""

    async def close(self) -> None: ...


class Sender(Protocol):
    """Sends jobs to the queue (blocking: call it from a thread, not the loop)."""

    def send(self, specs: Sequence[JobSpec], *, attempt_suffix: str = "") -> None: ...

    def close(self) -> None: ...


Loop = tuple[str, Coroutine[Any, Any, None]]
"""A named background loop the session host runs as a task until it stops."""
Loops = Callable[[JobHost, Resend], list[Loop]]
"""The background loops for a started host; ``Resend`` sends a job whose worker died again."""
HandBack = Callable[[list[tuple[str, int]], str], Awaitable[list[Requeued]]]
"""Marks the ``(job id, attempt)`` pairs a stopping worker (named) still owns queued again;
returns the ones it marked, to be sent again."""


@dataclass(frozen=True)
class WorkerIO:
    """Everything with I/O a session host uses; ``open_broker`` is called once by the host and
    once more by a graceful shutdown's hand-back. Without ``hand_back`` a shutdown stops its
    running jobs resumably but hands none back (nothing marks them queued)."""

    bus: HostBus
    open_broker: Callable[[], Sender]
    spend: SpendLedger | None = None
    rate_limiter: RateLimiter | None = None
    loops: Loops | None = None
    hand_back: HandBack | None = None


Connect = Callable[[WorkerSettings], Awaitable[WorkerIO]]
"""Builds a worker's I/O on the session host's loop (where its connections then belong)."""


async def connect_fleet(settings: WorkerSettings) -> WorkerIO:
    """The fleet's I/O: a RedisBus (checked reachable), Celery, budgets and rate limits shared
    in Redis, and the lease keeper, sweeper and janitor on the same Redis."""
    fleet = settings.fleet
    bus = RedisBus.from_settings(fleet)
    await bus.client.ping()
    scripts = ScriptBatcher(bus.client, outage_limit_s=fleet.redis_outage_s)

    def loops(host: JobHost, resend: Resend) -> list[Loop]:
        keeper = LeaseKeeper(bus, host, settings.lease_ms)
        sweeper = Sweeper(
            bus.client,
            fleet.keys,
            resend,
            interval_s=settings.sweep_interval_s,
            grace_ms=fleet.queued_lease_s * 1000,
            retention_s=fleet.retention_s,
            events_maxlen=fleet.events_maxlen,
            lease_ms=settings.lease_ms,
        )
        return [
            ("rho-leases", keeper.run()),
            ("rho-sweeper", sweeper.run()),
            ("rho-janitor", Janitor(bus.client, fleet).run()),
        ]

    async def hand_back_owned(owned: list[tuple[str, int]], worker: str) -> list[Requeued]:
        return await hand_back(bus, owned, worker)

    return WorkerIO(
        bus=bus,
        open_broker=lambda: CeleryBroker(fleet),
        spend=RedisSpendLedger(
            bus.client, fleet.keys, retention_s=fleet.retention_s, batcher=scripts
        ),
        rate_limiter=RedisRateLimiter(bus.client, fleet.keys, settings.rate_limits, scripts),
        loops=loops,
        hand_back=hand_back_owned,
    )
