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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dispatch.engine.approval import EXPIRED_REASON
from dispatch.engine.host import JobHost
from dispatch.engine.loop import still_running
from dispatch.errors import JobSpecError
from dispatch.fleet import lua
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
    """Renews the leases of every job this host runs; cancels the ones another worker took."""

    def __init__(self, client: Any, keys: Keys, host: JobHost, lease_ms: int) -> None:
        self._renew = client.register_script(lua.RENEW)
        self._keys = keys
        self._host = host
        self._lease_ms = lease_ms

    async def run(self) -> None:
        while still_running():
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                await self.renew_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("renewing job leases failed (%s); retrying", exc)

    async def renew_once(self) -> list[str]:
        active = self._host.active()
        if not active:
            return []
        args: list[Any] = [self._keys.job_prefix(), self._lease_ms]
        for job_id, attempt in active:
            args += [job_id, attempt]
        lost: list[str] = await self._renew(keys=[self._keys.leases()], args=args)
        for job_id in lost:
            logger.warning("job %s was taken over by another worker; stopping it here", job_id)
            self._host.cancel_local(job_id)
        return lost


class Sweeper:
    """Every ``interval_s``, re-sends jobs whose lease lapsed (at most one sweeper at a time)."""

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

    async def run(self) -> None:
        while still_running():
            await asyncio.sleep(self._interval_s)
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("sweeping for stopped jobs failed (%s); retrying", exc)

    async def sweep_once(self) -> list[str]:
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
