"""Small tools and builders shared by the SDK tests."""

from __future__ import annotations

import asyncio
from typing import Any

from rho_agent import Agent, AgentConfig, Session, ToolHandler, ToolInvocation, ToolOutput
from rho_agent.testing import ScriptedModelServer


class ProbeTool(ToolHandler):
    """Records its calls; sleeps ``sleep`` seconds when asked (to show concurrency/cancellation)."""

    name = "probe"
    description = "Test tool that echoes its id."

    def __init__(self, *, requires_approval: bool = False) -> None:
        self.parameters = {
            "type": "object",
            "properties": {"id": {"type": "string"}, "sleep": {"type": "number"}},
        }
        self.requires_approval = requires_approval
        self.calls: list[dict[str, Any]] = []
        self.finished: list[str] = []

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        self.calls.append(invocation.arguments)
        await asyncio.sleep(float(invocation.arguments.get("sleep", 0)))
        ident = str(invocation.arguments.get("id", ""))
        self.finished.append(ident)
        return ToolOutput(f"probe {ident}", metadata={"id": ident})


def make_session(
    server: ScriptedModelServer, tmp_path: Any, *, probe: ProbeTool | None = None, **config: Any
) -> Session:
    config.setdefault("working_dir", str(tmp_path))
    config.setdefault("profile", "developer")
    agent = Agent(AgentConfig(base_url=server.base_url, **config))
    if probe is not None:
        agent.registry.register(probe)
    return Session(agent)


def assert_history_valid(messages: list[dict[str, Any]]) -> None:
    """Every assistant tool call is followed by exactly its tool results, before anything else."""
    index = 0
    while index < len(messages):
        message = messages[index]
        calls = message.get("tool_calls") or []
        if message.get("role") == "tool":
            raise AssertionError(f"tool message without its call at {index}: {message}")
        if calls:
            wanted = [call["id"] for call in calls]
            got = [m.get("tool_call_id") for m in messages[index + 1 : index + 1 + len(calls)]]
            assert got == wanted, f"tool results {got} do not answer calls {wanted}"
            index += len(calls)
        index += 1
