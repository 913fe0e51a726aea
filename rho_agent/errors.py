"""Every exception rho-agent raises on purpose, in one tree.

::

    RhoAgentError
    ├── ConfigError            bad AgentConfig, YAML or prompt template (names field and fix)
    │   └── ProfileError       unknown or malformed permission profile
    ├── ApprovalInterrupt      a tool call needs a human decision; the run pauses ("interrupted")
    ├── ToolError              a tool failed; the model reads why (becomes a tool message)
    │   └── PermissionDenied   the profile forbids this call (becomes a ``tool_blocked`` event)
    │       └── ConfinementUnavailable  the OS cannot enforce the profile here (fail closed)
    ├── BackendError           the execution backend (local or Daytona) failed
    ├── BudgetExceeded         a spending budget refused the next model call ("budget_exceeded")
    ├── ModelError             the model API failed after retries (becomes status "error")
    │   └── ContextWindowExceeded  the next request would not fit the model's window, even compacted
    ├── OutputInvalid          an answer does not match its output schema (one corrective turn,
    │                          then status "invalid_output")
    ├── SessionError           session store misuse: bad id, unknown session, already locked
    │   ├── SessionNotFound
    │   └── SessionLocked
    └── TraceError             a trace that cannot be read back

Developer misuse fails at construction; run-time failures become a status and an ``error`` event.
"""

from __future__ import annotations

from typing import Any


class RhoAgentError(Exception):
    """Base class for every error rho-agent raises on purpose."""


class ConfigError(RhoAgentError, ValueError):
    """An AgentConfig, config file or prompt template is invalid."""


class ProfileError(ConfigError):
    """A permission profile name or file is invalid."""


class ApprovalInterrupt(RhoAgentError):
    """Raised by an approval callback to pause the run until a human decides.

    The pending tool calls stay recorded in the State; a later ``Session.run`` resolves them.
    """

    def __init__(self, message: str = "approval required", **details: Any) -> None:
        super().__init__(message)
        self.details = details


class ToolError(RhoAgentError):
    """A tool call failed; the message is shown to the model as the tool result."""


class PermissionDenied(ToolError):
    """The permission profile does not allow this tool call."""


class ConfinementUnavailable(PermissionDenied):
    """This machine cannot confine a tool process as its profile requires, so it does not run."""


class BackendError(RhoAgentError):
    """The execution backend failed (process spawn, sandbox API, file I/O)."""


class BudgetExceeded(RhoAgentError):
    """A budget scope refused to reserve the next model call; the run ends ``budget_exceeded``.

    The message names the scope, its limit and what was spent; ``scope`` names it for code.
    """

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class ModelError(RhoAgentError):
    """The model API failed in a way retries did not fix.

    ``retry_after`` is the server's ``Retry-After`` in seconds when it sent one (a 429).
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class ContextWindowExceeded(ModelError):
    """The next request would not fit the model's context window, even after compaction.

    Raised before the request is sent: a provider would refuse it, and a self-hosted server might
    silently cut the history instead.
    """

    def __init__(self, message: str, *, needed: int, window: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.window = window


class OutputInvalid(RhoAgentError):
    """A run's final answer does not match its ``output_schema``; the message says where."""


class SessionError(RhoAgentError):
    """A session store operation was misused."""


class SessionNotFound(SessionError):
    """No session with that id exists in the store."""


class SessionLocked(SessionError):
    """Another process has this session open, or a Session of this process is running it."""


class TraceError(RhoAgentError):
    """A trace record could not be parsed."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without its closing period (its class name
    when it has none): for a one-line error that quotes what a library said."""
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__
