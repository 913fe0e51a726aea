"""The built-in tools, written once against ``ExecutionBackend``, and a profile's registry."""

from __future__ import annotations

from collections.abc import Callable

from rho_agent.permissions.profile import PermissionProfile, load_profile
from rho_agent.tools.base import ToolHandler
from rho_agent.tools.builtin.fan_out import FanOutTool
from rho_agent.tools.builtin.files import EditTool, ReadTool, WriteTool
from rho_agent.tools.builtin.search import GlobTool, GrepTool, ListTool
from rho_agent.tools.builtin.shell import BashTool
from rho_agent.tools.registry import ToolRegistry

__all__ = [
    "BashTool",
    "EditTool",
    "FanOutTool",
    "GlobTool",
    "GrepTool",
    "ListTool",
    "ReadTool",
    "WriteTool",
    "build_registry",
    "builtin_handlers",
]


def builtin_handlers(profile: PermissionProfile) -> list[ToolHandler]:
    """Fresh handlers for the tools ``profile`` offers (``profile.tool_names()``: the built-in
    tools its policies allow, and the tools it grants).

    The handlers enforce the profile again on every call, from the invocation's profile.
    """
    factories: dict[str, Callable[[], ToolHandler]] = {
        "bash": lambda: BashTool(profile.shell),
        "read": ReadTool,
        "write": WriteTool,
        "edit": EditTool,
        "glob": GlobTool,
        "grep": GrepTool,
        "list": ListTool,
        "fan_out": FanOutTool,
    }
    return [factories[name]() for name in profile.tool_names()]


def build_registry(profile: PermissionProfile | str | None = None) -> ToolRegistry:
    """A fresh registry of the built-in tools ``profile`` allows (see ``load_profile``)."""
    return ToolRegistry(builtin_handlers(load_profile(profile)))
