"""JobInfo: a job's metadata (status, timing, usage, cost, worker), as stored in ``{p}job:{id}``.

The hash holds strings; ``job_fields`` writes the first version from a JobSpec and
``JobInfo.from_fields`` reads any version back. Progress fields (turns, tokens, cost) are updated
while the job runs, so ``rho-agent jobs`` shows live numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

from dispatch.spec import JobSpec
from rho_agent.events import RUN_STATUSES, RunStatus

ActiveStatus = Literal["queued", "running"]
JobStatus = ActiveStatus | RunStatus
"""A job is queued or running until its run ends with a run status (``completed``...)."""

AWAITING_APPROVAL: RunStatus = "awaiting_approval"
Decision = Literal["approved", "denied"]

TERMINAL_STATUSES = RUN_STATUSES
"""Statuses in which nothing more happens by itself: ``gather``, ``result`` and ``events`` end
there. ``awaiting_approval`` is one of them (a batch must not hang on a person), though the job
is not over: ``Job.approve``/``deny`` continue it as a new attempt (docs/approvals.md)."""
ACTIVE_STATUSES: frozenset[str] = frozenset(get_args(ActiveStatus))
PROMPT_EXCERPT = 200
_JSON_FIELDS = frozenset({"labels", "pending_approvals"})


class PendingCall(BaseModel):
    """One tool call of an ``awaiting_approval`` job, as the model made it.

    ``decision`` is None until someone decides the call, then ``approved`` or ``denied`` (with
    ``reason``, which the model reads). The decided calls stay listed after the job is queued
    again: the worker that continues it reads them here.
    """

    model_config = ConfigDict(frozen=True)

    call_id: str
    tool_name: str
    arguments: dict[str, Any] = {}
    decision: Decision | None = None
    reason: str | None = None


class JobInfo(BaseModel):
    """What is known about a job right now. ``status`` is ``queued``, ``running`` or terminal."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    status: JobStatus
    session_id: str
    prompt: str = ""
    model: str = ""
    profile: str = ""
    labels: dict[str, str] = {}
    queue: str = ""
    dispatcher: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    attempt: int = 0
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    waiting: str = ""
    """What a running job waits for right now (``waiting for rate limit (...)``), else empty."""
    pending_approvals: list[PendingCall] = []
    """The tool calls waiting for a decision while ``status`` is ``awaiting_approval``."""
    approval_deadline: float | None = None
    """When undecided calls are denied as expired (epoch seconds; RHO_AGENT_APPROVAL_TTL)."""

    @property
    def finished(self) -> bool:
        """Nothing more happens without someone acting (see ``TERMINAL_STATUSES``)."""
        return self.status in TERMINAL_STATUSES

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish (or None while unknown)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @classmethod
    def from_fields(cls, job_id: str, fields: Mapping[str, str]) -> JobInfo:
        """Parse the hash's string fields (unknown fields are ignored; ``approval_decisions``
        fills in each pending call's decision)."""
        data: dict[str, Any] = {"job_id": job_id}
        for name in cls.model_fields:
            raw = fields.get(name)
            if raw is None or raw == "" or name == "job_id":
                continue
            data[name] = json.loads(raw) if name in _JSON_FIELDS else raw
        decisions = json.loads(fields.get("approval_decisions") or "{}")
        if decisions and "pending_approvals" in data:
            data["pending_approvals"] = [
                {**call, **decisions.get(call.get("call_id"), {})}
                for call in data["pending_approvals"]
            ]
        data.setdefault("status", "queued")
        data.setdefault("session_id", "")
        return cls.model_validate(data)


def job_fields(spec: JobSpec, *, queue: str) -> dict[str, str]:
    """The hash fields written when a job is submitted (status ``queued``)."""
    return {
        "status": "queued",
        "session_id": spec.session_id,
        "prompt": spec.prompts[0][:PROMPT_EXCERPT],
        "model": spec.model,
        "profile": spec.profile_label,
        "labels": json.dumps(spec.labels),
        "queue": spec.queue or queue,
        "dispatcher": spec.reply_to or "",
        "submitted_at": repr(spec.submitted_at),
        "attempt": "0",
        "spec": json.dumps(spec.encode(), separators=(",", ":")),
    }
