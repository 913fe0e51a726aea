"""The job bus: where a job's metadata, events and trace live while it runs and after.

Two implementations with one contract (tests/dispatch/test_bus_contract.py runs against both):
``MemoryBus`` for embedded mode and ``RedisBus`` for the fleet. The runner side is split into
small roles, each taken by the code that uses it: ``JobClaims``, ``JobRecords``, ``JobWrites`` and
``ApprovalParking`` (a ``JobRun``), ``ChildJobs`` (its ``fan_out`` children), ``JobTree``
(cancelling a tree) and ``HostControl`` (a ``JobHost``); ``RunBus`` and ``RunnerBus`` gather them
for a run and a host. A dispatcher (or ``rho-agent watch``) reads through ``DispatchBus``.

A job's events stream holds two kinds of entries, in order: ``{"kind": "event", "attempt": 2,
"seq": 7, "event": {...}}`` (an ``AgentEvent.to_dict()`` with its stable id: the job, the attempt
that emitted it and its place in that attempt) and lifecycle entries ``{"kind": "job", "type":
"started" | "restarted" | "handed_back" | "finished", ...}``. ``finished`` is always last, so a
reader knows when to stop. Stream positions are opaque strings; ``"0"`` means "from the first
entry".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from dispatch.info import Decision, JobInfo, PendingCall
from dispatch.spec import JobSpec
from rho_agent.events import AgentEvent, RunError, RunResult, output_data

if TYPE_CHECKING:
    from dispatch.engine.approval import DecideOutcome

START = "0"
EVENT_PAGE = 1000
"""How many events one read returns at most."""

StartAction = Literal["run", "skip", "cancelled", "busy", "exists"]
CancelOutcome = Literal["cancelled", "requested", "finished", "unknown"]


@dataclass(frozen=True)
class StreamEntry:
    """One entry of a stream: its position and its decoded data."""

    id: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """One attempt at one job, owned by the runner that started it: the fencing token.

    Every write a running job makes carries its claim, and the bus refuses it atomically once the
    job is no longer ``running`` under this attempt (the lease lapsed and the sweeper or a newer
    attempt took the job over, or it was handed back or finished). A runner whose write was
    refused has lost the job and must stop at once.
    """

    job_id: str
    attempt: int


Refused = Callable[[Claim], None]
"""Told (on the bus's event loop) that a write under this claim was refused."""


@dataclass(frozen=True)
class StartDecision:
    """What a runner may do with a job it received.

    ``run``: it owns attempt ``attempt``. ``cancelled``: it owns the attempt but the job was
    cancelled before it started. ``busy``: it owns the attempt but another live job (``detail``)
    is running the same session. ``exists``: it owns the attempt but the job starts a new
    session whose id is taken. ``skip``: someone else runs or ran it (``detail`` says why).
    ``handbacks``: how many earlier attempts ended by a graceful hand-back at shutdown (those are
    not failures, so they do not count against the attempt limit).
    """

    action: StartAction
    attempt: int = 0
    detail: str = ""
    handbacks: int = 0


class JobClaims(Protocol):
    """Claiming a delivered job: the attempt a ``JobRun`` owns, or why it may not run it."""

    async def start(self, spec: JobSpec, worker: str, lease_ms: int) -> StartDecision: ...


class JobRecords(Protocol):
    """What an attempt reads back to resume where earlier ones stopped: the session's trace,
    the job's events, and the job fields its baseline lives in (``JobRun``)."""

    async def get_fields(self, job_id: str) -> dict[str, str]: ...

    async def set_fields(self, job_id: str, fields: Mapping[str, str]) -> None: ...

    async def read_trace(
        self, session_id: str, after: str = START, block_s: float = 0.0
    ) -> list[StreamEntry]: ...

    async def read_events(
        self, job_id: str, after: str = START, block_s: float = 0.0, count: int = EVENT_PAGE
    ) -> list[StreamEntry]: ...


class JobWrites(Protocol):
    """A running attempt's writes (``JobRun``). ``emit_*`` never block; ``flush`` makes them
    durable. Every write is fenced by its ``Claim``: applied only while that attempt owns the
    job."""

    def emit_event(self, claim: Claim, entry: dict[str, Any]) -> None: ...

    def emit_trace(self, claim: Claim, session_id: str, record: dict[str, Any]) -> None: ...

    def emit_progress(self, claim: Claim, fields: Mapping[str, str]) -> None: ...

    def emit_session(
        self, claim: Claim, session_id: str, fields: Mapping[str, str], *, new: bool
    ) -> None: ...

    async def flush(self) -> None: ...

    async def finish(
        self, spec: JobSpec, attempt: int, result: RunResult, error: str | None
    ) -> bool:
        """Store the job's end with ``result.status`` and ``error``, why it did not complete
        (JobInfo.error); False if another attempt owns the job now."""
        ...


class ApprovalParking(Protocol):
    """Parking a run paused for a person's decision (``JobRun``; docs/approvals.md)."""

    async def await_approval(
        self,
        spec: JobSpec,
        attempt: int,
        result: RunResult,
        error: str | None,
        pending: list[PendingCall],
        ttl_s: float,
    ) -> bool:
        """Park the job as ``awaiting_approval`` with its ``pending`` calls (they expire after
        ``ttl_s``); its waiters get ``result``. False if another attempt owns the job now."""
        ...


class ChildJobs(Protocol):
    """A running job's ``fan_out`` children: record them, then wait for their ends on the
    parent's done stream (``JobSubJobs``)."""

    async def submit_children(self, parent_id: str, specs: Sequence[JobSpec]) -> list[str]:
        """Record ``specs`` as children of ``parent_id``, each only if no job has its id yet
        (a resumed parent submits the same ids again); return the ids now ``queued``, which
        the caller sends to the transport (a queued one sent twice starts once)."""
        ...

    async def read_done(
        self, dispatcher_id: str, after: str, block_s: float
    ) -> list[StreamEntry]: ...

    async def get_results(self, job_ids: Sequence[str]) -> list[RunResult | None]: ...


class JobTree(Protocol):
    """What cancelling a job's tree needs: its children, and a cancel request
    (``cancel_children``, from a parent's end or a dispatcher's cancel)."""

    async def children(self, job_id: str) -> list[str]:
        """The ids of every child ``job_id`` submitted (empty if none)."""
        ...

    async def request_cancel(self, job_id: str) -> CancelOutcome: ...


class HostControl(Protocol):
    """What a ``JobHost`` asks of the bus itself: the cancel requests it routes to its runs,
    the refused writes that stop a run, and the payloads it rejects before any run."""

    async def next_cancels(self, after: str, block_s: float) -> tuple[str, list[str]]: ...

    def on_refused(self, callback: Refused) -> None:
        """Call ``callback`` whenever an ``emit_*`` under a stale claim is refused."""

    async def reject(self, job_id: str, error: str) -> bool: ...


class RunBus(JobClaims, JobRecords, JobWrites, ApprovalParking, ChildJobs, JobTree, Protocol):
    """Everything one ``JobRun`` uses, directly and through its ``fan_out`` children."""


class RunnerBus(RunBus, HostControl, Protocol):
    """What a ``JobHost`` takes: its runs' roles and its own."""


class DispatchBus(Protocol):
    """What a dispatcher needs: record jobs, read their state, cancel them."""

    async def submit(self, specs: Sequence[JobSpec], queue: str) -> None: ...

    async def get_info(self, job_ids: Sequence[str]) -> list[JobInfo | None]: ...

    async def get_results(self, job_ids: Sequence[str]) -> list[RunResult | None]: ...

    async def recent_jobs(self, limit: int) -> list[str]: ...

    async def request_cancel(self, job_id: str) -> CancelOutcome: ...

    async def children(self, job_id: str) -> list[str]: ...

    async def decide(
        self, job_id: str, decision: Decision, call_ids: Sequence[str] | None, reason: str
    ) -> DecideOutcome:
        """Record ``decision`` for ``call_ids`` (None: every undecided call) of a job awaiting
        approval, atomically; queue the job again once every call is decided. Raises
        ApprovalRefused (changing nothing) or JobNotFound."""
        ...

    async def awaiting(self, limit: int) -> list[JobInfo]:
        """Jobs awaiting approval, the soonest to expire first."""
        ...

    async def expire_approvals(self, reason: str) -> list[tuple[JobSpec, int]]:
        """Deny, with ``reason``, the undecided calls of jobs whose approval time is over and
        queue them again; returns each spec with its last attempt, to be sent."""
        ...

    async def read_done(
        self, dispatcher_id: str, after: str, block_s: float
    ) -> list[StreamEntry]: ...

    async def read_events(
        self, job_id: str, after: str = START, block_s: float = 0.0, count: int = EVENT_PAGE
    ) -> list[StreamEntry]: ...

    async def read_trace(
        self, session_id: str, after: str = START, block_s: float = 0.0
    ) -> list[StreamEntry]: ...

    async def close(self) -> None: ...


class JobBus(RunnerBus, DispatchBus, Protocol):
    """Both sides: what MemoryBus and RedisBus implement."""


def event_dict(event: AgentEvent) -> dict[str, Any]:
    """``event.to_dict()`` without its deep copy (entries are serialised at once)."""
    return {key: value for key, value in vars(event).items() if value is not None}


def result_dict(result: RunResult) -> dict[str, Any]:
    """``result.to_dict()`` without deep-copying every event."""
    return {
        "text": result.text,
        "status": result.status,
        "usage": dict(result.usage),
        "events": [event_dict(event) for event in result.events],
        "error": result.error.to_dict() if result.error is not None else None,
        "output": output_data(result.output),
    }


def event_entry(event: AgentEvent, attempt: int = 0, seq: int = 0) -> dict[str, Any]:
    """An events-stream entry; ``attempt`` and ``seq`` (from 1) identify a running job's events."""
    if seq:
        return {"kind": "event", "attempt": attempt, "seq": seq, "event": event_dict(event)}
    return {"kind": "event", "event": event_dict(event)}


def lifecycle_entry(kind: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "job", "type": kind, **fields}


def is_finished(entry: StreamEntry) -> bool:
    return entry.data.get("kind") == "job" and entry.data.get("type") == "finished"


def entry_event(entry: StreamEntry) -> AgentEvent | None:
    """The AgentEvent an entry carries; a restart shows as a ``job_restarted`` event."""
    data = entry.data
    if data.get("kind") == "event" and isinstance(data.get("event"), dict):
        return AgentEvent.from_dict(data["event"])
    if data.get("kind") == "job" and data.get("type") == "restarted":
        return AgentEvent(
            type="job_restarted",
            content=(
                f"the previous worker stopped; attempt {data.get('attempt')} resumes on "
                f"{data.get('worker')} from the last recorded state"
            ),
        )
    return None


class SeenEvents:
    """Drops event entries a resend wrote twice, by their stable id (attempt, seq).

    One attempt's events reach the stream in the order it emitted them (its writer resends
    unconfirmed writes in order), so an entry whose ``seq`` is not above the highest already seen
    for its attempt is a copy. Memory: one number per attempt.
    """

    def __init__(self) -> None:
        self._last: dict[int, int] = {}

    def fresh(self, entry: StreamEntry) -> bool:
        seq = entry.data.get("seq")
        if entry.data.get("kind") != "event" or not isinstance(seq, int):
            return True
        attempt = int(entry.data.get("attempt") or 0)
        if seq <= self._last.get(attempt, 0):
            return False
        self._last[attempt] = seq
        return True


def cancelled_before_start() -> RunResult:
    """The result of a job cancelled while it was still queued."""
    event = AgentEvent(type="cancelled", content="cancelled before it started")
    return RunResult(text="", events=[event], status="cancelled", usage={})


def rejected(error: str) -> RunResult:
    """The result of a job a worker refused before running it (a malformed payload)."""
    event = AgentEvent(type="error", content=error)
    return RunResult(
        text="", events=[event], status="error", usage={}, error=RunError("JobSpecError", error)
    )


_FAILURE_EVENTS = ("error", "max_turns", "cancelled", "interruption", "budget_exceeded")


def failure_reason(result: RunResult) -> str | None:
    """Why a run that did not complete ended, so JobInfo.error, the results file and Flower can
    say it: its RunError (``ModelError: ...``), else its last error, max_turns, cancelled or
    interruption event's text."""
    if result.status == "completed":
        return None
    if result.error is not None:
        return str(result.error)
    for event in reversed(result.events):
        if event.type in _FAILURE_EVENTS and event.content:
            return event.content
    return f"the run ended with status {result.status}"
