"""The built-in tools, written once against ``ExecutionBackend``, and a profile's registry."""

from __future__ import annotations

from collections.abc import Callable

from rho_agent.permissions.profile import PermissionProfile, load_profile
from rho_agent.tools.base import ToolHandler
from rho_agent.tools.builtin.files import EditTool, ReadTool, WriteTool
from rho_agent.tools.builtin.search import GlobTool, GrepTool, ListTool
from rho_agent.tools.builtin.shell import BashTool
from rho_agent.tools.registry import ToolRegistry

__all__ = [
    "BashTool",
    "EditTool",
    "GlobTool",
    "GrepTool",
    "ListTool",
    "ReadTool",
    "WriteTool",
    "build_registry",
    "builtin_handlers",
]


def builtin_handlers(profile: PermissionProfile) -> list[ToolHandler]:
    """Fresh handlers for the built-in tools ``profile`` offers (``profile.builtin_tools()``).

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
    }
    return [factories[name]() for name in profile.builtin_tools()]


def build_registry(profile: PermissionProfile | str | None = None) -> ToolRegistry:
    """A fresh registry of the built-in tools ``profile`` allows (see ``load_profile``)."""
    return ToolRegistry(builtin_handlers(load_profile(profile)))
