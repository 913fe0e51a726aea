"""Tools the model can call: the handler contract, the registry, ``@tool`` and the built-ins."""

from __future__ import annotations

from rho_agent.tools.base import ToolHandler, ToolInvocation, ToolOutput
from rho_agent.tools.builtin import build_registry, builtin_handlers
from rho_agent.tools.decorator import FunctionTool, tool
from rho_agent.tools.registry import ToolRegistry

__all__ = [
    "FunctionTool",
    "ToolHandler",
    "ToolInvocation",
    "ToolOutput",
    "ToolRegistry",
    "build_registry",
    "builtin_handlers",
    "tool",
]
