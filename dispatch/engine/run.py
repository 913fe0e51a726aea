"""JobRun: run one JobSpec against a job bus. The one code path for embedded mode and workers.

A run claims the job (``bus.start``), rebuilds the session from its trace when it continues one or
resumes after a crash, runs the remaining prompts with every event and trace record going to the
bus as it happens, and finishes the job exactly once. Every write carries the run's ``Claim``;
when the bus refuses one (another attempt owns the job now) the run stops at once and its
result is dropped. Failures become a job status and an ``error`` event; only an outside
cancellation (worker shutdown) escapes, leaving the job to be resumed elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from dispatch.engine.approval import decided_calls, pending_calls
from dispatch.engine.bus import (
    Claim,
    JobWrites,
    RunBus,
    SeenEvents,
    cancelled_before_start,
    entry_event,
    event_entry,
    failure_reason,
)
from dispatch.engine.ceiling import check_ceiling
from dispatch.engine.endpoints import check_endpoint
from dispatch.engine.fan_out import FanOutLimits, JobSubJobs, Publish, Waiting, cancel_children
from dispatch.errors import FleetError
from dispatch.info import AWAITING_APPROVAL
from dispatch.spec import JobSpec
from rho_agent.agent import Agent
from rho_agent.budgets import SpendLedger
from rho_agent.config import AgentConfig
from rho_agent.errors import RhoAgentError, SessionNotFound
from rho_agent.events import AgentEvent, RunError, RunResult, run_status
from rho_agent.permissions.profile import PermissionProfile
from rho_agent.ratelimits import RateLimiter
from rho_agent.redact import redact
from rho_agent.session import Session
from rho_agent.state import USAGE_KEYS, State, empty_usage, round_cost

logger = logging.getLogger("dispatch.engine.run")


@dataclass(frozen=True)
class RunnerOptions:
    """How a host runs jobs: its name, lease length, profile ceiling, time limit, attempts, and
    the budgets (``spend``) and rate limits every model call of its jobs goes through.

    ``allowed_base_urls``: the model endpoints jobs may name (normalised; None: any).
    ``publish`` sends a ``fan_out`` call's children to whatever runs jobs (None: this host
    cannot start sub-jobs, and the tool says so); ``fan_out`` limits how far they go.
    """

    worker: str = "embedded"
    lease_ms: int = 30_000
    max_profile: PermissionProfile | None = None
    default_timeout_s: float | None = None
    max_attempts: int = 3
    agent_factory: Callable[[AgentConfig], Agent] = Agent
    allowed_base_urls: tuple[str, ...] | None = None
    spend: SpendLedger | None = None
    rate_limiter: RateLimiter | None = None
    approval_ttl_s: float = 86_400.0
    """How long a job's pending tool calls wait for a decision before they are denied."""
    publish: Publish | None = None
    fan_out: FanOutLimits = field(default_factory=FanOutLimits)


@dataclass
class JobOutcome:
    """What a run did; ``compact()`` is the summary a Celery task returns (Flower shows it)."""

    job_id: str
    status: str
    attempt: int = 0
    worker: str = ""
    error: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    turns: int = 0

    def compact(self) -> dict[str, Any]:
        summary = {
            "job_id": self.job_id,
            "status": self.status,
            "attempt": self.attempt,
            "worker": self.worker,
            "turns": self.turns,
            "input_tokens": int(self.usage.get("input_tokens", 0)),
            "output_tokens": int(self.usage.get("output_tokens", 0)),
            "cost_usd": round(float(self.usage.get("cost_usd", 0.0)), 6),
        }
        if self.error:
            key = "reason" if self.status in ("skipped", "superseded") else "error"
            summary[key] = self.error[:300]
        return summary


class AgentCache:
    """Agents keep no run state, so jobs with the same config share one.

    Building an Agent (profile, tool registry, system prompt) costs milliseconds; a fan-out of a
    thousand jobs with one config builds it once. The least recently used of ``size`` are kept.
    """

    def __init__(self, factory: Callable[[AgentConfig], Agent], size: int = 64) -> None:
        self._factory = factory
        self._size = size
        self._agents: OrderedDict[str, Agent] = OrderedDict()

    def get(self, spec: JobSpec) -> Agent:
        key = json.dumps(spec.config, sort_keys=True, separators=(",", ":"))
        agent = self._agents.get(key)
        if agent is None:
            agent = self._agents[key] = self._factory(spec.agent_config())
            if len(self._agents) > self._size:
                self._agents.popitem(last=False)
        else:
            self._agents.move_to_end(key)
        return agent


class _BusSink:
    """A TraceSink that sends each record to the job bus (queued, never blocking)."""

    def __init__(self, bus: JobWrites, claim: Claim, session_id: str) -> None:
        self._bus, self._claim, self._session_id = bus, claim, session_id

    def write(self, record: dict[str, Any]) -> None:
        self._bus.emit_trace(self._claim, self._session_id, record)

    def close(self) -> None:
        return None


class JobRun:
    """One attempt at one job. ``cancel()`` may be called at any time from the same loop."""

    def __init__(
        self,
        spec: JobSpec,
        bus: RunBus,
        options: RunnerOptions,
        agents: AgentCache | None = None,
        waiting: Waiting = contextlib.nullcontext,
    ) -> None:
        self.spec = spec
        self._bus = bus
        self._options = options
        self._agents = agents or AgentCache(options.agent_factory, size=1)
        self._waiting = waiting
        self._sub_jobs: JobSubJobs | None = None
        self._attempt = 0
        self._events = 0
        self._cancelled = False
        self._fenced = False
        self._timed_out = False
        self._turns = 0
        self._base_runs = 0
        self._base_usage: dict[str, Any] = empty_usage()
        self._continuations = 0
        """Times the job was queued again after an approval (each added a run to the session)."""
        self._decisions: dict[str, dict[str, Any]] = {}
        self._session: Session | None = None
        self._finished = False

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def attempt(self) -> int:
        """The attempt this run owns (0 until it has claimed the job)."""
        return self._attempt

    def progress(self) -> dict[str, Any] | None:
        """Turns, tokens and cost so far (None before the session exists or after the end)."""
        if self._session is None or self._finished:
            return None
        usage = self._job_usage(self._session.state)
        return {
            "turns": self._turns,
            "input_tokens": int(usage["input_tokens"]),
            "output_tokens": int(usage["output_tokens"]),
            "cost_usd": round(float(usage["cost_usd"]), 6),
        }

    @property
    def claim(self) -> Claim:
        return Claim(self.job_id, self._attempt)

    def cancel(self) -> None:
        """Stop the job soon (the session polls this flag; model streams and tools are cut)."""
        self._cancelled = True

    def fence_lost(self) -> None:
        """The bus refused a write of this attempt: another one owns the job. Stop now; no
        further step or tool call runs, and whatever this run still writes is refused too."""
        if not self._fenced:
            logger.warning(
                "job %s attempt %s: a newer attempt owns the job; stopping here",
                self.job_id,
                self._attempt,
            )
        self._fenced = True
        self._cancelled = True  # the session checks before every step and tool call

    async def run(self) -> JobOutcome:
        """Claim, run and finish the job; returns a ``skipped`` outcome if it is not ours."""
        options = self._options
        decision = await self._bus.start(self.spec, options.worker, options.lease_ms)
        self._attempt = decision.attempt
        if decision.action == "skip":
            return JobOutcome(self.job_id, "skipped", worker=options.worker, error=decision.detail)
        if decision.action == "cancelled":
            return await self._finish(cancelled_before_start(), None)
        if decision.action == "busy":
            return await self._fail(
                "session_busy",
                f"session {self.spec.session_id} is in use by job {decision.detail}; wait for "
                "that job's result before submitting another job on the same session",
            )
        if decision.action == "exists":
            return await self._fail(
                "session_exists",
                f"session {self.spec.session_id} already exists; a job starting a new session "
                "needs an unused id: continue the session (submit with session_id=...) or "
                "leave the id out",
            )
        if self._attempt - decision.handbacks > options.max_attempts:
            return await self._fail(
                "attempts_exhausted",
                f"gave up after {options.max_attempts} attempts: the workers running this job "
                "stopped each time (see the worker logs); graceful hand-backs at shutdown and "
                f"continuations after an approval are not counted ({decision.handbacks} here)",
            )
        return await self._run_claimed()

    async def _run_claimed(self) -> JobOutcome:
        timer = self._start_timer()
        try:
            session = await self._open_session()
            result = await self._run_prompts(session)
        except (RhoAgentError, FleetError) as exc:
            return await self._fail(type(exc).__name__, str(exc))
        except Exception as exc:
            logger.exception("job %s failed", self.job_id)
            return await self._fail(type(exc).__name__, f"{type(exc).__name__}: {exc}")
        finally:
            if timer is not None:
                timer.cancel()
            await self._close_session()
        if self._timed_out:
            limit = self.spec.timeout_s or self._options.default_timeout_s
            return await self._finish(result, f"job timed out after {limit:g} s")
        return await self._finish(result, None)

    # -- session ------------------------------------------------------------------------------

    async def _open_session(self) -> Session:
        spec = self.spec
        agent = self._agents.get(spec)
        check_ceiling(agent.profile, self._options.max_profile)
        check_endpoint(agent.config.base_url, self._options.allowed_base_urls)
        records: list[dict[str, Any]] = []
        if spec.continue_session or self._attempt > 1:
            entries = await self._bus.read_trace(spec.session_id)
            records = [entry.data["record"] for entry in entries]
            if spec.continue_session and not records:
                raise SessionNotFound(
                    f"session {spec.session_id} has no trace in the job store (never created, or "
                    "expired after the retention period); start a new session instead"
                )
        sink = _BusSink(self._bus, self.claim, spec.session_id)
        if records:
            session = Session(agent, state=State.from_records(records), sinks=[sink])
        else:
            self._bus.emit_session(
                self.claim,
                spec.session_id,
                {
                    "created_at": datetime.now(UTC).isoformat(),
                    "model": agent.config.model,
                    "profile": agent.profile.name,
                    "first_prompt": spec.prompts[0][:200],
                    "config": json.dumps(spec.config),
                },
                new=True,
            )
            session = Session(agent, session_id=spec.session_id, sinks=[sink])
        session.cancel_check = lambda: self._cancelled
        # Before a tool runs, its tool_start is confirmed in Redis: a refused write (a newer
        # attempt owns the job) stops this run before the side effect, not after.
        session.before_tool = self._bus.flush
        self._apply_limits(session)
        if self._options.publish is not None:
            self._sub_jobs = JobSubJobs(
                spec,
                agent.profile,
                self._bus,
                self._options.publish,
                self._options.fan_out,
                self._waiting,
            )
            session.sub_jobs = self._sub_jobs
        self._session = session
        await self._load_baseline(session.state)
        if self._decisions:  # continuing after a decision: it answers the pending calls
            session.approval_callback = decided_calls(session.state, self._decisions)
        return session

    def _apply_limits(self, session: Session) -> None:
        """Every scope's budget and the shared rate limits (plus the batch's own) apply to
        each model call of this job; waiting for a limit shows in the job's ``waiting`` field."""
        spec, options = self.spec, self._options
        if options.spend is not None:
            session.spend_guard = options.spend.guard(spec.budget_scopes(), spec.budgets())
        limiter = options.rate_limiter
        if limiter is not None:
            extra = spec.batch_rate_limits()
            if extra:
                limiter = limiter.with_limits(extra, f"batch:{spec.batch_id or spec.job_id}")
            session.rate_limiter = limiter
        session.wait_observer = self._on_wait

    def _on_wait(self, reason: str | None) -> None:
        self._bus.emit_progress(self.claim, {"waiting": reason or ""})

    async def _load_baseline(self, state: State) -> None:
        """Usage and run count before this job, so progress and resume count only this job.

        Only a continued session has a non-zero baseline, so only it costs a write.
        """
        if self._attempt > 1:
            fields = await self._bus.get_fields(self.job_id)
            self._turns = int(fields.get("turns") or 0)
            self._continuations = int(fields.get("continuations") or 0)
            if self._continuations:
                self._decisions = json.loads(fields.get("approval_decisions") or "{}")
            if "base_runs" in fields:
                self._base_runs = int(fields["base_runs"])
                self._base_usage = json.loads(fields["base_usage"])
                return
            if not self.spec.continue_session:
                return  # a new session: its baseline is zero
        if self.spec.continue_session:
            self._base_runs = state.run_count
            self._base_usage = dict(state.usage)
            await self._bus.set_fields(
                self.job_id,
                {"base_runs": str(self._base_runs), "base_usage": json.dumps(self._base_usage)},
            )

    async def _close_session(self) -> None:
        if self._session is not None:
            try:
                await self._session.close()
            except Exception:
                logger.exception("closing the session of job %s failed", self.job_id)

    # -- running ------------------------------------------------------------------------------

    async def _run_prompts(self, session: Session) -> RunResult:
        """Run the prompts not run yet; the last one's answer must match the output schema."""
        prompts = self.spec.prompts
        # A continuation after an approval is one more run of the same prompt.
        done = session.state.run_count - self._base_runs - self._continuations
        results: list[RunResult] = []
        if session.state.has_unfinished_run:
            schema = self.spec.output_schema if done == len(prompts) - 1 else None
            results.append(await session.resume_run(on_event=self._on_event, output_schema=schema))
            done += 1
        elif self._decisions and session.state.pending_approvals:
            schema = self.spec.output_schema if done == len(prompts) - 1 else None
            results.append(await session.run(on_event=self._on_event, output_schema=schema))
            done += 1
        elif done and session.state.status != "completed":
            done = len(prompts)  # a prompt failed before a crash: the job ends as it did then
        for index in range(done, len(prompts)):
            if results and results[-1].status != "completed":
                break
            schema = self.spec.output_schema if index == len(prompts) - 1 else None
            results.append(
                await session.run(prompts[index], on_event=self._on_event, output_schema=schema)
            )
        prior = await self._prior_events() if self._attempt > 1 else []
        return self._combine(session.state, prior, results)

    def _emit(self, event: AgentEvent) -> None:
        """Send ``event`` with its stable id: this attempt and its place in it."""
        self._events += 1
        self._bus.emit_event(self.claim, event_entry(event, self._attempt, self._events))

    def _on_event(self, event: AgentEvent) -> None:
        self._emit(event)
        if event.type == "api_call_complete" and self._session is not None:
            self._turns += 1
            usage = self._job_usage(self._session.state)
            self._bus.emit_progress(
                self.claim,
                {
                    "turns": str(self._turns),
                    "input_tokens": str(usage["input_tokens"]),
                    "output_tokens": str(usage["output_tokens"]),
                    "cost_usd": repr(usage["cost_usd"]),
                },
            )

    async def _prior_events(self) -> list[AgentEvent]:
        """Events earlier attempts streamed, up to this attempt's restart marker (included)."""
        events: list[AgentEvent] = []
        seen = SeenEvents()
        for entry in await self._bus.read_events(self.job_id, count=1_000_000):
            event = entry_event(entry) if seen.fresh(entry) else None
            if event is not None:
                events.append(event)
            if entry.data.get("kind") == "job" and entry.data.get("attempt") == self._attempt:
                break
        return events

    def _job_usage(self, state: State) -> dict[str, Any]:
        usage: dict[str, Any] = {
            key: int(state.usage[key]) - int(self._base_usage.get(key, 0)) for key in USAGE_KEYS
        }
        usage["cost_usd"] = round_cost(
            float(state.usage["cost_usd"]) - float(self._base_usage.get("cost_usd", 0.0))
        )
        return usage

    def _combine(
        self, state: State, prior: list[AgentEvent], results: list[RunResult]
    ) -> RunResult:
        if not results:  # every prompt had run before a restart: the trace has the last result
            last_end = next((r for r in reversed(state.records) if r["type"] == "run_end"), {})
            ended = RunResult(
                text=str(last_end.get("text") or ""),
                events=prior,
                status=run_status(last_end.get("status") or state.status),
                usage=self._job_usage(state),
                output=last_end.get("output"),
            )
            if ended.status in ("error", "max_turns", "invalid_output", "budget_exceeded"):
                # Its RunError died with the worker; the earlier attempt's events say why.
                reason = failure_reason(ended) or ended.status
                ended = replace(ended, error=RunError(ended.status, reason))
            return ended
        events = prior + [event for result in results for event in result.events]
        last = results[-1]
        return RunResult(
            text=last.text,
            events=events,
            status=last.status,
            usage=self._job_usage(state),
            error=last.error,
            output=last.output,
        )

    def _start_timer(self) -> asyncio.TimerHandle | None:
        limit = self.spec.timeout_s or self._options.default_timeout_s
        if not limit:
            return None
        return asyncio.get_running_loop().call_later(limit, self._time_out)

    def _time_out(self) -> None:
        self._timed_out = True
        self._cancelled = True

    @property
    def _started_children(self) -> bool:
        return self._sub_jobs is not None and self._sub_jobs.started_children

    async def _cancel_children(self) -> None:
        """The tree never outlives its root: stop the children this job left unfinished."""
        try:
            asked = await cancel_children(self._bus, self.job_id)
        except Exception:
            logger.exception("cancelling the sub-jobs of job %s failed", self.job_id)
            return
        if asked:
            logger.info("job %s ended; cancelled %d unfinished sub-job(s)", self.job_id, asked)

    # -- finishing ----------------------------------------------------------------------------

    async def _fail(self, kind: str, message: str) -> JobOutcome:
        """Fail the job before or around its run (refused, busy session, crash loop, bug).

        ``kind`` is the result's ``RunError.type``: the exception's class name, or what the
        fleet decided (``session_busy``, ``session_exists``, ``attempts_exhausted``)."""
        message = redact(message)  # error texts quote configs and outputs: never a secret
        event = AgentEvent(type="error", content=message)
        self._emit(event)
        failed = RunResult(text="", events=[event], status="error", error=RunError(kind, message))
        return await self._finish(failed, message)

    async def _finish(self, result: RunResult, error: str | None) -> JobOutcome:
        """End the job. ``error`` makes it an ``error`` whatever the run said; without one, a run
        that ended badly on its own (model down, max_turns, cancelled) is explained by its
        events, so every failure carries its reason."""
        self._finished = True
        # A job cancelled as it paused ends ``interrupted`` (the cancel wins) instead of parking.
        if error is None and result.status == "interrupted" and self._pending():
            return await self._await_approval(result)
        status = result.status if error is None else "error"
        reason = error or failure_reason(result)
        if self._session is not None:
            state_status = self._session.state.status
            self._bus.emit_session(
                self.claim, self.spec.session_id, {"status": state_status}, new=False
            )
        if error is not None and (result.status != "error" or result.error is None):
            # The result a caller holds says why, as the job's record does (a timed-out run).
            result = RunResult(
                text=result.text,
                events=result.events,
                status="error",
                usage=result.usage,
                error=result.error or RunError("job_timeout", error),
            )
        # A refused write already proved that a newer attempt owns the job.
        owned = not self._fenced and await self._bus.finish(
            self.spec, self._attempt, result, reason
        )
        if owned and (status != "completed" or self._started_children):
            await self._cancel_children()
        outcome_status = status if owned else "superseded"
        if not owned:
            logger.warning(
                "job %s attempt %s lost its lease; result dropped", self.job_id, self._attempt
            )
        return JobOutcome(
            self.job_id,
            outcome_status,
            attempt=self._attempt,
            worker=self._options.worker,
            error=reason,
            usage=dict(result.usage),
            turns=self._turns,
        )

    def _pending(self) -> bool:
        session = self._session
        return session is not None and bool(session.state.pending_approvals) and not self._cancelled

    async def _await_approval(self, result: RunResult) -> JobOutcome:
        """Park the job until someone decides its pending calls; this attempt ends here and
        its worker slot is free (a decision queues the job again: docs/approvals.md)."""
        assert self._session is not None
        state = self._session.state
        self._bus.emit_session(
            self.claim, self.spec.session_id, {"status": state.status}, new=False
        )
        pending = pending_calls(state)
        reason = failure_reason(result)
        parked = RunResult(
            text=result.text,
            events=result.events,
            status=AWAITING_APPROVAL,
            usage=result.usage,
            output=result.output,
        )
        owned = not self._fenced and await self._bus.await_approval(
            self.spec, self._attempt, parked, reason, pending, self._options.approval_ttl_s
        )
        return JobOutcome(
            self.job_id,
            AWAITING_APPROVAL if owned else "superseded",
            attempt=self._attempt,
            worker=self._options.worker,
            error=reason,
            usage=dict(result.usage),
            turns=self._turns,
        )
