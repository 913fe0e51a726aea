"""Running one model turn's tool calls: parse, approve, execute concurrently, record in order.

Each call's ``tool_start`` is recorded before it runs, and its tool message the moment it
finishes (the ledger a resumed run reads: a call with a result never runs again, a call with
only a start is the one that may have run and is run again); ``State`` puts them in the model's
order.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rho_agent.errors import ApprovalInterrupt, PermissionDenied, ToolError
from rho_agent.events import AgentEvent
from rho_agent.tools.base import ToolHandler, ToolOutput

if TYPE_CHECKING:
    from rho_agent._loop.run import RunContext
    from rho_agent.state import State
    from rho_agent.tools.base import ToolInvocation
    from rho_agent.tools.registry import ToolRegistry

logger = logging.getLogger("rho_agent.session")

ApprovalCallback = Callable[[str, dict[str, Any]], bool | Awaitable[bool]]


class StepHost(Protocol):
    """What a tool step needs from the session that runs it, and nothing more."""

    @property
    def state(self) -> State: ...

    @property
    def registry(self) -> ToolRegistry: ...

    @property
    def approval_callback(self) -> ApprovalCallback | None: ...

    @property
    def before_tool(self) -> Callable[[], Awaitable[None]] | None:
        """Awaited once a call's start is recorded, before its tool runs (see ``Session``)."""
        ...

    def needs_approval(self, handler: ToolHandler) -> bool:
        """Whether a call to ``handler`` must be approved before it runs."""
        ...

    def check_cancelled(self) -> None:
        """Raise ``CancelledError`` if the run was cancelled."""
        ...

    async def invocation(self, call: PreparedCall) -> ToolInvocation:
        """What the handler of ``call`` receives: its arguments, backend and profile."""
        ...


@dataclass
class PreparedCall:
    """A tool call with its arguments parsed and its handler found (or the reason it can't run)."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    handler: ToolHandler | None
    problem: str | None = None


def prepare(session: StepHost, call: dict[str, Any]) -> PreparedCall:
    function = call.get("function") or {}
    name = str(function.get("name") or "")
    raw = function.get("arguments") or "{}"
    handler = session.registry.get(name)
    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        return PreparedCall(
            call["id"],
            name,
            {"_raw_arguments": raw},
            handler,
            f"the arguments are not valid JSON ({exc.msg} at position {exc.pos}); "
            "call the tool again with a JSON object that matches its parameters",
        )
    if not isinstance(arguments, dict):
        return PreparedCall(
            call["id"],
            name,
            {"_raw_arguments": raw},
            handler,
            "the arguments must be a JSON object, not " + type(arguments).__name__,
        )
    if handler is None:
        available = ", ".join(session.registry.names) or "none"
        return PreparedCall(
            call["id"],
            name,
            arguments,
            None,
            f"there is no tool named {name!r}; available tools: {available}",
        )
    return PreparedCall(call["id"], name, arguments, handler)


async def decide(
    session: StepHost, run: RunContext, calls: list[PreparedCall]
) -> list[PreparedCall]:
    """Ask for approval where needed, in order; return the calls left pending by an interruption.

    Denied calls are answered at once (``tool_blocked``); approved ones stay in ``calls``. A
    callback that raises ``PermissionDenied`` denies the call with its message as the reason the
    model reads (the fleet passes on a person's reason this way).
    """
    pending: list[PreparedCall] = []
    for call in list(calls):
        if call.problem or call.handler is None or not session.needs_approval(call.handler):
            continue
        if pending:
            pending.append(call)
            continue
        try:
            approved = await _ask(session.approval_callback, call)
        except ApprovalInterrupt:
            pending.append(call)
            continue
        except PermissionDenied as exc:
            calls.remove(call)
            block(session, run, call, str(exc))
            continue
        if not approved:
            calls.remove(call)
            block(session, run, call, "the user denied this tool call")
    for call in pending:
        calls.remove(call)
    return pending


async def _ask(callback: ApprovalCallback | None, call: PreparedCall) -> bool:
    if callback is None:
        raise ApprovalInterrupt(f"{call.name} needs approval and no approval_callback is set")
    decision = callback(call.name, call.arguments)
    if inspect.isawaitable(decision):
        decision = await decision
    return bool(decision)


async def execute(session: StepHost, run: RunContext, calls: list[PreparedCall]) -> None:
    """Run the calls concurrently; each records its own result as soon as it is done."""
    await asyncio.gather(*(_execute_one(session, run, call) for call in calls))


async def _execute_one(session: StepHost, run: RunContext, call: PreparedCall) -> None:
    state = session.state
    state.append("tool_start", call_id=call.call_id, tool_name=call.name, arguments=call.arguments)
    run.emit(
        AgentEvent(
            "tool_start", tool_name=call.name, tool_call_id=call.call_id, tool_args=call.arguments
        )
    )
    if call.problem is not None or call.handler is None:
        output = ToolOutput(f"Error: {call.problem}", success=False)
    else:
        if session.before_tool is not None:
            await session.before_tool()
        session.check_cancelled()
        try:
            output = await call.handler.handle(await session.invocation(call))
        except PermissionDenied as exc:
            block(session, run, call, str(exc))
            return
        except ToolError as exc:
            output = ToolOutput(f"Error: {exc}", success=False)
        except Exception as exc:
            logger.exception("tool %s raised", call.name)
            output = ToolOutput(f"Error: tool {call.name} failed: {exc!r}", success=False)
    finish(session, run, call, output)


def finish(session: StepHost, run: RunContext, call: PreparedCall, output: ToolOutput) -> None:
    metadata = {"success": output.success, **output.metadata}
    session.state.append(
        "tool_end",
        call_id=call.call_id,
        tool_name=call.name,
        success=output.success,
        metadata=output.metadata,
    )
    session.state.append("message", role="tool", tool_call_id=call.call_id, content=output.content)
    run.emit(
        AgentEvent(
            "tool_end",
            tool_name=call.name,
            tool_call_id=call.call_id,
            tool_result=output.content,
            tool_metadata=metadata,
        )
    )


def block(session: StepHost, run: RunContext, call: PreparedCall, reason: str) -> None:
    session.state.append(
        "tool_blocked",
        call_id=call.call_id,
        tool_name=call.name,
        arguments=call.arguments,
        reason=reason,
    )
    session.state.append(
        "message", role="tool", tool_call_id=call.call_id, content=f"Blocked: {reason}"
    )
    run.emit(
        AgentEvent(
            "tool_blocked",
            tool_name=call.name,
            tool_call_id=call.call_id,
            tool_args=call.arguments,
            tool_result=reason,
        )
    )


def answer_unfinished(session: StepHost, content: str) -> None:
    """Give every unanswered call of the pending turn a result, so the history stays valid."""
    for call in session.state.unanswered_tool_calls():
        session.state.append("message", role="tool", tool_call_id=call["id"], content=content)
