"""rho-agent: build and run LLM agents; run thousands of them on a Celery/Redis fleet.

The public API is the names below (pinned by ``tests/sdk/test_public_api.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rho_agent.agent import Agent
from rho_agent.backends.base import CommandResult, ExecutionBackend
from rho_agent.backends.local import LocalBackend
from rho_agent.config import AgentConfig
from rho_agent.errors import (
    ApprovalInterrupt,
    BackendError,
    ConfigError,
    ModelError,
    OutputInvalid,
    PermissionDenied,
    ProfileError,
    RhoAgentError,
    SessionError,
    SessionLocked,
    SessionNotFound,
    ToolError,
    TraceError,
)
from rho_agent.events import AgentEvent, CompactResult, RunError, RunResult
from rho_agent.model.base import ModelClient, ModelRequest, ModelTurn, TokenUsage
from rho_agent.permissions.profile import PermissionProfile
from rho_agent.pricing import ModelPrice, PriceTable
from rho_agent.session import Session
from rho_agent.state import State, StateObserver
from rho_agent.store.directory import SessionInfo, SessionStore
from rho_agent.tools import ToolHandler, ToolInvocation, ToolOutput, ToolRegistry, tool
from rho_agent.trace import JsonlTraceSink, MemoryTraceSink, TraceSink

if TYPE_CHECKING:
    from rho_agent.backends.daytona.backend import DaytonaBackend

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentEvent",
    "ApprovalInterrupt",
    "BackendError",
    "CommandResult",
    "CompactResult",
    "ConfigError",
    "DaytonaBackend",
    "ExecutionBackend",
    "JsonlTraceSink",
    "LocalBackend",
    "MemoryTraceSink",
    "ModelClient",
    "ModelError",
    "ModelPrice",
    "ModelRequest",
    "ModelTurn",
    "OutputInvalid",
    "PermissionDenied",
    "PermissionProfile",
    "PriceTable",
    "ProfileError",
    "RhoAgentError",
    "RunError",
    "RunResult",
    "Session",
    "SessionError",
    "SessionInfo",
    "SessionLocked",
    "SessionNotFound",
    "SessionStore",
    "State",
    "StateObserver",
    "TokenUsage",
    "ToolError",
    "ToolHandler",
    "ToolInvocation",
    "ToolOutput",
    "ToolRegistry",
    "TraceError",
    "TraceSink",
    "tool",
]


def __getattr__(name: str) -> Any:
    """Import ``DaytonaBackend`` on first use: its module wraps an optional dependency."""
    if name == "DaytonaBackend":
        from rho_agent.backends.daytona.backend import DaytonaBackend

        return DaytonaBackend
    raise AttributeError(f"module 'rho_agent' has no attribute {name!r}")
