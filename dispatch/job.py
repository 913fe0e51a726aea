"""Job: a handle on one dispatched job, with sync and async forms of every query.

A Job belongs to the Dispatcher that made or attached it; the work happens on that dispatcher's
private event loop, so the sync methods can be called from any thread and the ``a``-prefixed ones
from any event loop (each sync method is its async twin run there, see ``_client.twins``). One
exception: in fleet mode, ``for event in job.events()`` reads Redis on the caller's own thread,
so an event wakes one thread, not two.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING

from dispatch._client.twins import blocking
from dispatch.engine.bus import (
    START,
    CancelOutcome,
    SeenEvents,
    StreamEntry,
    entry_event,
    is_finished,
)
from dispatch.errors import JobNotFound
from dispatch.info import JobInfo, JobStatus
from rho_agent.events import AgentEvent, RunResult
from rho_agent.state import State, StateObserver

if TYPE_CHECKING:
    from dispatch._client.core import _Core

_PAGE_BLOCK_S = 1.0


class Job:
    """One job: ``id``, ``session_id``, and its status, result, events and state."""

    def __init__(self, job_id: str, session_id: str, core: _Core) -> None:
        self.id = job_id
        self.session_id = session_id
        self._core = core
        core.hold(self)

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, session_id={self.session_id!r})"

    # -- status and metadata ------------------------------------------------------------------

    async def ainfo(self) -> JobInfo:
        """Status, timing, usage, cost and worker, as stored right now."""
        info = (await self._core.loop.acall(self._core.infos([self.id])))[0]
        if info is None:
            raise JobNotFound(f"job {self.id} does not exist (never submitted, or expired)")
        return info

    info = blocking(ainfo)

    async def astatus(self) -> JobStatus:
        """``queued``, ``running``, ``awaiting_approval``, ``completed``, ``error``,
        ``cancelled``, ``interrupted``, ``max_turns``, ``invalid_output`` or
        ``budget_exceeded``."""
        return (await self.ainfo()).status

    status = blocking(astatus)

    # -- result -------------------------------------------------------------------------------

    async def aresult(self, timeout: float | None = None) -> RunResult:  # noqa: ASYNC109
        """Wait for the job to finish and return its RunResult (JobTimeout after ``timeout`` s)."""
        return await self._core.loop.acall(self._core.result(self.id, timeout))

    result = blocking(aresult)

    # -- events -------------------------------------------------------------------------------

    def events(self, from_start: bool = True) -> EventStream:
        """Every AgentEvent of the job, from the first, live until the job ends.

        Works with ``for`` and ``async for``; a late reader still sees every event. With
        ``from_start=False`` only events emitted after this call are yielded.
        """
        return EventStream(self.id, self._core, from_start=from_start)

    # -- state --------------------------------------------------------------------------------

    async def astate(self) -> State:
        """The job's session State, rebuilt from its trace (exact, as the worker has it)."""
        return await self._core.loop.acall(self._core.state(self.session_id))

    state = blocking(astate)

    def add_observer(self, observer: StateObserver) -> None:
        """Send this job's trace records to ``observer.on_event`` (from the first record on).

        Observers are called on the dispatcher's background thread, in order.
        """
        self._core.observe(self.id, self.session_id, observer)

    # -- approvals ----------------------------------------------------------------------------

    async def aapprove(self, call_ids: Sequence[str] | None = None) -> str:
        """Approve pending tool calls of this ``awaiting_approval`` job (None: every undecided
        one). Once every pending call is decided the job continues, on any worker, from its
        trace: approved calls run, denied ones are answered with their reason.

        Returns ``queued`` (the job goes on) or ``waiting`` (other calls still need a decision).
        Raises ApprovalRefused, changing nothing, when the job is not awaiting approval or a
        call id is not pending or was decided already (docs/approvals.md).
        """
        return await self._core.loop.acall(self._decide(True, call_ids, ""))

    approve = blocking(aapprove)

    async def adeny(self, call_ids: Sequence[str] | None = None, *, reason: str = "") -> str:
        """Deny pending tool calls (None: every undecided one); the model reads ``reason`` as
        the call's result. Returns and raises as ``approve``."""
        return await self._core.loop.acall(self._decide(False, call_ids, reason))

    deny = blocking(adeny)

    async def _decide(self, approve: bool, call_ids: Sequence[str] | None, reason: str) -> str:
        ids = None if call_ids is None else list(call_ids)
        return (await self._core.decide(self.id, approve, ids, reason)).action

    # -- cancel -------------------------------------------------------------------------------

    async def acancel(self) -> CancelOutcome:
        """Cancel the job: a queued job (or one awaiting approval) ends at once, a running one
        stops within a second.

        Returns ``cancelled`` (it never ran), ``requested`` (its worker is stopping it),
        ``finished`` (too late) or ``unknown``.
        """
        return await self._core.loop.acall(self._core.cancel(self.id))

    cancel = blocking(acancel)


class EventStream:
    """Iterates a job's events (sync or async), replaying from the first one.

    Each event is yielded once, even if a worker's writer stored it twice after a lost reply:
    events carry a stable id (attempt, sequence) and copies are dropped.
    """

    def __init__(self, job_id: str, core: _Core, *, from_start: bool = True) -> None:
        self._job_id = job_id
        self._core = core
        self._after = START
        self._pending: list[AgentEvent] = []
        self._ended = False
        self._skip_existing = not from_start
        self._seen = SeenEvents()
        self._existed = core.fan_in.expects(job_id)
        """Sent from here, or a page was read: a missing record is Redis forgetting the job."""
        self._missing_since: float | None = None

    def __iter__(self) -> Iterator[AgentEvent]:
        core = self._core
        while self._pending or not self._over:
            if not self._pending:
                try:
                    page = core.read_events_blocking(self._job_id, self._after, self._block_s)
                except JobNotFound:
                    if not self._existed:
                        raise
                    core.loop.call(core.vanished(self._job_id, self._missing()))
                    time.sleep(_PAGE_BLOCK_S)
                    continue
                self._read(page)
            yield from self._drain()

    async def __aiter__(self) -> AsyncIterator[AgentEvent]:
        core = self._core
        while self._pending or not self._over:
            if not self._pending:
                page = core.read_events(self._job_id, self._after, self._block_s)
                try:
                    self._read(await core.loop.acall(page))
                except JobNotFound:
                    if not self._existed:
                        raise
                    await core.loop.acall(core.vanished(self._job_id, self._missing()))
                    await asyncio.sleep(_PAGE_BLOCK_S)
                    continue
            for event in self._drain():
                yield event

    def _missing(self) -> float:
        """Since when the job that existed has had no record (the first miss of a run of them)."""
        if self._missing_since is None:
            self._missing_since = time.monotonic()
        return self._missing_since

    @property
    def _over(self) -> bool:
        return self._ended and not self._skip_existing

    @property
    def _block_s(self) -> float:
        """Skipping what the stream holds now must not wait for more."""
        return 0.0 if self._skip_existing else _PAGE_BLOCK_S

    def _read(self, page: tuple[list[StreamEntry], bool]) -> None:
        self._existed, self._missing_since = True, None
        (self._skip if self._skip_existing else self._take)(page)

    def _drain(self) -> Iterator[AgentEvent]:
        """The events read and not yet yielded, one at a time (a reader may stop between)."""
        while self._pending:
            yield self._pending.pop(0)

    def _skip(self, page: tuple[list[StreamEntry], bool]) -> None:
        """Move past what the stream holds now (``from_start=False``), ending if it ended."""
        entries, job_over = page
        for entry in entries:
            self._seen.fresh(entry)  # a later copy of a skipped event is skipped too
        self._ended = job_over or any(is_finished(entry) for entry in entries)
        if entries:
            self._after = entries[-1].id
        else:
            self._skip_existing = False

    def _take(self, page: tuple[list[StreamEntry], bool]) -> None:
        entries, job_over = page
        for entry in entries:
            self._after = entry.id
            if is_finished(entry):
                self._ended = True
                return
            event = entry_event(entry) if self._seen.fresh(entry) else None
            if event is not None:
                self._pending.append(event)
        if job_over and not entries:
            self._ended = True
