"""Every exception rho-agent raises on purpose, in one tree.

::

    RhoAgentError
    ├── ConfigError            bad AgentConfig / YAML / prompt template (names the field and the fix)
    │   └── ProfileError       unknown or malformed permission profile
    ├── ApprovalInterrupt      a tool call needs a human decision; the run pauses (status "interrupted")
    ├── ToolError              a tool failed in a way the model should read (becomes a tool message)
    │   └── PermissionDenied   the profile forbids this call (becomes a ``tool_blocked`` event)
    ├── BackendError           the execution backend (local or Daytona) failed
    ├── ModelError             the model API failed after retries (becomes status "error")
    ├── SessionError           session store misuse: bad id, unknown session, already locked
    │   ├── SessionNotFound
    │   └── SessionLocked
    └── TraceError             a trace that cannot be read back

Developer misuse fails at construction; run-time failures become a run status plus an ``error`` event.
"""

from __future__ import annotations

from typing import Any


class RhoAgentError(Exception):
    """Base class for every error rho-agent raises on purpose."""


class ConfigError(RhoAgentError, ValueError):
    """An AgentConfig, config file or prompt template is invalid."""


class ProfileError(ConfigError):
    """A permission profile name or file is invalid."""


class ApprovalInterrupt(RhoAgentError):  # noqa: N818 - public name fixed by the documented API
    """Raised by an approval callback to pause the run until a human decides.

    The pending tool calls stay recorded in the State; a later ``Session.run`` resolves them.
    """

    def __init__(self, message: str = "approval required", **details: Any) -> None:
        super().__init__(message)
        self.details = details


class ToolError(RhoAgentError):
    """A tool call failed; the message is shown to the model as the tool result."""


class PermissionDenied(ToolError):  # noqa: N818 - reads better than PermissionDeniedError
    """The permission profile does not allow this tool call."""


class BackendError(RhoAgentError):
    """The execution backend failed (process spawn, sandbox API, file I/O)."""


class ModelError(RhoAgentError):
    """The model API failed in a way retries did not fix."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class SessionError(RhoAgentError):
    """A session store operation was misused."""


class SessionNotFound(SessionError):  # noqa: N818
    """No session with that id exists in the store."""


class SessionLocked(SessionError):  # noqa: N818
    """Another process is running this session right now."""


class TraceError(RhoAgentError):
    """A trace record could not be parsed."""
