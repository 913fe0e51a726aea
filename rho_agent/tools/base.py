"""What a tool is: a handler the model can call, its invocation and its output."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rho_agent.backends.base import ExecutionBackend
    from rho_agent.permissions.profile import PermissionProfile
    from rho_agent.tools.sub_jobs import SubJobs


@dataclass(frozen=True)
class ToolInvocation:
    """One call of a tool by the model, with the context the handler runs in."""

    call_id: str
    tool_name: str
    arguments: dict[str, Any]
    backend: ExecutionBackend
    profile: PermissionProfile
    session_id: str = ""
    sub_jobs: SubJobs | None = None
    """Runs sub-jobs for ``fan_out`` when the session runs as a job (``None`` otherwise)."""


@dataclass
class ToolOutput:
    """What a handler returns; ``content`` is what the model reads."""

    content: str
    success: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


class ToolHandler(ABC):
    """A tool the model can call. Subclass it, or use the ``@tool`` decorator on a function.

    ``parameters`` is the JSON schema of the arguments object. ``requires_approval`` asks for a
    human decision (``Session.approval_callback``) when the config has ``auto_approve=False``.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    requires_approval: bool = False

    @abstractmethod
    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        """Run the tool. Raise ``ToolError`` (or ``PermissionDenied``) to report a failure."""

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry for this handler."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }
