"""The Dispatcher's engine: broker, fan-in, observers, on a private event loop.

Reads and waits run on ``_Core.loop`` (the async Redis connections and embedded jobs are bound to
it); ``Dispatcher`` and ``Job`` reach it through ``loop.call`` / ``loop.acall``. Sending to the
fleet happens in the caller's thread (see ``FleetBroker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING

from dispatch._client.brokers import Broker, open_broker
from dispatch._client.fanin import FanIn
from dispatch.engine.approval import (
    DENIED_REASON,
    MAX_REASON,
    DecideOutcome,
    decision_value,
    refused,
)
from dispatch.engine.bus import START, CancelOutcome, DispatchBus, StreamEntry
from dispatch.engine.fan_out import cancel_children
from dispatch.engine.loop import LoopThread
from dispatch.errors import ApprovalRefused, JobLost, JobNotFound
from dispatch.info import JobInfo
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec
from rho_agent.errors import OutputInvalid
from rho_agent.events import RunError, RunResult
from rho_agent.output import OutputSchema
from rho_agent.state import State, StateObserver

if TYPE_CHECKING:
    from dispatch.job import Job

logger = logging.getLogger("dispatch")


class _Core:
    """Owns the loop thread, the broker, the fan-in and the dispatcher-side observers."""

    def __init__(self, settings: FleetSettings, dispatcher_id: str) -> None:
        self.settings = settings
        self.id = dispatcher_id
        self.loop = LoopThread(f"rho-dispatcher-{dispatcher_id}")
        self._broker: Broker | None = None
        self._lock = threading.Lock()
        self.fan_in = FanIn(
            lambda: self.bus,
            dispatcher_id,
            self.read_events,
            self._resend,
            missing_limit_s=settings.redis_outage_s,
        )
        self._handles: dict[str, int] = {}
        """Live ``Job`` handles per job id: an embedded dispatcher keeps what they hold."""
        self._handles_lock = threading.RLock()  # re-entered when a collection runs a release
        self._followers: set[asyncio.Task[None]] = set()
        self._models: dict[str, OutputSchema] = {}
        """Jobs whose answers become instances of a pydantic model when read back."""

    @property
    def broker(self) -> Broker:
        with self._lock:
            if self._broker is None:
                self._broker = open_broker(self.settings, self.loop, self.held)
            return self._broker

    @property
    def bus(self) -> DispatchBus:
        return self.broker.bus

    # -- handles ------------------------------------------------------------------------------

    def hold(self, job: Job) -> None:
        """Count ``job`` as held until it is collected (embedded mode only: Redis keeps jobs
        for the retention whoever holds them)."""
        if self.settings.broker_url:
            return
        with self._handles_lock:
            self._handles[job.id] = self._handles.get(job.id, 0) + 1
        weakref.finalize(job, self._release, job.id)

    def _release(self, job_id: str) -> None:
        with self._handles_lock:
            left = self._handles.pop(job_id, 1) - 1
            if left > 0:
                self._handles[job_id] = left

    def held(self, job_id: str) -> bool:
        """Whether a live ``Job`` handle refers to ``job_id``."""
        return job_id in self._handles

    # -- submitting ---------------------------------------------------------------------------

    def submit(
        self,
        specs: list[JobSpec],
        observers: list[StateObserver],
        schema: OutputSchema | None = None,
    ) -> list[Job]:
        """Send jobs (from any thread but the loop's; the sending blocks the caller's thread)."""
        self._expect(specs, schema)
        self.broker.publish(specs)
        return self._jobs(specs, observers)

    def _expect(self, specs: list[JobSpec], schema: OutputSchema | None) -> None:
        self.fan_in.expect(specs)
        if schema is not None and schema.model is not None:
            self._models.update((spec.job_id, schema) for spec in specs)

    async def _resend(self, specs: list[JobSpec]) -> None:
        """Send jobs again whose records Redis lost (the fan-in found them missing)."""
        await self.broker.apublish(specs)

    def _jobs(self, specs: list[JobSpec], observers: list[StateObserver]) -> list[Job]:
        from dispatch.job import Job

        for spec in specs:
            for observer in observers:
                self.observe(spec.job_id, spec.session_id, observer)
        return [Job(spec.job_id, spec.session_id, self) for spec in specs]

    # -- reading ------------------------------------------------------------------------------

    async def infos(self, job_ids: list[str]) -> list[JobInfo | None]:
        return await self.bus.get_info(job_ids)

    async def require_info(self, job_id: str) -> JobInfo:
        info = (await self.bus.get_info([job_id]))[0]
        if info is None:
            raise JobNotFound(f"job {job_id} does not exist (never submitted, or expired)")
        return info

    async def recent(self, limit: int) -> list[JobInfo]:
        job_ids = await self.bus.recent_jobs(limit)
        return [info for info in await self.bus.get_info(job_ids) if info is not None]

    async def read_events(
        self, job_id: str, after: str, block_s: float
    ) -> tuple[list[StreamEntry], bool]:
        """A page of the job's events, and whether the job is over with nothing left to read."""
        entries = await self.bus.read_events(job_id, after, block_s)
        if entries:
            return entries, False
        info = await self.require_info(job_id)
        return entries, info.finished

    def read_events_blocking(
        self, job_id: str, after: str, block_s: float
    ) -> tuple[list[StreamEntry], bool]:
        """``read_events`` for a caller's thread; in fleet mode it reads Redis from that thread."""
        self.loop.refuse_blocking_call_in_loop()
        entries = self.broker.read_events_blocking(job_id, after, block_s)
        if entries:
            return entries, False
        return entries, self.loop.call(self.require_info(job_id)).finished

    async def vanished(self, job_id: str, since: float) -> None:
        """A job that existed has no record (Redis restarted without persistence). One this
        dispatcher sent is sent again from its copy, as for ``result()``; another's worker
        re-creates it, else it is lost (JobLost) once missing for RHO_AGENT_REDIS_OUTAGE_LIMIT."""
        lost = await self.fan_in.audit([job_id])
        if job_id in lost:
            raise lost[job_id]
        if self.fan_in.expects(job_id) or time.monotonic() - since < self.settings.redis_outage_s:
            return
        raise JobLost(
            f"job {job_id} is lost: its record vanished from Redis (restarted without "
            "persistence?) and did not come back; submit it again"
        )

    async def state(self, session_id: str) -> State:
        entries = await self.bus.read_trace(session_id)
        return State.from_records([entry.data["record"] for entry in entries])

    # -- approvals ----------------------------------------------------------------------------

    async def decide(
        self, job_id: str, approve: bool, call_ids: list[str] | None, reason: str
    ) -> DecideOutcome:
        """Record a decision; once every pending call is decided, send the job again."""
        if call_ids is not None and not call_ids:
            raise ApprovalRefused(
                f"no call ids given for job {job_id}; pass None to decide every pending call",
                reason="unknown_call",
            )
        text = (reason.strip() or DENIED_REASON)[:MAX_REASON]
        # A job that does not exist or awaits nothing is the caller's mistake: say so even when
        # the broker is down (the bus checks again, atomically, when it records the decision).
        [info] = await self.bus.get_info([job_id])
        if info is None:
            raise refused(job_id, "not_found", "")
        if info.status != "awaiting_approval":
            raise refused(job_id, "not_awaiting", info.status)
        await self.broker.reach()  # recorded but not sent, a job would wait for a sweeper
        outcome = await self.bus.decide(job_id, decision_value(approve), call_ids, text)
        if outcome.spec is not None:
            await self.broker.resend(outcome.spec, outcome.attempt)
        return outcome

    async def awaiting(self, limit: int) -> list[JobInfo]:
        return await self.bus.awaiting(limit)

    async def cancel(self, job_id: str) -> CancelOutcome:
        outcome = await self.bus.request_cancel(job_id)
        if outcome == "unknown":
            raise JobNotFound(f"job {job_id} does not exist (never submitted, or expired)")
        if outcome == "cancelled":
            await self.broker.revoke(job_id)
            # It ended while queued: an attempt that crashed earlier may have started sub-jobs
            # (a running job cancels its own when it ends).
            await cancel_children(self.bus, job_id)
        return outcome

    # -- waiting ------------------------------------------------------------------------------

    async def result(self, job_id: str, wait_s: float | None) -> RunResult:
        return (await self.gather([job_id], wait_s))[0]

    async def gather(self, job_ids: list[str], wait_s: float | None) -> list[RunResult]:
        deadline = None if wait_s is None else time.monotonic() + wait_s
        results = await self.fan_in.results(job_ids, deadline)
        typed = zip(job_ids, results, strict=True)
        return [self._typed(job_id, result) for job_id, result in typed]

    def _typed(self, job_id: str, result: RunResult) -> RunResult:
        """The result with its JSON ``output`` turned into the model the job was submitted with.

        The worker validated the JSON against the model's JSON schema; the model's own
        validators run here, and an answer they refuse makes the result ``invalid_output``.
        """
        schema = self._models.get(job_id)
        if schema is None or result.output is None or result.status != "completed":
            return result
        try:
            return replace(result, output=schema.from_data(result.output))
        except OutputInvalid as exc:
            message = f"the answer did not pass {schema.name}'s validation here: {exc}"
            return replace(
                result, status="invalid_output", error=RunError("invalid_output", message)
            )

    # -- observers ----------------------------------------------------------------------------

    def observe(self, job_id: str, session_id: str, observer: StateObserver) -> None:
        """Deliver the job's trace records to ``observer`` (callable from any thread)."""
        coroutine = self._follow_trace(job_id, session_id, observer)
        if self.loop.in_loop_thread:
            task = asyncio.get_running_loop().create_task(coroutine)
            self._followers.add(task)
            task.add_done_callback(self._followers.discard)
        else:
            self.loop.submit(coroutine)

    async def _follow_trace(self, job_id: str, session_id: str, observer: StateObserver) -> None:
        try:
            await self._deliver_trace(job_id, session_id, observer)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("following the trace of job %s for %r failed", job_id, observer)

    async def _deliver_trace(self, job_id: str, session_id: str, observer: StateObserver) -> None:
        after = START
        missing_since: float | None = None
        while True:
            entries = await self.bus.read_trace(session_id, after, block_s=1.0)
            for entry in entries:
                after = entry.id
                if entry.data.get("job_id") == job_id:
                    _notify(observer, entry.data["record"])
            if entries:
                continue
            info = (await self.bus.get_info([job_id]))[0]
            if info is None:  # Redis restarted without persistence: its worker re-creates it
                missing_since = missing_since or time.monotonic()
                if time.monotonic() - missing_since < self.settings.redis_outage_s:
                    continue
            else:
                missing_since = None
            if info is None or info.finished:
                for entry in await self.bus.read_trace(session_id, after):
                    if entry.data.get("job_id") == job_id:
                        _notify(observer, entry.data["record"])
                return

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):
                self.loop.call(self._broker.close(), timeout=10)
            self._broker = None
        self.loop.stop()


def _notify(observer: StateObserver, record: dict[str, object]) -> None:
    try:
        observer.on_event(dict(record))
    except Exception:
        logger.exception("state observer %r raised; it keeps receiving records", observer)
