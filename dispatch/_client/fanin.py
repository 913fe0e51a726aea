"""FanIn: how a dispatcher learns that its jobs finished, and their results, cheaply.

Every job a dispatcher submits names it (``reply_to``); when the job ends, its result goes on the
dispatcher's done stream. One reader task follows that stream while anyone waits and hands each
result to its waiters, so waiting for a thousand jobs costs a few reads, not a thousand polls.
Results of jobs nobody waits for yet are kept (up to a bound) for when someone does; jobs this
dispatcher did not submit are followed through their own events stream instead.

The same check finds awaited jobs that finished without their done entry being read (a done
stream is trimmed to its newest 100,000 entries): their results are read from the jobs instead.

A Redis that restarts without persistence forgets jobs. While anyone waits, the reader also
checks every few seconds that the awaited jobs still have a record; one that stays missing for
``RHO_AGENT_REDIS_OUTAGE_LIMIT`` (a worker still running it re-creates it well within that) is
sent again from this dispatcher's copy of its spec, or, if this dispatcher did not submit it,
fails the wait with ``JobLost``. Nothing waits forever on a job Redis no longer knows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable

from dispatch.engine.bus import START, DispatchBus, StreamEntry, is_finished
from dispatch.engine.loop import still_running
from dispatch.errors import FleetUnavailable, JobLost, JobNotFound, JobTimeout
from dispatch.info import AWAITING_APPROVAL
from dispatch.spec import JobSpec
from rho_agent.events import RunResult

logger = logging.getLogger("dispatch")

_EARLY_LIMIT = 10_000
_MAX_RESENDS = 3
"""Times one job is sent again after its record vanished before the wait fails."""
ReadEvents = Callable[[str, str, float], Awaitable[tuple[list[StreamEntry], bool]]]
Resend = Callable[[list[JobSpec]], Awaitable[None]]


class FanIn:
    """Waits for jobs; ``expect`` may be called from any thread, the rest on the loop."""

    def __init__(
        self,
        bus: Callable[[], DispatchBus],
        dispatcher_id: str,
        read: ReadEvents,
        resend: Resend,
        *,
        missing_limit_s: float,
    ):
        self._bus = bus
        self._id = dispatcher_id
        self._read_events = read
        self._resend = resend
        self._missing_limit_s = missing_limit_s
        self._audit_every_s = min(5.0, missing_limit_s / 3)
        self._lock = threading.Lock()
        self._pending: dict[str, JobSpec] = {}
        self._missing_since: dict[str, float] = {}
        self._resends: dict[str, int] = {}
        self.resent = 0
        """Jobs sent again because Redis lost their records (for tests and logs)."""
        self._early: OrderedDict[str, RunResult | None] = OrderedDict()
        self._waiters: defaultdict[str, list[asyncio.Future[RunResult | None]]] = defaultdict(list)
        self._after = START
        self._reader: asyncio.Task[None] | None = None

    def expect(self, specs: Iterable[JobSpec]) -> None:
        """Jobs this dispatcher is about to send (call before sending them)."""
        with self._lock:
            self._pending.update((spec.job_id, spec) for spec in specs)

    def expects(self, job_id: str) -> bool:
        """Whether this dispatcher sent the job and has not seen it finish (it holds its spec)."""
        with self._lock:
            return job_id in self._pending

    async def results(self, job_ids: list[str], deadline: float | None) -> list[RunResult]:
        """Every job's result, in order, once all have finished (JobTimeout at the deadline)."""
        known: dict[str, RunResult | None] = {}
        futures: dict[str, asyncio.Future[RunResult | None]] = {}
        unknown: list[str] = []
        with self._lock:
            for job_id in dict.fromkeys(job_ids):
                if job_id in self._early and not _paused(self._early[job_id]):
                    known[job_id] = self._early.pop(job_id)
                elif job_id in self._pending:
                    futures[job_id] = self._register(job_id)
                else:  # not ours, or parked for approval then: ask the bus where it is now
                    self._early.pop(job_id, None)
                    unknown.append(job_id)
        try:
            waits: list[asyncio.Future[object]] = [asyncio.shield(f) for f in futures.values()]
            waits += await self._others(unknown, known, deadline)
            await self._wait(waits, len(job_ids), deadline)
        finally:
            for job_id, future in futures.items():
                self._unregister(job_id, future)
        for job_id, future in futures.items():
            known[job_id] = future.result()
        return await self._complete(job_ids, known)

    # -- internals ----------------------------------------------------------------------------

    def _register(self, job_id: str) -> asyncio.Future[RunResult | None]:
        future: asyncio.Future[RunResult | None] = asyncio.get_running_loop().create_future()
        self._waiters[job_id].append(future)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_done(), name="rho-fan-in")
        return future

    def _unregister(self, job_id: str, future: asyncio.Future[RunResult | None]) -> None:
        waiters = self._waiters.get(job_id, [])
        if future in waiters:
            waiters.remove(future)
        if not waiters:
            self._waiters.pop(job_id, None)

    async def _others(
        self, job_ids: list[str], known: dict[str, RunResult | None], deadline: float | None
    ) -> list[asyncio.Future[object]]:
        """Jobs this dispatcher is not expecting: finished ones, or ones to follow."""
        if not job_ids:
            return []
        waits: list[asyncio.Future[object]] = []
        for job_id, info in zip(job_ids, await self._bus().get_info(job_ids), strict=True):
            if info is None:
                raise JobNotFound(f"job {job_id} does not exist (never submitted, or expired)")
            if info.finished:
                known[job_id] = None
            else:
                waits.append(asyncio.ensure_future(self._follow(job_id, deadline)))
        return waits

    async def _wait(
        self, waits: list[asyncio.Future[object]], total: int, deadline: float | None
    ) -> None:
        if not waits:
            return
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.gather(*waits), remaining)
        except TimeoutError:
            raise JobTimeout(
                f"{len(waits)} of {total} job(s) did not finish in time; they keep running: "
                "wait again, or cancel them with job.cancel()"
            ) from None

    async def _follow(self, job_id: str, deadline: float | None) -> None:
        """Follow another dispatcher's job through its events until the ``finished`` entry."""
        after = START
        missing_since: float | None = None
        while True:
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeout(f"job {job_id} did not finish in time; it keeps running")
            try:
                entries, over = await self._read_events(job_id, after, min(1.0, remaining))
            except JobNotFound:  # it existed when the wait began: Redis lost it
                missing_since = missing_since or time.monotonic()
                if time.monotonic() - missing_since >= self._missing_limit_s:
                    raise JobLost(
                        f"job {job_id} is lost: its record vanished from Redis (restarted "
                        "without persistence?) and this dispatcher did not submit it, so it "
                        "cannot send it again; submit it again"
                    ) from None
                await asyncio.sleep(min(1.0, self._audit_every_s))
                continue
            missing_since = None
            if over or any(is_finished(entry) for entry in entries):
                return
            if entries:
                after = entries[-1].id

    async def _complete(
        self, job_ids: list[str], known: dict[str, RunResult | None]
    ) -> list[RunResult]:
        """Fill in results the done stream did not carry (large ones) with one read."""
        missing = [job_id for job_id in dict.fromkeys(job_ids) if known.get(job_id) is None]
        if missing:
            fetched = await self._bus().get_results(missing)
            known.update(zip(missing, fetched, strict=True))
        results = []
        for job_id in job_ids:
            result = known.get(job_id)
            if result is None:
                raise JobNotFound(f"job {job_id} finished but its result expired")
            results.append(result)
        return results

    async def _read_done(self) -> None:
        next_audit = time.monotonic() + self._audit_every_s
        while self._waiters and still_running():
            try:
                entries = await self._bus().read_done(self._id, self._after, 1.0)
                if time.monotonic() >= next_audit:
                    await self.audit(list(self._waiters))
                    next_audit = time.monotonic() + self._audit_every_s
            except FleetUnavailable as exc:  # Redis gone past the outage limit: so are the waits
                self._fail_all(exc)
                return
            except Exception as exc:
                logger.warning("reading finished jobs failed (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            for entry in entries:
                self._after = entry.id
                self._deliver(entry)

    async def audit(self, job_ids: list[str]) -> dict[str, JobLost]:
        """Send again (or give up on) jobs of this dispatcher whose record stayed missing too
        long: those waited for, or those a batch run polls. Returns the ones given up on."""
        job_ids = [job_id for job_id in job_ids if job_id in self._pending]
        lost: dict[str, JobLost] = {}
        if not job_ids:
            return lost
        now = time.monotonic()
        infos = await self._bus().get_info(job_ids)
        resend: list[JobSpec] = []
        for job_id, info in zip(job_ids, infos, strict=True):
            if info is not None:
                self._missing_since.pop(job_id, None)
                if info.finished:  # its done entry was trimmed before anyone read it
                    self._deliver(StreamEntry("", {"job_id": job_id}))
                continue
            since = self._missing_since.setdefault(job_id, now)
            if now - since < self._missing_limit_s:
                continue
            del self._missing_since[job_id]
            self._resends[job_id] = count = self._resends.get(job_id, 0) + 1
            if count > _MAX_RESENDS:
                lost[job_id] = self._fail(job_id, f"its record vanished from Redis {count} times")
            else:
                resend.append(self._pending[job_id])
        if resend:
            logger.warning(
                "%d job(s) vanished from Redis (restarted without persistence?); sending them "
                "again from this dispatcher's copy: %s",
                len(resend),
                ", ".join(spec.job_id for spec in resend[:10]),
            )
            await self._resend(resend)
            self.resent += len(resend)
        return lost

    def _fail(self, job_id: str, why: str) -> JobLost:
        error = JobLost(f"job {job_id} is lost: {why}; submit it again")
        for future in self._waiters.get(job_id, []):
            if not future.done():
                future.set_exception(error)
        return error

    def _fail_all(self, error: Exception) -> None:
        for waiters in list(self._waiters.values()):
            for future in waiters:
                if not future.done():
                    future.set_exception(error)

    def _deliver(self, entry: StreamEntry) -> None:
        job_id = str(entry.data.get("job_id"))
        raw = entry.data.get("result")
        result = RunResult.from_dict(raw) if isinstance(raw, dict) else None
        with self._lock:
            self._pending.pop(job_id, None)
            self._missing_since.pop(job_id, None)
            self._resends.pop(job_id, None)
            waiters = self._waiters.get(job_id)
            if not waiters:
                self._early[job_id] = result
                if len(self._early) > _EARLY_LIMIT:
                    self._early.popitem(last=False)
                return
        for future in waiters:
            if not future.done():
                future.set_result(result)


def _paused(result: RunResult | None) -> bool:
    """A result that was only a pause: the job may have been approved and gone on since."""
    return result is not None and result.status == AWAITING_APPROVAL
