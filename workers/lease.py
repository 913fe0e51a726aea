"""Leases and the sweeper: how a job whose worker died is found and sent again, quickly.

Celery's Redis transport redelivers an unacknowledged message only after its visibility timeout,
which must exceed the longest job or live jobs run twice (celery#5935), so it cannot also make dead
workers' jobs come back fast. Instead every running job holds a lease in Redis that its worker's
``LeaseKeeper`` renews every third of the lease; a ``Sweeper`` (one per worker, one active at a
time) re-sends jobs whose lease lapsed. The attempt counter in the job hash makes a stale worker's
writes and results lose (see ``dispatch.fleet.lua``). The sweeper also ends the wait of jobs
whose approval expired: their undecided calls are denied and they are sent again
(docs/approvals.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dispatch.engine.approval import EXPIRED_REASON
from dispatch.engine.bus import Claim
from dispatch.engine.host import JobHost
from dispatch.engine.loop import every
from dispatch.errors import JobSpecError
from dispatch.fleet import lua
from dispatch.fleet.redis_bus import RedisBus
from dispatch.keys import Keys
from dispatch.spec import JobSpec

logger = logging.getLogger("workers.lease")

Resend = Callable[[JobSpec, int], None]
"""Publishes a JobSpec again (blocking); the int is the attempt that was lost."""


@dataclass(frozen=True)
class Requeued:
    """A job a Lua script just marked queued again, to be sent back to the queue."""

    job_id: str
    spec: JobSpec
    attempt: int


def requeued_jobs(flat: list[str], why: str) -> Iterator[Requeued]:
    """The jobs ``CLAIM_LAPSED`` or ``HAND_BACK`` returned (id, spec, attempt, flattened).

    A payload that no longer decodes cannot be sent again: it is logged, naming ``why`` the job
    was being re-sent, and skipped. The sweeper and the graceful shutdown both read their
    scripts' answers here, so a re-send works the same whichever way the job came back.
    """
    for index in range(0, len(flat), 3):
        job_id, payload, attempt = flat[index : index + 3]
        try:
            spec = JobSpec.decode(payload)
        except JobSpecError as exc:
            logger.error("job %s cannot be %s: %s", job_id, why, exc)
            continue
        yield Requeued(job_id, spec, int(attempt))


class LeaseKeeper:
    """Renews the leases of every job this host runs; cancels the ones another worker took.

    A renewal that fails (Redis restarting or unreachable) is retried at the next one: the jobs
    keep running in memory, and the sweeper waits a whole lease after an outage before it takes
    any lease as lapsed (``Sweeper``). A job whose record Redis lost (restarted without
    persistence) gets it back from this worker's copy of its spec
    (``dispatch.fleet.records``), so its dispatcher sees it running instead of missing.
    """

    def __init__(self, bus: RedisBus, host: JobHost, lease_ms: int) -> None:
        self._bus = bus
        self._renew = bus.client.register_script(lua.RENEW)
        self._keys = bus.keys
        self._host = host
        self._lease_ms = lease_ms

    async def run(self) -> None:
        await every(
            self._lease_ms / 3000, self.renew_once, failing="renewing job leases", log=logger
        )

    async def renew_once(self) -> list[Claim]:
        active = self._host.active()
        if not active:
            return []
        args: list[Any] = [self._keys.job_prefix(), self._lease_ms]
        for job_id, attempt in active:
            args += [job_id, attempt]
        flat: list[str] = await self._renew(keys=[self._keys.leases()], args=args)
        lost = [Claim(flat[i], int(flat[i + 1])) for i in range(0, len(flat), 2)]
        for claim in lost:
            logger.warning(
                "job %s attempt %d was taken over by another attempt; stopping it here",
                claim.job_id,
                claim.attempt,
            )
            self._host.stop_attempt(claim)  # not cancel_local: that stops every attempt here
        await self._bus.restore_missing(self._host.job_ids())  # as of now, not before RENEW
        return lost


class Sweeper:
    """Every ``interval_s``, re-sends jobs whose lease lapsed (at most one sweeper at a time).

    Leases lapse for everyone while Redis is unreachable or restarting, although their workers
    still run the jobs: so the sweeper takes a lease as lapsed only once Redis has been up, and
    reachable from here without a gap, for a whole lease (every live worker renewed since).
    """

    def __init__(
        self,
        client: Any,
        keys: Keys,
        resend: Resend,
        *,
        interval_s: float,
        grace_ms: int,
        retention_s: int,
        events_maxlen: int,
        lease_ms: int,
    ) -> None:
        self._client = client
        self._claim = client.register_script(lua.CLAIM_LAPSED)
        self._expire = client.register_script(lua.EXPIRE_APPROVALS)
        self._keys = keys
        self._resend = resend
        self._interval_s = interval_s
        self._grace_ms = grace_ms
        self._retention_s = retention_s
        self._events_maxlen = events_maxlen
        self._lease_s = lease_ms / 1000
        self._steady_since: float | None = None
        self._last_answer = 0.0

    async def run(self) -> None:
        await every(
            self._interval_s,
            self.sweep_once,
            failing="sweeping for stopped jobs",
            log=logger,
            on_error=self._distrust_redis,
        )

    def _distrust_redis(self) -> None:
        """A failed sweep may be an outage: Redis must be steady for a lease again first."""
        self._steady_since = None

    async def redis_steady(self) -> bool:
        """Whether Redis has been up and answering here for at least one lease."""
        asked = time.monotonic()
        info = await self._client.info("server")
        answered = time.monotonic()
        gap = max(2 * self._interval_s, self._lease_s / 3)
        if self._steady_since is None or answered - self._last_answer > gap or answered - asked > 1:
            self._steady_since = answered  # an outage, a pause, or our first look
        self._last_answer = answered
        uptime_s = float(info.get("uptime_in_seconds", 0))
        return uptime_s >= self._lease_s and answered - self._steady_since >= self._lease_s

    async def sweep_once(self) -> list[str]:
        if not await self.redis_steady():
            return []
        lock_ms = max(1, int(self._interval_s * 900))
        if not await self._client.set(self._keys.sweeper_lock(), "1", nx=True, px=lock_ms):
            return []
        flat: list[str] = await self._claim(
            keys=[self._keys.leases()], args=[self._keys.job_prefix(), self._grace_ms, 500]
        )
        requeued = []
        for job in requeued_jobs(flat, "re-sent"):
            await asyncio.to_thread(self._resend, job.spec, job.attempt)
            logger.warning(
                "job %s: its worker stopped (attempt %s); sent again", job.job_id, job.attempt
            )
            requeued.append(job.job_id)
        return requeued + await self._expire_approvals()

    async def _expire_approvals(self) -> list[str]:
        flat: list[str] = await self._expire(
            keys=[self._keys.approvals(), self._keys.leases()],
            args=[
                self._keys.job_prefix(),
                self._grace_ms,
                self._retention_s,
                self._events_maxlen,
                EXPIRED_REASON,
                500,
            ],
        )
        expired = []
        for job in requeued_jobs(flat, "continued after its approval expired"):
            await asyncio.to_thread(self._resend, job.spec, job.attempt)
            logger.warning("job %s: its approval expired; continuing with denials", job.job_id)
            expired.append(job.job_id)
        return expired
