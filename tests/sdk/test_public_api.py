"""The public names users were promised (shared seed API) stay importable and documented."""

from __future__ import annotations

import rho_agent
import rho_agent.tools

SEED_NAMES = {
    "Agent", "AgentConfig", "Session", "SessionStore", "State", "StateObserver", "RunResult",
    "AgentEvent", "CompactResult", "SessionInfo", "PermissionProfile", "DaytonaBackend",
    "ToolHandler", "ToolInvocation", "ToolOutput", "ToolRegistry", "ApprovalInterrupt",
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert sorted(rho_agent.__all__) == [
        "Agent", "AgentConfig", "AgentEvent", "ApprovalInterrupt", "BackendError", "CommandResult",
        "CompactResult", "ConfigError", "DaytonaBackend", "ExecutionBackend", "JsonlTraceSink",
        "LocalBackend", "MemoryTraceSink", "ModelClient", "ModelError", "ModelPrice",
        "ModelRequest", "ModelTurn", "OutputInvalid", "PermissionDenied", "PermissionProfile",
        "PriceTable", "ProfileError", "RhoAgentError", "RunError", "RunResult", "Session",
        "SessionError", "SessionInfo", "SessionLocked", "SessionNotFound", "SessionStore", "State",
        "StateObserver", "TokenUsage", "ToolError", "ToolHandler", "ToolInvocation", "ToolOutput",
        "ToolRegistry", "TraceError", "TraceSink", "tool",
    ]  # fmt: skip


def test_every_public_name_imports_and_has_a_docstring() -> None:
    assert set(rho_agent.__all__) >= SEED_NAMES
    for name in rho_agent.__all__:
        value = getattr(rho_agent, name)
        assert value.__doc__, f"rho_agent.{name} has no docstring"


def test_tool_names_are_importable_from_rho_agent_tools() -> None:
    for name in ("ToolHandler", "ToolInvocation", "ToolOutput"):
        assert getattr(rho_agent.tools, name) is getattr(rho_agent, name)
