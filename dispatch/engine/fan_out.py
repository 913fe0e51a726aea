"""Sub-jobs: the job engine's side of the ``fan_out`` tool (``rho_agent.tools.sub_jobs``).

A parent job's ``fan_out`` call becomes ordinary jobs on the same bus and queue, so any worker
(or the embedded host) runs them. What holds across workers travels with each child's JobSpec:

- its ``depth`` (the parent's plus one), checked against ``FanOutLimits`` where the parent runs;
- the parent's config, with a profile no more permissive than the parent's (asking for more is
  refused, never quietly granted or lowered);
- the parent's labels plus ``parent=<job id>``, queue, priority and time limit, and its
  budgets: the parent's job budget (``parent_budgets``), batch budget and rate limits, so one
  budget covers the tree;
- an id derived from (parent job id, tool call id and arguments, prompt index): a parent resumed
  after a crash runs the same call again and re-attaches to the same children instead of
  starting them twice.

Children report to the parent's own done stream (``reply_to`` is the parent's job id), which the
waiting call reads without blocking a connection or a thread. A parent that ends in any way but
``completed``, or that started children, cancels every child still unfinished when it ends
(``cancel_children``): the tree never outlives its root. A parent that lost its job to a newer
attempt, or was handed back at shutdown, leaves them to the attempt that resumes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from dispatch.engine.bus import START, ChildJobs, JobTree, failure_reason
from dispatch.info import AWAITING_APPROVAL
from dispatch.spec import JobSpec, describe
from rho_agent.errors import ToolError
from rho_agent.events import RunError, RunResult
from rho_agent.permissions.profile import (
    BUILTIN_PROFILES,
    PermissionProfile,
    profile_to_dict,
)
from rho_agent.tools.sub_jobs import SubJobRequest, SubJobResult

PARENT_LABEL = "parent"
"""The label every child carries: the id of the job whose ``fan_out`` started it."""

Publish = Callable[[list[JobSpec]], Awaitable[None]]
"""Sends recorded jobs to whatever runs them (Celery, or the embedded host's tasks)."""
Waiting = Callable[[], AbstractAsyncContextManager[None]]
"""Held while the parent waits: the embedded host lends the parent's slot to its children."""

_POLL_FIRST_S = 0.05
_POLL_MAX_S = 1.0


@dataclass(frozen=True)
class FanOutLimits:
    """How far fan-out may go, from the settings of the host running the parent."""

    max_depth: int = 2
    max_children: int = 50


def child_job_id(parent_id: str, request: SubJobRequest, index: int) -> str:
    """The same id for the same (parent, call, index), readable as the parent's descendant.

    The call's arguments are part of it too: a model server that reuses tool call ids across
    turns then still gets new children for a new question (a resumed call has the same ones).
    """
    call = json.dumps(
        [request.call_id, request.prompts, request.output_schema, request.profile],
        sort_keys=True,
    )
    digest = hashlib.sha256(f"{parent_id}\0{call}".encode()).hexdigest()[:10]
    return f"{parent_id[:100]}-f{digest}-{index}"


class JobSubJobs:
    """The ``SubJobs`` of one job attempt: submits its ``fan_out`` children and awaits them."""

    def __init__(
        self,
        parent: JobSpec,
        profile: PermissionProfile,
        bus: ChildJobs,
        publish: Publish,
        limits: FanOutLimits,
        waiting: Waiting,
    ) -> None:
        self._parent = parent
        self._profile = profile
        self._bus = bus
        self._publish = publish
        self._limits = limits
        self._waiting = waiting
        self.started_children = False
        """Whether a ``fan_out`` call of this attempt recorded children."""
        self._tree_budgets = [
            {"scope": b.scope, "max_cost_usd": b.max_cost_usd, "max_tokens": b.max_tokens}
            for b in parent.budgets()
            if b.scope.startswith("job:")
        ]

    async def run(self, request: SubJobRequest) -> list[SubJobResult]:
        self._check_limits(request)
        config = self._child_config(request.profile)
        specs = [
            self._child_spec(request, index, prompt, config)
            for index, prompt in enumerate(request.prompts)
        ]
        self.started_children = True
        queued = set(await self._bus.submit_children(self._parent.job_id, specs))
        await self._publish([spec for spec in specs if spec.job_id in queued])
        async with self._waiting():
            results = await self._await([spec.job_id for spec in specs])
        return [
            _child_result(index, spec.job_id, results[spec.job_id])
            for index, spec in enumerate(specs)
        ]

    # -- checks -------------------------------------------------------------------------------

    def _check_limits(self, request: SubJobRequest) -> None:
        depth, limits = self._parent.depth + 1, self._limits
        if depth > limits.max_depth:
            raise ToolError(
                f"fan_out refused: this job is at depth {self._parent.depth} and sub-jobs may "
                f"nest at most {limits.max_depth} deep (RHO_AGENT_FAN_OUT_MAX_DEPTH on the "
                "worker); do the work in this job instead"
            )
        if len(request.prompts) > limits.max_children:
            raise ToolError(
                f"fan_out refused: {len(request.prompts)} prompts is more than the "
                f"{limits.max_children} sub-jobs one call may start "
                "(RHO_AGENT_FAN_OUT_MAX_CHILDREN on the worker); group the work into at most "
                f"{limits.max_children} prompts, or call fan_out again for the rest"
            )

    def _child_config(self, requested: str | None) -> dict[str, Any]:
        """The parent's config with the children's profile: the parent's own, or a built-in
        one that allows nothing the parent's does not (anything more is refused)."""
        config = dict(self._parent.config)
        if requested is None:
            return config
        if requested not in BUILTIN_PROFILES:
            raise ToolError(
                f"fan_out refused: profile {requested!r} is not a built-in profile; use one of "
                f"{', '.join(BUILTIN_PROFILES)}, or leave it out to give sub-agents your own"
            )
        child = BUILTIN_PROFILES[requested]
        excess = child.exceeds(self._profile)
        excess += [f"grant {name!r}" for name in sorted(child.grants - self._profile.grants)]
        if excess:
            raise ToolError(
                f"fan_out refused: sub-agents cannot have more permissions than this agent "
                f"(profile {self._profile.name!r}), and {requested!r} allows more "
                f"({'; '.join(excess)}); ask for a profile within yours, or leave it out"
            )
        # The parent's grants stay, so children may fan out in turn (the depth limit bounds it).
        config["profile"] = profile_to_dict(replace(child, grants=self._profile.grants))
        return config

    def _child_spec(
        self, request: SubJobRequest, index: int, prompt: str, config: dict[str, Any]
    ) -> JobSpec:
        parent = self._parent
        job_id = child_job_id(parent.job_id, request, index)
        try:
            return JobSpec(
                job_id=job_id,
                prompts=[prompt],
                config=config,
                session_id=job_id,
                # Label budgets cover the tree too: the children carry the parent's labels.
                labels={**parent.labels, PARENT_LABEL: parent.job_id},
                timeout_s=parent.timeout_s,
                queue=parent.queue,
                priority=parent.priority,
                reply_to=parent.job_id,
                output_schema=request.output_schema,
                depth=parent.depth + 1,
                # One budget for the tree: the children spend from the parent's job budget
                # (and its parents'), its batch budget and the batch's rate limits.
                parent_budgets=self._tree_budgets,
                batch_id=parent.batch_id,
                batch_max_cost_usd=parent.batch_max_cost_usd,
                batch_max_tokens=parent.batch_max_tokens,
                rate_limits=parent.rate_limits,
            )
        except ValidationError as exc:  # the model's output_schema: say what is wrong with it
            raise ToolError(describe(exc, f"fan_out sub-job {index}")) from None

    # -- waiting ------------------------------------------------------------------------------

    async def _await(self, job_ids: list[str]) -> dict[str, RunResult]:
        """Every child's result, read from the parent's done stream (from its start: a resumed
        parent finds the children that finished while it was away). Polled without blocking, so
        a thousand waiting parents hold no Redis connection between reads. A child that pauses
        for a person's approval is not done yet: its decision sends it on, and its end comes
        later on the same stream."""
        pending = set(job_ids)
        found: dict[str, RunResult] = {}
        after, pause = START, _POLL_FIRST_S
        while pending:
            entries = await self._bus.read_done(self._parent.job_id, after, 0.0)
            ended = await self._ended([entry.data for entry in entries], pending)
            for job_id, result in ended.items():
                pending.discard(job_id)
                found[job_id] = result
            after = entries[-1].id if entries else after
            if pending and not entries:
                await asyncio.sleep(pause)
                pause = min(_POLL_MAX_S, pause * 1.5)
            elif entries:
                pause = _POLL_FIRST_S
        return found

    async def _ended(
        self, entries: list[dict[str, Any]], pending: set[str]
    ) -> dict[str, RunResult]:
        """The children among ``entries`` that ended, with their results (a result too large
        to ride on the done entry is read from the job)."""
        inline: dict[str, RunResult | None] = {}
        for data in entries:
            job_id = str(data.get("job_id"))
            if job_id in pending:
                raw = data.get("result")
                inline[job_id] = RunResult.from_dict(raw) if isinstance(raw, dict) else None
        missing = [job_id for job_id, result in inline.items() if result is None]
        fetched = dict(zip(missing, await self._bus.get_results(missing), strict=True))
        results = {job_id: result or _expired(fetched[job_id]) for job_id, result in inline.items()}
        return {
            job_id: result
            for job_id, result in results.items()
            if result.status != AWAITING_APPROVAL
        }


async def cancel_children(bus: JobTree, job_id: str) -> int:
    """Cancel every unfinished child of ``job_id``, and the children of any child that ended
    while queued (its crashed attempt may have started some); return how many were asked."""
    asked = 0
    for child in await bus.children(job_id):
        outcome = await bus.request_cancel(child)
        if outcome in ("cancelled", "requested"):
            asked += 1
        if outcome == "cancelled":
            asked += await cancel_children(bus, child)
    return asked


def _expired(result: RunResult | None) -> RunResult:
    """A child's result, or (when it expired before the parent read it) an error saying so."""
    if result is not None:
        return result
    message = "the result expired before the parent read it (RHO_AGENT_RETENTION)"
    error = RunError("expired", message)
    return RunResult(text="", events=[], status="error", usage={}, error=error)


def _child_result(index: int, job_id: str, result: RunResult) -> SubJobResult:
    return SubJobResult(
        index=index,
        job_id=job_id,
        status=result.status,
        text=result.text,
        output=result.output,
        error=failure_reason(result),
    )
