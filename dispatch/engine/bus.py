"""The job bus: where a job's metadata, events and trace live while it runs and after.

Two implementations with one contract (tests/dispatch/test_bus_contract.py runs against both):
``MemoryBus`` for embedded mode and ``RedisBus`` for the fleet. A running job writes through
``RunnerBus``; a dispatcher (or ``rho-agent watch``) reads through ``DispatchBus``.

A job's events stream holds two kinds of entries, in order: ``{"kind": "event", "event": {...}}``
(an ``AgentEvent.to_dict()``) and lifecycle entries ``{"kind": "job", "type": "started" |
"restarted" | "finished", ...}``. ``finished`` is always last, so a reader knows when to stop.
Stream positions are opaque strings; ``"0"`` means "from the first entry".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from dispatch.info import JobInfo
from dispatch.spec import JobSpec
from rho_agent.events import AgentEvent, RunResult

START = "0"
EVENT_PAGE = 1000
"""How many events one read returns at most."""

StartAction = Literal["run", "skip", "cancelled", "busy"]
CancelOutcome = Literal["cancelled", "requested", "finished", "unknown"]


@dataclass(frozen=True)
class StreamEntry:
    """One entry of a stream: its position and its decoded data."""

    id: str
    data: dict[str, Any]


@dataclass(frozen=True)
class StartDecision:
    """What a runner may do with a job it received.

    ``run``: it owns attempt ``attempt``. ``cancelled``: it owns the attempt but the job was
    cancelled before it started. ``busy``: it owns the attempt but another live job (``detail``)
    is running the same session. ``skip``: someone else runs or ran it (``detail`` says why).
    """

    action: StartAction
    attempt: int = 0
    detail: str = ""


class RunnerBus(Protocol):
    """What a running job needs. ``emit_*`` never block; ``flush`` makes them durable."""

    async def start(self, spec: JobSpec, worker: str, lease_ms: int) -> StartDecision: ...

    async def get_fields(self, job_id: str) -> dict[str, str]: ...

    async def set_fields(self, job_id: str, fields: Mapping[str, str]) -> None: ...

    async def read_trace(
        self, session_id: str, after: str = START, block_s: float = 0.0
    ) -> list[StreamEntry]: ...

    async def read_events(
        self, job_id: str, after: str = START, block_s: float = 0.0, count: int = EVENT_PAGE
    ) -> list[StreamEntry]: ...

    def emit_event(self, job_id: str, entry: dict[str, Any]) -> None: ...

    def emit_trace(self, session_id: str, job_id: str, record: dict[str, Any]) -> None: ...

    def emit_progress(self, job_id: str, fields: Mapping[str, str]) -> None: ...

    def emit_session(self, session_id: str, fields: Mapping[str, str], *, new: bool) -> None: ...

    async def flush(self) -> None: ...

    async def finish(
        self, spec: JobSpec, attempt: int, result: RunResult, error: str | None
    ) -> bool: ...

    async def cancel_requested(self, job_id: str) -> bool: ...

    async def reject(self, job_id: str, error: str) -> bool: ...

    async def next_cancels(self, after: str, block_s: float) -> tuple[str, list[str]]: ...


class DispatchBus(Protocol):
    """What a dispatcher needs: record jobs, read their state, cancel them."""

    async def submit(self, specs: Sequence[JobSpec], queue: str) -> None: ...

    async def get_info(self, job_ids: Sequence[str]) -> list[JobInfo | None]: ...

    async def get_results(self, job_ids: Sequence[str]) -> list[RunResult | None]: ...

    async def recent_jobs(self, limit: int) -> list[str]: ...

    async def request_cancel(self, job_id: str) -> CancelOutcome: ...

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
    }


def event_entry(event: AgentEvent) -> dict[str, Any]:
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


def stop_reason(result: RunResult) -> str:
    """Why a run stopped short of an answer without failing (a budget refused its next model
    call), for the job's ``error`` field; empty otherwise."""
    if result.status != "budget_exceeded":
        return ""
    for event in reversed(result.events):
        if event.type == "budget_exceeded" and event.content:
            return event.content
    return "a budget refused the next model call"


def cancelled_before_start() -> RunResult:
    """The result of a job cancelled while it was still queued."""
    event = AgentEvent(type="cancelled", content="cancelled before it started")
    return RunResult(text="", events=[event], status="cancelled", usage={})


def rejected(error: str) -> RunResult:
    """The result of a job a worker refused before running it (a malformed payload)."""
    event = AgentEvent(type="error", content=error)
    return RunResult(text="", events=[event], status="error", usage={})
