"""MemoryBus: the job bus for embedded mode, in this process, with the RedisBus's semantics.

Used from one event loop (the dispatcher's). Streams wake blocked readers on every append.
What Redis bounds, this bounds too, or a long-lived program would grow by every job it ever ran:
a job's events stream is trimmed to ``events_maxlen``; finished jobs are forgotten after the
retention, like Redis keys expiring, and beyond the newest ``keep_finished`` of them unless a
live ``Job`` handle holds them (``held``), with their events, sub-jobs and, when no kept job
shares it, their session's trace; and a dispatcher's done stream drops what its one reader (the
fan-in, which only reads forward) has read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dispatch.engine.approval import DecideOutcome, encode_pending, refused
from dispatch.engine.bus import (
    EVENT_PAGE,
    START,
    CancelOutcome,
    Claim,
    JobBus,
    Refused,
    StartDecision,
    StreamEntry,
    cancelled_before_start,
    event_entry,
    lifecycle_entry,
    rejected,
    result_dict,
)
from dispatch.info import (
    AWAITING_APPROVAL,
    TERMINAL_STATUSES,
    Decision,
    JobInfo,
    PendingCall,
    job_fields,
)
from dispatch.keys import Keys
from dispatch.spec import JobSpec
from rho_agent.events import RunResult


@dataclass
class _Stream:
    entries: list[StreamEntry] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    trimmed: int = 0
    """Entries dropped from the front; the others keep their ids, as in a trimmed Redis stream."""

    def append(self, data: dict[str, Any], maxlen: int | None = None) -> str:
        entry_id = f"{self.end + 1}-0"
        self.entries.append(StreamEntry(entry_id, data))
        if maxlen is not None and len(self.entries) > maxlen + maxlen // 10:
            self._drop(len(self.entries) - maxlen)  # "MAXLEN ~": in steps, not on every append
        self.changed.set()
        self.changed = asyncio.Event()
        return entry_id

    @property
    def end(self) -> int:
        """The position of the last entry ever appended."""
        return self.trimmed + len(self.entries)

    def after(self, position: str, count: int) -> list[StreamEntry]:
        start = _index(position) - self.trimmed if position not in ("", "$") else len(self.entries)
        start = max(start, 0)
        return self.entries[start : start + count]

    def trim_through(self, position: str) -> None:
        """Drop every entry up to ``position`` (included)."""
        self._drop(_index(position) - self.trimmed)

    def _drop(self, count: int) -> None:
        if count > 0:
            del self.entries[:count]
            self.trimmed += count


def _index(position: str) -> int:
    return int(position.split("-", 1)[0])


_HELD_RECHECKS = 8
"""Held jobs looked at again per submit, to forget those whose handles are gone."""


class MemoryBus:
    """An in-process JobBus, bounded as the module docstring says."""

    def __init__(
        self,
        keys: Keys | None = None,
        *,
        retention_s: float = 3600.0,
        keep_finished: int = 10_000,
        events_maxlen: int = 20_000,
        held: Callable[[str], bool] = lambda job_id: False,
    ) -> None:
        self._keys = keys or Keys()
        self._retention_s = retention_s
        self._keep_finished = keep_finished
        self._events_maxlen = events_maxlen
        self._held = held
        self._jobs: dict[str, dict[str, str]] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()
        """Finished top-level jobs (not sub-jobs) by finish time, oldest first."""
        self._held_aside: OrderedDict[str, float] = OrderedDict()
        """Finished jobs past the bound that a handle held when last looked at."""
        self._sub_jobs: set[str] = set()
        self._dispatchers: set[str] = set()
        """Ids whose done stream a dispatcher's fan-in reads (not a ``fan_out`` parent's)."""
        self._session_jobs: dict[str, int] = {}
        """Kept jobs per session: a session's trace goes with the last of them."""
        self._streams: dict[str, _Stream] = {}
        self._cancel_flags: set[str] = set()
        self._owners: dict[str, str] = {}
        self._sessions: dict[str, dict[str, str]] = {}
        self._children: dict[str, list[str]] = {}
        self._refused_callbacks: list[Refused] = []
        self._awaiting: dict[str, float] = {}
        """Jobs awaiting approval by their deadline (epoch seconds)."""

    # -- dispatcher side ----------------------------------------------------------------------

    async def submit(self, specs: Sequence[JobSpec], queue: str) -> None:
        self._forget_old()
        for spec in specs:
            self._add_job(spec, queue)
            if spec.reply_to:
                self._dispatchers.add(spec.reply_to)

    async def get_info(self, job_ids: Sequence[str]) -> list[JobInfo | None]:
        return [
            JobInfo.from_fields(job_id, self._jobs[job_id]) if job_id in self._jobs else None
            for job_id in job_ids
        ]

    async def get_results(self, job_ids: Sequence[str]) -> list[RunResult | None]:
        raws = [self._jobs.get(job_id, {}).get("result") for job_id in job_ids]
        return [RunResult.from_dict(json.loads(raw)) if raw else None for raw in raws]

    async def recent_jobs(self, limit: int) -> list[str]:
        ordered = sorted(self._jobs, key=lambda job: float(self._jobs[job]["submitted_at"]))
        return list(reversed(ordered))[:limit]

    async def request_cancel(self, job_id: str) -> CancelOutcome:
        fields = self._jobs.get(job_id)
        if fields is None:
            return "unknown"
        if fields["status"] == AWAITING_APPROVAL:
            self._awaiting.pop(job_id, None)
            self._release(job_id, fields["session_id"])
        elif fields["status"] in TERMINAL_STATUSES:
            return "finished"
        if fields["status"] in ("queued", AWAITING_APPROVAL):
            result = cancelled_before_start()
            self._append_event(job_id, event_entry(result.events[0]))
            self._write_finish(job_id, fields, result, None)
            return "cancelled"
        self._cancel_flags.add(job_id)
        self._stream(self._keys.cancels()).append({"job_id": job_id})
        return "requested"

    async def decide(
        self, job_id: str, decision: Decision, call_ids: Sequence[str] | None, reason: str
    ) -> DecideOutcome:
        fields = self._jobs.get(job_id)
        if fields is None:
            raise refused(job_id, "not_found", "")
        if fields["status"] != AWAITING_APPROVAL:
            raise refused(job_id, "not_awaiting", fields["status"])
        pending = [str(call["call_id"]) for call in json.loads(fields["pending_approvals"])]
        decisions: dict[str, dict[str, str]] = json.loads(fields.get("approval_decisions") or "{}")
        chosen = [c for c in pending if c not in decisions] if call_ids is None else call_ids
        for call_id in chosen:
            if call_id not in pending:
                raise refused(job_id, "unknown_call", call_id)
            if call_id in decisions:
                earlier = decisions[call_id]["decision"]
                raise refused(job_id, "already_decided", f"{call_id} {earlier}")
        for call_id in chosen:
            decisions[call_id] = {"decision": decision}
            if decision == "denied":
                decisions[call_id]["reason"] = reason
        fields["approval_decisions"] = json.dumps(decisions)
        left = sum(1 for call_id in pending if call_id not in decisions)
        if left:
            return DecideOutcome("waiting", undecided=left)
        return self._requeue(job_id, fields)

    async def awaiting(self, limit: int) -> list[JobInfo]:
        ordered = sorted(self._awaiting, key=self._awaiting.__getitem__)[:limit]
        return [JobInfo.from_fields(job_id, self._jobs[job_id]) for job_id in ordered]

    async def expire_approvals(self, reason: str) -> list[tuple[JobSpec, int]]:
        now = time.time()
        out = []
        for job_id in [job for job, deadline in self._awaiting.items() if deadline <= now]:
            fields = self._jobs[job_id]
            decisions = json.loads(fields.get("approval_decisions") or "{}")
            for call in json.loads(fields["pending_approvals"]):
                decisions.setdefault(call["call_id"], {"decision": "denied", "reason": reason})
            fields["approval_decisions"] = json.dumps(decisions)
            outcome = self._requeue(job_id, fields)
            assert outcome.spec is not None
            out.append((outcome.spec, outcome.attempt))
        return out

    def _requeue(self, job_id: str, fields: dict[str, str]) -> DecideOutcome:
        """Every pending call is decided: queue the job again, as the Lua ``requeue`` does."""
        self._awaiting.pop(job_id, None)
        fields.update(
            status="queued",
            continuations=str(int(fields.get("continuations") or 0) + 1),
            resumed_by="approval",
        )
        fields.pop("finished_at", None)
        self._finished.pop(job_id, None)
        self._held_aside.pop(job_id, None)
        self._append_event(job_id, lifecycle_entry("approval_decided"))
        spec = JobSpec.decode(fields["spec"])
        return DecideOutcome("queued", spec, int(fields.get("attempt") or 0))

    async def read_done(self, dispatcher_id: str, after: str, block_s: float) -> list[StreamEntry]:
        key = self._keys.done(dispatcher_id)
        stream = self._streams.get(key)
        if stream is not None and dispatcher_id in self._dispatchers and after not in ("", "$"):
            stream.trim_through(after)  # the fan-in has these and never reads back
        return await self._read(key, after, block_s, 10_000)

    async def read_events(
        self, job_id: str, after: str = START, block_s: float = 0.0, count: int = EVENT_PAGE
    ) -> list[StreamEntry]:
        return await self._read(self._keys.events(job_id), after, block_s, count)

    async def read_trace(
        self, session_id: str, after: str = START, block_s: float = 0.0
    ) -> list[StreamEntry]:
        return await self._read(self._keys.trace(session_id), after, block_s, 1_000_000)

    async def close(self) -> None:
        return None

    # -- runner side --------------------------------------------------------------------------

    async def start(self, spec: JobSpec, worker: str, lease_ms: int) -> StartDecision:
        fields = self._jobs.get(spec.job_id)
        if fields is None:
            return StartDecision("skip", detail="unknown job (expired or never submitted)")
        if fields["status"] != "queued":
            return StartDecision("skip", detail=f"already {fields['status']}")
        attempt = int(fields.get("attempt") or 0) + 1
        fields.update(status="running", worker=worker, attempt=str(attempt))
        fields.setdefault("started_at", repr(time.time()))
        kind = "started" if attempt == 1 else "restarted"
        if fields.pop("resumed_by", "") == "approval":
            kind = "continued"
        self._append_event(spec.job_id, lifecycle_entry(kind, attempt=attempt, worker=worker))
        if spec.job_id in self._cancel_flags:
            return StartDecision("cancelled", attempt)
        continuations = int(fields.get("continuations") or 0)
        owner = self._owners.get(spec.session_id)
        if owner and owner != spec.job_id and self._active(owner):
            return StartDecision("busy", attempt, owner, continuations)
        if not spec.continue_session and attempt == 1 and self._session_exists(spec.session_id):
            return StartDecision("exists", attempt)
        self._owners[spec.session_id] = spec.job_id
        return StartDecision("run", attempt, handbacks=continuations)

    async def get_fields(self, job_id: str) -> dict[str, str]:
        return dict(self._jobs.get(job_id, {}))

    async def set_fields(self, job_id: str, fields: Mapping[str, str]) -> None:
        self._jobs.setdefault(job_id, {}).update(fields)

    def emit_event(self, claim: Claim, entry: dict[str, Any]) -> None:
        if self._owns(claim):
            self._append_event(claim.job_id, entry)

    def emit_trace(self, claim: Claim, session_id: str, record: dict[str, Any]) -> None:
        if self._owns(claim):
            entry = {"job_id": claim.job_id, "record": record}
            self._stream(self._keys.trace(session_id)).append(entry)

    def emit_progress(self, claim: Claim, fields: Mapping[str, str]) -> None:
        if self._owns(claim):
            self._jobs[claim.job_id].update(fields)

    def emit_session(
        self, claim: Claim, session_id: str, fields: Mapping[str, str], *, new: bool
    ) -> None:
        if self._owns(claim):
            self._sessions.setdefault(session_id, {}).update(fields)

    def _running(self, job_id: str, attempt: int) -> dict[str, str] | None:
        """The job's fields while ``attempt`` runs it, else None (another attempt owns it)."""
        fields = self._jobs.get(job_id)
        if fields is None or fields.get("status") != "running":
            return None
        return fields if fields.get("attempt") == str(attempt) else None

    def on_refused(self, callback: Refused) -> None:
        self._refused_callbacks.append(callback)

    def _owns(self, claim: Claim) -> bool:
        """The fence: only the attempt running the job may write for it."""
        if self._running(claim.job_id, claim.attempt) is not None:
            return True
        for callback in self._refused_callbacks:
            callback(claim)
        return False

    async def flush(self) -> None:
        return None

    async def finish(
        self, spec: JobSpec, attempt: int, result: RunResult, error: str | None
    ) -> bool:
        fields = self._running(spec.job_id, attempt)
        if fields is None:
            return False
        self._release(spec.job_id, spec.session_id)
        self._write_finish(spec.job_id, fields, result, error)
        return True

    async def await_approval(
        self,
        spec: JobSpec,
        attempt: int,
        result: RunResult,
        error: str | None,
        pending: list[PendingCall],
        ttl_s: float,
    ) -> bool:
        fields = self._running(spec.job_id, attempt)
        if fields is None:
            return False
        self._cancel_flags.discard(spec.job_id)
        deadline = time.time() + ttl_s
        self._awaiting[spec.job_id] = deadline
        fields.pop("approval_decisions", None)
        fields.update(pending_approvals=encode_pending(pending), approval_deadline=repr(deadline))
        self._write_finish(spec.job_id, fields, result, error, lifecycle="awaiting_approval")
        return True

    def _release(self, job_id: str, session_id: str) -> None:
        """The job is over: its session and cancel flag are free."""
        if self._owners.get(session_id) == job_id:
            del self._owners[session_id]
        self._cancel_flags.discard(job_id)

    async def reject(self, job_id: str, error: str) -> bool:
        fields = self._jobs.get(job_id)
        if fields is None or fields["status"] != "queued":
            return False
        result = rejected(error)
        self._append_event(job_id, event_entry(result.events[0]))
        self._write_finish(job_id, fields, result, error)
        return True

    async def submit_children(self, parent_id: str, specs: Sequence[JobSpec]) -> list[str]:
        known = self._children.setdefault(parent_id, [])
        for spec in specs:
            if spec.job_id not in self._jobs:
                self._add_job(spec, spec.queue or "")
                self._sub_jobs.add(spec.job_id)
            if spec.job_id not in known:
                known.append(spec.job_id)
        return [spec.job_id for spec in specs if self._jobs[spec.job_id]["status"] == "queued"]

    async def children(self, job_id: str) -> list[str]:
        return list(self._children.get(job_id, []))

    async def next_cancels(self, after: str, block_s: float) -> tuple[str, list[str]]:
        stream = self._stream(self._keys.cancels())
        if after == "$":
            after = f"{stream.end}-0"
        entries = await self._read(self._keys.cancels(), after, block_s, 1000)
        position = entries[-1].id if entries else after
        return position, [str(entry.data["job_id"]) for entry in entries]

    # -- helpers ------------------------------------------------------------------------------

    def _session_exists(self, session_id: str) -> bool:
        stream = self._streams.get(self._keys.trace(session_id))
        return session_id in self._sessions or (stream is not None and bool(stream.entries))

    def _add_job(self, spec: JobSpec, queue: str) -> None:
        if spec.job_id not in self._jobs:
            self._session_jobs[spec.session_id] = self._session_jobs.get(spec.session_id, 0) + 1
        self._jobs[spec.job_id] = job_fields(spec, queue=queue)

    def _append_event(self, job_id: str, entry: dict[str, Any]) -> None:
        self._stream(self._keys.events(job_id)).append(entry, self._events_maxlen)

    def _stream(self, key: str) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
        return stream

    async def _read(self, key: str, after: str, block_s: float, count: int) -> list[StreamEntry]:
        if block_s <= 0 and key not in self._streams:
            return []  # not made just to be read: a look at an unknown job leaves nothing behind
        stream = self._stream(key)
        entries = stream.after(after, count)
        if entries or block_s <= 0:
            return entries
        try:
            await asyncio.wait_for(stream.changed.wait(), block_s)
        except TimeoutError:
            return []
        return stream.after(after, count)

    def _write_finish(
        self,
        job_id: str,
        fields: dict[str, str],
        result: RunResult,
        error: str | None,
        *,
        lifecycle: str = "finished",
    ) -> None:
        now = time.time()
        fields.update(
            status=result.status,
            result=json.dumps(result_dict(result)),
            error=error or "",
            finished_at=repr(now),
        )
        if lifecycle == "finished" and job_id not in self._sub_jobs:
            self._finished.pop(job_id, None)
            self._finished[job_id] = now
        self._append_event(job_id, lifecycle_entry(lifecycle, status=fields["status"]))
        if fields.get("dispatcher"):
            done = {"job_id": job_id, "result": result_dict(result)}
            self._stream(self._keys.done(fields["dispatcher"])).append(done)

    def _active(self, job_id: str) -> bool:
        """Whether the job holds its session (a job awaiting approval still does)."""
        return self._jobs.get(job_id, {}).get("status") in ("queued", "running", AWAITING_APPROVAL)

    def _forget_old(self) -> None:
        """Forget finished jobs past the retention or beyond the newest ``keep_finished``,
        except those a handle holds: they wait aside, a few looked at again each time, so
        thousands of held jobs cost no scan."""
        cutoff = time.time() - self._retention_s
        for _ in range(min(_HELD_RECHECKS, len(self._held_aside))):
            job_id, finished_at = self._held_aside.popitem(last=False)
            if finished_at >= cutoff and self._held(job_id):
                self._held_aside[job_id] = finished_at  # to the back of the line
            else:
                self._forget(job_id)
        while self._finished:
            job_id, finished_at = next(iter(self._finished.items()))
            if finished_at >= cutoff and len(self._finished) <= self._keep_finished:
                return
            del self._finished[job_id]
            if finished_at >= cutoff and self._held(job_id):
                self._held_aside[job_id] = finished_at
            else:
                self._forget(job_id)

    def _forget(self, job_id: str) -> None:
        """Forget a job, its events, its sub-jobs and (with its last job) its session."""
        fields = self._jobs.pop(job_id, None)
        self._finished.pop(job_id, None)
        self._held_aside.pop(job_id, None)
        self._awaiting.pop(job_id, None)
        self._cancel_flags.discard(job_id)
        self._sub_jobs.discard(job_id)
        self._streams.pop(self._keys.events(job_id), None)
        self._streams.pop(self._keys.done(job_id), None)  # its sub-jobs' results
        for child in self._children.pop(job_id, []):
            if self._active(child):  # still going (a cancel on its way): kept as a job of its own
                self._sub_jobs.discard(child)
            else:
                self._forget(child)
        if fields is None:
            return
        session_id = fields["session_id"]
        left = self._session_jobs.get(session_id, 1) - 1
        if left > 0:
            self._session_jobs[session_id] = left
            return
        self._session_jobs.pop(session_id, None)
        if session_id not in self._owners:
            self._sessions.pop(session_id, None)
            self._streams.pop(self._keys.trace(session_id), None)


if TYPE_CHECKING:
    _ROLES: type[JobBus] = MemoryBus
    """mypy checks here that MemoryBus implements every role of the bus (both sides)."""
