"""Session: runs the agent loop for one conversation and owns its State.

A run is: add the prompt, then repeat (maybe compact, call the model, run the approved tools)
until the model answers without tools, the run is cancelled, interrupted for approval, fails, or
hits ``max_turns``. Every change goes through ``State.append`` (trace + observers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from rho_agent import compaction
from rho_agent._loop import cancel_poll as _cancel_poll
from rho_agent._loop import spend_step as _spend_step
from rho_agent._loop import tool_step as _tool_step
from rho_agent._loop.run import EventCallback, RunContext
from rho_agent.agent import Agent
from rho_agent.backends.base import ExecutionBackend
from rho_agent.budgets import DEFAULT_OUTPUT_ALLOWANCE, MemorySpendLedger, SpendGuard, job_budget
from rho_agent.errors import BudgetExceeded, ConfigError, ModelError, OutputInvalid, SessionError
from rho_agent.events import AgentEvent, CompactResult, RunError, RunResult, RunStatus
from rho_agent.ids import new_session_id, validate_session_id
from rho_agent.model.base import ModelRequest
from rho_agent.output import FINAL_ANSWER_TOOL, OutputSchema, SchemaLike, structured_output_mode
from rho_agent.pricing import context_window
from rho_agent.prompts import UNICODE_PROMPT_HELP, is_unicode_text
from rho_agent.ratelimits import RateLimiter
from rho_agent.redact import StreamRedactor, default_redactor
from rho_agent.state import State, round_cost
from rho_agent.tools.base import ToolHandler, ToolInvocation
from rho_agent.tools.registry import ToolRegistry
from rho_agent.tools.sub_jobs import SubJobs
from rho_agent.trace import TraceSink

logger = logging.getLogger("rho_agent.session")

DEFAULT_MAX_TURNS = 100


class Session:
    """The execution context for running prompts with one Agent; owns the State.

    Settable: ``approval_callback(tool_name, tool_args) -> bool`` (sync or async; raising
    ``PermissionDenied`` denies the call with that reason, ``ApprovalInterrupt`` pauses the run),
    ``cancel_check() -> bool``, ``before_tool() -> Awaitable[None]``, ``auto_compact``,
    ``context_window``, ``max_turns``, ``spend_guard`` (budgets every model call reserves
    against; ``extras.max_cost_usd`` / ``extras.max_tokens`` give a session one of its own),
    ``rate_limiter`` (shared rate limits), ``output_allowance`` (output tokens reserved for a call
    with no ``extras.max_output_tokens``) and ``wait_observer(reason | None)`` (told when a call
    starts and stops waiting for a limit), ``sub_jobs``.

    ``before_tool`` is awaited after a tool call's ``tool_start`` is recorded and before the tool
    runs (``cancel_check`` is asked right after it). The fleet makes the record durable there and
    learns whether its job was taken over, so a side effect never runs for an attempt that lost
    its job, and a resumed job knows which calls may have run.

    ``sub_jobs`` is what the ``fan_out`` tool submits its children through; the job engine sets
    it for the session of a job (see ``rho_agent.tools.sub_jobs``).
    """

    def __init__(
        self,
        agent: Agent,
        *,
        session_id: str | None = None,
        state: State | None = None,
        sinks: list[TraceSink] | tuple[TraceSink, ...] = (),
    ) -> None:
        if not isinstance(agent, Agent):
            raise ConfigError(f"Session() takes an Agent, got {type(agent).__name__}")
        self.agent = agent
        self.approval_callback: _tool_step.ApprovalCallback | None = None
        self.cancel_check: Callable[[], bool] | None = None
        self.before_tool: Callable[[], Awaitable[None]] | None = None
        self.sub_jobs: SubJobs | None = None
        self.auto_compact = True
        self.context_window = context_window(agent.config.model, agent.config.context_window())
        self.max_turns = int(agent.config.extras.get("max_turns", DEFAULT_MAX_TURNS))
        self.spend_guard: SpendGuard | None = None
        self.rate_limiter: RateLimiter | None = None
        extras = agent.config.extras
        self.output_allowance: int = (
            _whole_tokens(extras, "output_allowance") or DEFAULT_OUTPUT_ALLOWANCE
        )
        self._output_cap = _whole_tokens(extras, "max_output_tokens")
        self._request_timeout_s = _request_timeout(extras)
        self.wait_observer: Callable[[str | None], None] | None = None
        self._client = _spend_step.GuardedClient(self, agent.create_client())
        self._backend: ExecutionBackend | None = None
        self._task: asyncio.Task[str] | None = None
        self._cancel_requested = False
        self._compacted_last = False
        self._closed = False
        self.state = state if state is not None else State()
        for sink in sinks:
            self.state.add_sink(sink)
        if state is None:
            self.state.session_id = validate_session_id(session_id or new_session_id())
            self._record_start()
        elif session_id is not None and session_id != state.session_id:
            raise SessionError(f"session_id {session_id!r} does not match the state's id")
        own = job_budget(f"session:{self.state.session_id}", agent.config.extras)
        if own is not None:
            self.spend_guard = MemorySpendLedger().guard([], own=[own])

    def _record_start(self) -> None:
        profile = self.agent.profile.name
        self.state.append(
            "session_start",
            session_id=self.state.session_id,
            model=self.agent.config.model,
            profile=profile,
        )

    # -- running --------------------------------------------------------------------------------

    async def run(
        self,
        prompt: str | None = None,
        *,
        on_event: EventCallback | None = None,
        output_schema: SchemaLike | OutputSchema | None = None,
    ) -> RunResult:
        """Run ``prompt`` to completion and return this run's result.

        With tool calls still waiting for approval from an interrupted run, they are decided
        first (``approval_callback``), then the prompt (if any) is added. With an
        ``output_schema`` (a pydantic model class or a JSON schema dict) the model is asked for
        that JSON, the answer is validated into ``result.output``, and an invalid answer gets
        one corrective turn before the run ends as ``invalid_output`` (see ``rho_agent.output``).
        """
        if prompt is None and self.state.pending_turn is None:
            raise ValueError("Session.run() needs a prompt (nothing is waiting to be continued)")
        if prompt is not None and not is_unicode_text(prompt):
            raise ConfigError(UNICODE_PROMPT_HELP)
        schema = self._output_schema(output_schema)
        self._ensure_idle()
        self.state.append("run_start", run=self.state.run_count + 1, prompt=prompt)
        return await self._drive(RunContext(on_event), prompt, schema)

    async def resume_run(
        self,
        *,
        on_event: EventCallback | None = None,
        output_schema: SchemaLike | OutputSchema | None = None,
    ) -> RunResult:
        """Continue a run whose process stopped mid-way: unfinished tool calls run (finished ones
        are not run again), then the loop goes on (with the run's ``output_schema``, if any)."""
        if not self.state.has_unfinished_run:
            raise SessionError(f"session {self.state.session_id} has no unfinished run to resume")
        schema = self._output_schema(output_schema)
        self._ensure_idle()
        prompt = _prompt_not_yet_recorded(self.state)
        run = RunContext(on_event, corrections=_corrections_made(self.state))
        self.state.append("run_resume", run=self.state.run_count + 1)
        return await self._drive(run, prompt, schema)

    def _output_schema(self, schema: SchemaLike | OutputSchema | None) -> OutputSchema | None:
        if schema is None:
            return None
        mode = structured_output_mode(self.agent.config.extras)
        return OutputSchema.of(schema).asked_by(mode)

    def _ensure_idle(self) -> None:
        if self._closed:
            raise SessionError(
                f"session {self.state.session_id} is closed; resume it to run again "
                "(SessionStore.resume or Session(agent, state=session.state))"
            )
        if self._task is not None and not self._task.done():
            raise SessionError("this session is already running; await the current run first")

    async def _drive(
        self, run: RunContext, prompt: str | None, schema: OutputSchema | None
    ) -> RunResult:
        self._cancel_requested = False
        task = self._task = asyncio.create_task(self._loop(run, prompt, schema))
        if self.cancel_check is not None:
            # Watched by its task: this run's end must not unwatch a next run started before
            # this coroutine resumes (from an event callback, say).
            _cancel_poll.watch(task, lambda: self._stop_if_asked(task))
        try:
            status = await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not self._cancel_requested or (current is not None and current.cancelling()):
                raise  # cancelled from outside (shutdown): leave the run resumable
            status = self._record_cancelled(run)
        except BudgetExceeded as exc:
            status = self._record_budget_exceeded(run, exc)
        except ModelError as exc:
            status = self._record_error(run, exc, str(exc))
        except Exception as exc:
            logger.exception("run of session %s failed", self.state.session_id)
            status = self._record_error(run, exc, f"{type(exc).__name__}: {exc}")
        finally:
            _cancel_poll.unwatch(task)
        end: dict[str, Any] = {"status": status, "usage": run.usage, "text": run.text}
        if schema is not None and run.output is not None:
            end["output"] = schema.to_data(run.output)
        self.state.append("run_end", **end)
        return run.result(status)

    async def _loop(
        self, run: RunContext, prompt: str | None, schema: OutputSchema | None
    ) -> RunStatus:
        if not self.state.messages:
            self.state.append("message", role="system", content=self.agent.system_prompt)
        if self.state.pending_turn is not None:
            outcome = await self._continue_pending_turn(run)
            if outcome is not None:
                return outcome
        if prompt is not None:
            self.state.append("message", role="user", content=prompt)
        for _ in range(self.max_turns):
            self.check_cancelled()
            await self._fit_context(run, self._tools(schema))
            turn_has_tools = await self._call_model(run, schema)
            if not turn_has_tools:
                verdict = None if schema is None else self._check_output(run, schema)
                if verdict == "retry":
                    continue
                if verdict is not None:
                    return verdict
                run.emit(AgentEvent("turn_complete", content=run.text, usage=dict(run.usage)))
                return "completed"
            outcome = await self._continue_pending_turn(run)
            if outcome is not None:
                return outcome
        message = f"stopped after max_turns={self.max_turns} model calls without a final answer"
        self.state.append("error", message=message)
        run.error = RunError("max_turns", message)
        run.emit(AgentEvent("max_turns", content=message))
        return "max_turns"

    async def _call_model(self, run: RunContext, schema: OutputSchema | None) -> bool:
        """One streamed model call; records the assistant message. True if it called tools
        (other than ``final_answer``, which ends the turn with its arguments as the answer)."""
        config = self.agent.config
        request = ModelRequest(
            model=config.model,
            messages=list(self.state.messages),
            tools=self._tools(schema),
            reasoning_effort=config.reasoning_effort,
            service_tier=config.service_tier,
            response_format=config.response_format,
            max_output_tokens=self._output_cap,
            timeout_s=self._request_timeout_s,
        )
        if schema is not None and schema.mode == "response_format":
            request.response_format = schema.response_format()
        run.streamed = []
        shown = StreamRedactor(default_redactor())
        try:
            turn = await self._client.stream(
                request, on_text=lambda text: self._on_text(run, shown, text)
            )
        finally:
            if rest := shown.flush():
                run.emit(AgentEvent("text", content=rest))
        run.streamed = []
        self._compacted_last = False
        self._record_model_call(run, turn.usage.as_dict(), turn.usage.estimated)
        self.state.append("message", **turn.assistant_message())
        run.text = turn.text
        final = _final_answer_call(turn.tool_calls) if schema is not None else None
        if schema is not None and final is not None:
            run.text = schema.answer_from_tool(str(final["function"].get("arguments") or ""))
            _tool_step.answer_unfinished(
                self, "Recorded: the final answer ends the turn (other calls in it did not run)."
            )
            return False
        return bool(turn.tool_calls)

    def _tools(self, schema: OutputSchema | None) -> list[dict[str, Any]]:
        """The tool definitions sent to the model, ``final_answer`` included in tool mode."""
        tools = self.agent.registry.schemas()
        if schema is not None and schema.mode == "tool":
            tools = [*tools, schema.final_answer_tool()]
        return tools

    def _check_output(
        self, run: RunContext, schema: OutputSchema
    ) -> RunStatus | Literal["retry"] | None:
        """Validate the answer: None if it is valid, "retry" after adding the one corrective
        message, else "invalid_output" (with the error recorded)."""
        try:
            run.output = schema.parse(run.text)
        except OutputInvalid as exc:
            if run.corrections < 1:
                run.corrections += 1
                run.emit(AgentEvent("output_invalid", content=str(exc)))
                self.state.append("message", role="user", content=schema.correction(str(exc)))
                return "retry"
            message = f"the answer did not match the output schema after a correction: {exc}"
            run.error = RunError("invalid_output", message)
            self.state.append("error", message=message)
            run.emit(AgentEvent("error", content=message))
            return "invalid_output"
        return None

    def _on_text(self, run: RunContext, shown: StreamRedactor, text: str) -> None:
        run.streamed.append(text)
        if ready := shown.feed(text):  # a secret split across deltas is redacted whole
            run.emit(AgentEvent("text", content=ready))
        self.check_cancelled()

    def _record_model_call(self, run: RunContext, usage: dict[str, int], estimated: bool) -> None:
        model = self.agent.config.model
        cost = round_cost(
            self.agent.price_table.cost(
                model,
                input_tokens=usage["input_tokens"],
                output_tokens=usage["output_tokens"],
                cached_tokens=usage["cached_tokens"],
            )
        )
        self.state.append(
            "model_call", model=model, usage=usage, cost_usd=cost, estimated=estimated
        )
        run.add_usage(usage, cost)
        run.emit(
            AgentEvent(
                "api_call_complete", usage={**usage, "cost_usd": cost, "estimated": estimated}
            )
        )

    async def _continue_pending_turn(self, run: RunContext) -> RunStatus | None:
        """Run the pending turn's unanswered tool calls; "interrupted" if some await approval."""
        calls = [_tool_step.prepare(self, call) for call in self.state.unanswered_tool_calls()]
        self.check_cancelled()
        waiting = await _tool_step.decide(self, run, calls)
        await _tool_step.execute(self, run, calls)
        if not waiting:
            return None
        pending = [
            {"call_id": c.call_id, "tool_name": c.name, "arguments": c.arguments} for c in waiting
        ]
        names = ", ".join(call.name for call in waiting)
        self.state.append("approval_pending", calls=pending)
        run.emit(AgentEvent("interruption", content=f"approval required for: {names}"))
        return "interrupted"

    # -- cancellation ---------------------------------------------------------------------------

    def check_cancelled(self) -> None:
        """Raise inside the run if ``cancel_check`` says stop (polled at every step)."""
        if self.cancel_check is not None and self.cancel_check():
            self._cancel_requested = True
            raise asyncio.CancelledError

    async def cancel(self) -> None:
        """Stop the running run: the model stream is closed and running tools are killed."""
        self._cancel_requested = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait({self._task}, timeout=5)

    def _stop_if_asked(self, task: asyncio.Task[RunStatus]) -> bool:
        """Between steps too (a model stream, a running tool): cancel the run's ``task`` if
        ``cancel_check`` says stop; True once no more checks are needed."""
        if task.done():
            return True
        if self.cancel_check is None or not self.cancel_check():
            return False
        self._cancel_requested = True
        task.cancel()
        return True

    def _record_cancelled(self, run: RunContext) -> RunStatus:
        self._record_partial_text(run)
        _tool_step.answer_unfinished(
            self, "Cancelled: the run was cancelled before this call finished."
        )
        self.state.append("cancelled", reason="cancelled by request")
        run.emit(AgentEvent("cancelled", content="run cancelled"))
        return "cancelled"

    def _record_budget_exceeded(self, run: RunContext, exc: BudgetExceeded) -> RunStatus:
        _tool_step.answer_unfinished(self, f"Stopped: {exc}")
        run.error = RunError("budget_exceeded", str(exc))
        self.state.append("error", message=str(exc))
        run.emit(AgentEvent("budget_exceeded", content=str(exc)))
        return "budget_exceeded"

    def report_waiting(self, reason: str | None) -> None:
        """Tell ``wait_observer`` a model call waits for a shared limit (None: it goes on)."""
        if self.wait_observer is not None:
            try:
                self.wait_observer(reason)
            except Exception:
                logger.exception("wait_observer raised; the run goes on")

    def _record_error(self, run: RunContext, exc: Exception, message: str) -> RunStatus:
        partial = self._record_partial_text(run)
        _tool_step.answer_unfinished(
            self, f"Error: the run failed before this call finished: {message}"
        )
        run.error = RunError(type(exc).__name__, str(exc), partial=partial)
        self.state.append("error", message=message)
        run.emit(AgentEvent("error", content=message))
        return "error"

    def _record_partial_text(self, run: RunContext) -> bool:
        """Keep the text of a model call that was cut off, marked partial; True if any."""
        if not run.streamed:
            return False
        run.text = "".join(run.streamed)
        run.streamed = []
        self.state.append("message", role="assistant", content=run.text, partial=True)
        return True

    # -- compaction -----------------------------------------------------------------------------

    async def compact(self) -> CompactResult:
        """Summarise older history now. Raises ``ModelError`` if the summary call fails
        (the history is left untouched)."""
        return await self._compact("manual", RunContext())

    async def _fit_context(self, run: RunContext, tools: list[dict[str, Any]]) -> None:
        """Compact if the next request nears the window; fail before sending one that can't fit.

        The estimate encodes the whole history, so it is taken once per request (again only
        after a compaction changed the history).
        """
        needed = compaction.count_tokens(self.state.messages, tools)
        if await self._maybe_auto_compact(run, needed):
            needed = compaction.count_tokens(self.state.messages, tools)
        compaction.check_fits(
            needed,
            self.state.messages,
            model=self.agent.config.model,
            window=self.context_window,
            auto_compact=self.auto_compact,
        )

    async def _maybe_auto_compact(self, run: RunContext, needed: int) -> bool:
        """Compact when ``needed`` tokens near the window; True if the history changed."""
        if not self.auto_compact or self._compacted_last:
            return False
        if needed < compaction.AUTO_COMPACT_FRACTION * self.context_window:
            return False
        try:
            await self._compact("auto", run)
        except ModelError as exc:
            message = f"auto compaction failed, history left as it was: {exc}"
            self.state.append("error", message=message)
            run.emit(AgentEvent("error", content=message))
        self._compacted_last = True
        return True

    async def _compact(self, trigger: str, run: RunContext) -> CompactResult:
        messages = self.state.messages
        tools = self.agent.registry.schemas()
        before = compaction.count_tokens(messages, tools)
        split = compaction.plan(messages) or compaction.plan(messages, keep_exchanges=1)
        if split is None:
            return CompactResult(
                summary="", tokens_before=before, tokens_after=before, trigger=trigger
            )
        run.emit(AgentEvent("compact_start"))
        turn = await compaction.summarise(self._client, self.agent.config.model, split.older)
        self._record_model_call(run, turn.usage.as_dict(), turn.usage.estimated)
        new_messages = compaction.compacted_messages(split, turn.text)
        after = compaction.count_tokens(new_messages, tools)
        self.state.append(
            "compaction",
            trigger=trigger,
            summary=turn.text,
            tokens_before=before,
            tokens_after=after,
            messages=new_messages,
        )
        run.emit(AgentEvent("compact_end", content=turn.text))
        return CompactResult(
            summary=turn.text, tokens_before=before, tokens_after=after, trigger=trigger
        )

    # -- tools and backend ----------------------------------------------------------------------

    @property
    def registry(self) -> ToolRegistry:
        """The tools this session's agent offers the model."""
        return self.agent.registry

    def needs_approval(self, handler: ToolHandler) -> bool:
        """A call needs approval unless the config auto-approves, per the agent's profile."""
        if self.agent.config.auto_approve:
            return False
        return bool(self.agent.profile.needs_approval(handler))

    async def invocation(self, call: _tool_step.PreparedCall) -> ToolInvocation:
        return ToolInvocation(
            call_id=call.call_id,
            tool_name=call.name,
            arguments=call.arguments,
            backend=await self._started_backend(),
            profile=self.agent.profile,
            session_id=self.state.session_id,
            sub_jobs=self.sub_jobs,
        )

    async def _started_backend(self) -> ExecutionBackend:
        if self._backend is None:
            self._backend = self.agent.create_backend(self.state.session_id)
        await self._backend.start()
        return self._backend

    async def get_sandbox(self) -> Any:
        """The Daytona sandbox of this session, created now if it does not exist yet."""
        backend = await self._started_backend()
        getter = getattr(backend, "get_sandbox", None)
        if getter is None:
            raise ConfigError(
                "get_sandbox() needs AgentConfig(backend='daytona') or a DaytonaBackend"
            )
        return await getter()

    async def close(self) -> None:
        """Release the backend (deletes a Daytona sandbox) and close the trace sinks."""
        self._closed = True
        if self._backend is not None:
            backend, self._backend = self._backend, None
            await backend.close()
        for sink in self.state.sinks:
            sink.close()
            self.state.remove_sink(sink)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _whole_tokens(extras: dict[str, Any], name: str) -> int | None:
    """``extras.max_output_tokens`` (the output cap sent with every request, and reserved) or
    ``extras.output_allowance`` (what a call without a cap reserves for its output)."""
    value = extras.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"AgentConfig.extras.{name} must be a whole number of tokens >= 1, got {value!r}"
        )
    return value


def _request_timeout(extras: dict[str, Any]) -> float | None:
    """``extras.request_timeout_s``: how long a model server may stay silent on one call before
    the attempt fails (and is retried, then ends the run ``error``); None keeps 600 s."""
    value = extras.get("request_timeout_s")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigError(
            f"AgentConfig.extras.request_timeout_s must be a number of seconds > 0, got {value!r}; "
            "e.g. extras: {request_timeout_s: 120}"
        )
    return float(value)


def _prompt_not_yet_recorded(state: State) -> str | None:
    """The prompt of the unfinished run if the process stopped before its message was recorded."""
    for record in reversed(state.records):
        if record.get("type") == "message" and record.get("role") == "user":
            return None
        if record.get("type") == "run_start":
            prompt = record.get("prompt")
            return prompt if isinstance(prompt, str) else None
    return None


def _corrections_made(state: State) -> int:
    """Corrective messages the unfinished run already had: every user message after its prompt
    is one, so a resumed run does not get a second correction."""
    users = 0
    for record in reversed(state.records):
        if record.get("type") == "message" and record.get("role") == "user":
            users += 1
        if record.get("type") == "run_start":
            return max(0, users - (record.get("prompt") is not None))
    return 0


def _final_answer_call(tool_calls: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The turn's call of the ``final_answer`` tool, if it made one."""
    for call in tool_calls:
        if (call.get("function") or {}).get("name") == FINAL_ANSWER_TOOL:
            return call
    return None
