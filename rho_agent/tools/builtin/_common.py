"""What every built-in tool shares: its argument model, and OS errors the model can read."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from rho_agent.errors import ToolError
from rho_agent.tools._schema import schema_of
from rho_agent.tools.base import ToolHandler


class Arguments(BaseModel):
    """Base of the built-in tools' argument models: unknown arguments are errors."""

    model_config = ConfigDict(extra="forbid")


class BuiltinTool(ToolHandler):
    """A built-in tool whose ``parameters`` are the JSON schema of its ``arguments`` model."""

    arguments: ClassVar[type[Arguments]]

    def __init__(self) -> None:
        self.parameters = schema_of(self.arguments)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def fs_error(exc: OSError, shown: str) -> ToolError:
    """A ``ToolError`` for a failed file operation on ``shown`` (the path as the model gave it)."""
    if isinstance(exc, FileNotFoundError):
        return ToolError(f"{shown}: no such file or directory")
    if isinstance(exc, IsADirectoryError):
        return ToolError(f"{shown} is a directory; use the list tool to see what it holds")
    if isinstance(exc, NotADirectoryError):
        return ToolError(f"{shown}: a part of this path is not a directory")
    if isinstance(exc, PermissionError):
        return ToolError(f"{shown}: the operating system denied access")
    return ToolError(f"{shown}: {exc.strerror or exc}")
