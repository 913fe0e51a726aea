"""The built-in tools, written once against ``ExecutionBackend``, and a profile's registry."""

from __future__ import annotations

from rho_agent.permissions import PermissionProfile, load_profile
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
    """The built-in tools ``profile`` allows, in the order the model sees them.

    No bash without a shell policy, no write/edit without a write policy, and only the names in
    ``profile.tools`` when it is set. The handlers enforce the profile again on every call.
    """
    handlers: list[ToolHandler] = []
    if profile.shell != "none":
        handlers.append(BashTool(profile.shell))
    handlers.append(ReadTool())
    if profile.write != "none":
        handlers += [WriteTool(), EditTool()]
    handlers += [GlobTool(), GrepTool(), ListTool()]
    if profile.tools is not None:
        handlers = [handler for handler in handlers if handler.name in profile.tools]
    return handlers


def build_registry(profile: PermissionProfile | str | None = None) -> ToolRegistry:
    """A fresh registry of the built-in tools ``profile`` allows (see ``load_profile``)."""
    return ToolRegistry(builtin_handlers(load_profile(profile)))
