"""Approvals in the fleet: the values both sides share and the runner's side of a decision.

A job whose tool calls need a person's decision is parked as ``awaiting_approval`` with its
pending calls; ``Job.approve``/``deny`` record decisions on the bus (atomically), and once every
pending call is decided the job is queued again and continues, on any worker, from its trace.
There the decisions become the session's ``approval_callback``: an approved call runs, a denied
one is answered with its reason (``PermissionDenied``), anything else pauses again. See
docs/approvals.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dispatch.errors import ApprovalRefused, JobNotFound
from dispatch.info import Decision, PendingCall
from dispatch.spec import JobSpec
from rho_agent.errors import ApprovalInterrupt, PermissionDenied
from rho_agent.state import State

EXPIRED_REASON = (
    "the approval expired: nobody decided within the approval time (RHO_AGENT_APPROVAL_TTL), "
    "so the call was denied"
)
DENIED_REASON = "a person denied this tool call"
MAX_REASON = 2000
"""Characters of a denial reason kept (the model reads it)."""

Refusal = Literal["not_found", "not_awaiting", "unknown_call", "already_decided"]


@dataclass(frozen=True)
class DecideOutcome:
    """What a decision did: ``queued`` (every call decided; ``spec`` must be sent again as
    ``attempt`` + 1) or ``waiting`` (``undecided`` calls still wait)."""

    action: Literal["queued", "waiting"]
    spec: JobSpec | None = None
    attempt: int = 0
    undecided: int = 0


def pending_calls(state: State) -> list[PendingCall]:
    """The calls an interrupted session waits on, as the fleet stores them."""
    return [
        PendingCall(
            call_id=str(call["call_id"]),
            tool_name=str(call["tool_name"]),
            arguments=dict(call.get("arguments") or {}),
        )
        for call in state.pending_approvals
    ]


def encode_pending(calls: list[PendingCall]) -> str:
    return json.dumps([call.model_dump(exclude_none=True) for call in calls], ensure_ascii=False)


def with_decisions(
    pending: list[dict[str, Any]], decisions: Mapping[str, Mapping[str, Any]]
) -> list[PendingCall]:
    """The stored pending calls with their decisions (if any) filled in."""
    calls = []
    for raw in pending:
        decided = decisions.get(str(raw.get("call_id")), {})
        calls.append(PendingCall.model_validate({**raw, **{k: v for k, v in decided.items() if v}}))
    return calls


def refused(job_id: str, refusal: str, detail: str) -> Exception:
    """The error for a decision the bus refused, naming the job, the call and the fix."""
    if refusal == "not_found":
        return JobNotFound(f"job {job_id} does not exist (never submitted, or expired)")
    if refusal == "not_awaiting":
        return ApprovalRefused(
            f"job {job_id} is not awaiting approval (it is {detail}); only a job whose status "
            "is awaiting_approval can be approved or denied (see `rho-agent approvals`)",
            reason=refusal,
        )
    if refusal == "unknown_call":
        return ApprovalRefused(
            f"call {detail} is not pending on job {job_id}; `rho-agent approvals` lists the "
            "pending call ids",
            reason=refusal,
        )
    call_id, _, decision = detail.partition(" ")
    return ApprovalRefused(
        f"call {call_id} of job {job_id} was already {decision}; a decision cannot be changed",
        reason=refusal,
    )


class DecidedCalls:
    """A session's ``approval_callback`` that answers from recorded decisions.

    The callback is asked about the pending calls in the model's order, by name and arguments
    (it never sees call ids), so each question takes the first undecided-yet-unasked decision
    with that name and arguments. A call nobody decided pauses the run again.
    """

    def __init__(self, calls: list[PendingCall]) -> None:
        self._calls = list(calls)

    def __call__(self, tool_name: str, arguments: dict[str, Any]) -> bool:
        for index, call in enumerate(self._calls):
            if call.tool_name == tool_name and call.arguments == arguments and call.decision:
                del self._calls[index]
                if call.decision == "denied":
                    raise PermissionDenied(call.reason or DENIED_REASON)
                return True
        raise ApprovalInterrupt(f"{tool_name} needs approval")


def decided_calls(state: State, decisions: Mapping[str, Mapping[str, Any]]) -> DecidedCalls:
    """The callback for the calls of ``state``'s pending turn that are still unanswered."""
    unanswered = {call["id"] for call in state.unanswered_tool_calls()}
    pending = [
        call
        for call in with_decisions(list(state.pending_approvals), decisions)
        if call.call_id in unanswered
    ]
    return DecidedCalls(pending)


def decision_value(approve: bool) -> Decision:
    return "approved" if approve else "denied"
