"""Where a Dispatcher's jobs go: the ``Broker`` protocol, in-process (embedded) or to Celery
workers (fleet). The dispatcher's core talks to either through the protocol alone."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from dispatch.engine.approval import EXPIRED_REASON
from dispatch.engine.bus import EVENT_PAGE, DispatchBus, JobBus, StreamEntry
from dispatch.engine.loop import LoopThread, still_running, stop_tasks
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec
from rho_agent.budgets import Budget, BudgetStatus, MemorySpendLedger
from rho_agent.ratelimits import MemoryRateLimiter

logger = logging.getLogger("dispatch")

CONNECT_TIMEOUT_S = 5.0
"""How long the dispatcher's own Redis connections may take to open (redis-py waits for the
kernel otherwise: minutes for a host that drops packets)."""
_EXPIRY_POLL_S = 0.25
"""How often an embedded dispatcher looks for approvals that expired (a dict scan)."""


class Broker(Protocol):
    """Sends a dispatcher's jobs and reads their events; ``bus`` holds what the jobs write."""

    @property
    def bus(self) -> DispatchBus: ...

    def publish(self, specs: list[JobSpec]) -> None:
        """Record the jobs as queued and send them (blocking; any thread but the loop's)."""
        ...

    async def apublish(self, specs: list[JobSpec]) -> None:
        """``publish`` from an event loop other than the dispatcher's."""
        ...

    def read_events_blocking(self, job_id: str, after: str, block_s: float) -> list[StreamEntry]:
        """A page of a job's events, read from the caller's thread (blocking up to ``block_s``)."""
        ...

    async def revoke(self, job_id: str) -> None:
        """Take a job that will never run off the queue (on the dispatcher's loop)."""
        ...

    async def reach(self) -> None:
        """Make sure jobs can be sent before recording what leads to a send (a decision): a
        broker never reached raises FleetUnavailable."""
        ...

    async def resend(self, spec: JobSpec, attempt: int) -> None:
        """Send a job the bus queued again after its ``attempt`` (an approval decided it)."""
        ...

    def record_batch(self, batch_id: str, fields: dict[str, str]) -> None:
        """Store a batch's ``total`` and job id by entry index (blocking; any thread)."""
        ...

    def read_batch(self, batch_id: str) -> dict[str, str]:
        """What ``record_batch`` stored for ``batch_id`` (empty if nothing)."""
        ...

    def set_budget(self, budget: Budget) -> None:
        """Store a label or fleet budget (blocking; any thread)."""
        ...

    def budget_statuses(self) -> list[BudgetStatus]:
        """Every budget scope with its spend in its current window (blocking; any thread)."""
        ...

    async def close(self) -> None: ...


def open_broker(
    settings: FleetSettings, loop: LoopThread, held: Callable[[str], bool] = lambda job_id: False
) -> Broker:
    """The fleet broker when a broker URL is set, else the embedded one on ``loop`` (which
    keeps the finished jobs ``held`` names beyond its bound)."""
    if settings.broker_url:
        return FleetBroker(settings)
    return EmbeddedBroker(settings, loop, held)


class EmbeddedBroker:
    """Runs jobs on the dispatcher's loop through a JobHost over a MemoryBus."""

    def __init__(
        self, settings: FleetSettings, loop: LoopThread, held: Callable[[str], bool]
    ) -> None:
        from dispatch.engine.fan_out import FanOutLimits
        from dispatch.engine.host import JobHost
        from dispatch.engine.memory_bus import MemoryBus
        from dispatch.engine.run import RunnerOptions

        memory = MemoryBus(
            settings.keys,
            retention_s=settings.retention_s,
            keep_finished=settings.embedded_keep,
            events_maxlen=settings.events_maxlen,
            held=held,
        )
        self.bus: JobBus = memory
        self._loop = loop
        self._queue = settings.queue
        self.ledger = MemorySpendLedger()
        options = RunnerOptions(
            worker="embedded",
            spend=self.ledger,
            rate_limiter=MemoryRateLimiter(),
            approval_ttl_s=settings.approval_ttl_s,
            publish=self._run_recorded,
            fan_out=FanOutLimits(settings.fan_out_max_depth, settings.fan_out_max_children),
        )
        self._host = JobHost(memory, options, concurrency=settings.embedded_concurrency)
        self._tasks: set[asyncio.Task[object]] = set()
        self._batches: dict[str, dict[str, str]] = {}
        self._expiry: asyncio.Task[None] | None = None

    def record_batch(self, batch_id: str, fields: dict[str, str]) -> None:
        """Remember a batch's job ids (only this process can see an embedded batch)."""
        self._batches.setdefault(batch_id, {}).update(fields)

    def read_batch(self, batch_id: str) -> dict[str, str]:
        return dict(self._batches.get(batch_id, {}))

    def publish(self, specs: list[JobSpec]) -> None:
        self._loop.call(self._send(specs))

    async def apublish(self, specs: list[JobSpec]) -> None:
        await self._loop.acall(self._send(specs))

    def read_events_blocking(self, job_id: str, after: str, block_s: float) -> list[StreamEntry]:
        return self._loop.call(self.bus.read_events(job_id, after, block_s))

    async def _send(self, specs: list[JobSpec]) -> None:
        """Record the jobs, then start them (at most ``concurrency`` run at once)."""
        await self.bus.submit(specs, self._queue)
        await self._run_recorded(specs)

    async def _run_recorded(self, specs: list[JobSpec]) -> None:
        """Run recorded jobs on this loop: a dispatcher's, or a ``fan_out`` call's children
        (sub-sessions in this process, through the same host)."""
        await self._host.start()
        if self._expiry is None:
            self._expiry = asyncio.create_task(self._expire_approvals(), name="rho-approvals")
        for spec in specs:
            self._start(spec)

    def _start(self, spec: JobSpec) -> None:
        task: asyncio.Task[object] = asyncio.create_task(self._run(spec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reach(self) -> None:
        return None

    async def resend(self, spec: JobSpec, attempt: int) -> None:
        self._start(spec)

    async def _expire_approvals(self) -> None:
        """Deny the pending calls of jobs nobody decided in time, and continue them."""
        while still_running():
            await asyncio.sleep(_EXPIRY_POLL_S)
            for spec, _ in await self.bus.expire_approvals(EXPIRED_REASON):
                logger.warning("job %s: its approval expired; continuing with denials", spec.job_id)
                self._start(spec)

    async def _run(self, spec: JobSpec) -> object:
        try:
            return await self._host.run(spec.encode())
        except Exception:
            logger.exception("embedded job %s failed outside its run", spec.job_id)
            return None

    async def revoke(self, job_id: str) -> None:
        return None

    def set_budget(self, budget: Budget) -> None:
        self.ledger.set_budget(budget)

    def budget_statuses(self) -> list[BudgetStatus]:
        return self.ledger.statuses()

    async def close(self) -> None:
        if self._expiry is not None:
            await stop_tasks([self._expiry])
        await self._host.stop()


def _first_contact(client: Any, settings: FleetSettings) -> None:
    """PING the job bus's Redis; FleetUnavailable at once if nothing answers there.

    Calls after this ride out a Redis outage for ``RHO_AGENT_REDIS_OUTAGE_LIMIT`` seconds. A
    Redis never reached is not an outage but a wrong URL or a server not started, and waiting a
    minute before saying so only hides that. A server that answers but is not ready (loading
    its data after a restart, or Sentinels that monitor the master but have none up: a failover)
    is waited for like an outage.
    """
    import redis
    from redis.sentinel import MasterNotFoundError

    from dispatch.errors import FleetUnavailable
    from dispatch.fleet.outage import survive_sync
    from dispatch.fleet.redis_clients import sentinels_know_master
    from dispatch.urls import redact_url
    from rho_agent.errors import first_line

    error: Exception
    try:
        client.ping()
        return
    except redis.BusyLoadingError:
        up = True
    except MasterNotFoundError as exc:
        up, error = sentinels_know_master(client), exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        up, error = False, exc
    if up:
        survive_sync(
            client.ping, limit_s=settings.redis_outage_s, what="waiting for it to be ready"
        )
        return
    client.close()
    raise FleetUnavailable(
        f"cannot reach the job bus's Redis at {redact_url(settings.bus_url or '')} "
        f"({first_line(error)}); check that Redis runs there and that --broker / "
        "RHO_AGENT_BROKER_URL (or RHO_AGENT_REDIS_URL, for a bus apart from the broker) "
        "points at it"
    ) from error


class FleetBroker:
    """Publishes jobs to Celery from the caller's thread; reads them back from Redis.

    Publishing is synchronous (a Redis pipeline, then the Celery messages) so a ``submit`` does
    not hop between threads, and so is a sync ``events()`` iteration; everything else reads
    through the async RedisBus on the dispatcher's loop.
    """

    def __init__(self, settings: FleetSettings) -> None:
        from dispatch.fleet.celery_broker import CeleryBroker
        from dispatch.fleet.redis_bus import RedisBus
        from dispatch.fleet.redis_clients import sync_client

        assert settings.bus_url is not None
        self._settings = settings
        self._redis: Any = sync_client(
            settings.bus_url,
            master_name=settings.sentinel_master,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
        )
        _first_contact(self._redis, settings)
        self._celery = CeleryBroker(settings)
        self._broker_is_bus = settings.broker_url == settings.bus_url
        self._broker_reached = self._broker_is_bus
        """The bus's Redis was reached above; a broker of its own (RabbitMQ, or another Redis)
        is first reached before the first send (reading jobs needs only the bus)."""
        self._reaching = threading.Lock()
        self.bus: DispatchBus = RedisBus.from_settings(settings)

    def read_events_blocking(self, job_id: str, after: str, block_s: float) -> list[StreamEntry]:
        """A page of a job's events, read on the caller's thread (blocking up to ``block_s``).

        ``for event in job.events()`` reads here rather than through the dispatcher's loop: one
        thread wakes when an event arrives instead of two (the loop's, then the caller's), which
        on a busy machine is most of an event's delivery time (docs/benchmarks.md). A Redis
        restart or outage shorter than ``RHO_AGENT_REDIS_OUTAGE_LIMIT`` is ridden out.
        """
        from dispatch.fleet.outage import survive_sync
        from dispatch.fleet.redis_bus import stream_entries

        key = self._settings.keys.events(job_id)
        block = int(block_s * 1000) if block_s > 0 else None
        reply = survive_sync(
            lambda: self._redis.xread({key: after}, count=EVENT_PAGE, block=block),
            limit_s=self._settings.redis_outage_s,
            what=f"reading the events of job {job_id}",
        )
        return stream_entries(reply)

    def record_batch(self, batch_id: str, fields: dict[str, str]) -> None:
        """Store a batch's job ids in Redis (before its jobs are sent: a crash in between leaves
        ids that ``--resume`` finds missing and sends again); kept as long as the jobs."""
        self._reach_broker()
        key = self._settings.keys.batch(batch_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self._settings.retention_s)
        pipe.execute()

    def read_batch(self, batch_id: str) -> dict[str, str]:
        return dict(self._redis.hgetall(self._settings.keys.batch(batch_id)))

    def _reach_broker(self) -> None:
        """Before the first write that leads to a send: a broker never reached fails at once,
        with nothing recorded as queued."""
        with self._reaching:
            if not self._broker_reached:
                self._celery.connect()
                self._broker_reached = True

    def publish(self, specs: list[JobSpec]) -> None:
        """Record the jobs as queued, then send them (blocking; any thread).

        Both ride out a Redis outage of up to ``RHO_AGENT_REDIS_OUTAGE_LIMIT``; a send retried
        after a failure may deliver some jobs twice, and the second copy is skipped.
        """
        from kombu.exceptions import OperationalError

        from dispatch.fleet.outage import BUS_REDIS, RETRYABLE, survive_sync
        from dispatch.fleet.redis_bus import queue_submit

        self._reach_broker()

        def record() -> None:
            pipe = self._redis.pipeline(transaction=False)
            queue_submit(pipe, specs, self._settings, self._settings.queue)
            pipe.execute()

        limit = self._settings.redis_outage_s
        survive_sync(record, limit_s=limit, what="recording the jobs")
        survive_sync(
            lambda: self._celery.send(specs),
            limit_s=limit,
            what="sending the jobs",
            server=BUS_REDIS if self._broker_is_bus else "the job broker",
            retry_on=(*RETRYABLE, OperationalError),
        )

    async def apublish(self, specs: list[JobSpec]) -> None:
        await asyncio.to_thread(self.publish, specs)

    async def revoke(self, job_id: str) -> None:
        await asyncio.to_thread(self._celery.revoke, job_id)

    async def reach(self) -> None:
        if not self._broker_reached:
            await asyncio.to_thread(self._reach_broker)

    async def resend(self, spec: JobSpec, attempt: int) -> None:
        await asyncio.to_thread(self._celery.send, [spec], attempt_suffix=f"-a{attempt}")

    def set_budget(self, budget: Budget) -> None:
        from dispatch.fleet.spend import set_budget

        set_budget(self._redis, self._settings.keys, budget, retention_s=self._settings.retention_s)

    def budget_statuses(self) -> list[BudgetStatus]:
        from dispatch.fleet.spend import budget_statuses

        return budget_statuses(self._redis, self._settings.keys)

    async def close(self) -> None:
        await self.bus.close()
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        self._celery.close()
        self._redis.close()
