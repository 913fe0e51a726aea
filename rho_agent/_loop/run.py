"""RunContext: what one ``Session.run`` call accumulates (events, this run's usage, final text)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rho_agent.events import AgentEvent, RunError, RunResult, RunStatus
from rho_agent.redact import default_redactor
from rho_agent.state import USAGE_KEYS, empty_usage, round_cost

logger = logging.getLogger("rho_agent.session")

EventCallback = Callable[[AgentEvent], Any]


@dataclass
class RunContext:
    on_event: EventCallback | None = None
    events: list[AgentEvent] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=empty_usage)
    text: str = ""
    streamed: list[str] = field(default_factory=list)
    """Text of the model call in flight, kept so a cancelled stream is not lost."""
    error: RunError | None = None
    output: Any = None
    """The validated answer of a run with an output schema."""
    corrections: int = 0
    """Corrective turns given after an invalid answer (at most one)."""
    _callback_failed: bool = False

    def emit(self, event: AgentEvent) -> None:
        """Hand ``event`` (its secrets redacted) to the run's events and the caller's callback."""
        _redact_event(event)
        self.events.append(event)
        if self.on_event is None:
            return
        try:
            outcome = self.on_event(event)
            if inspect.isawaitable(outcome):
                raise TypeError("on_event must be a plain function; it returned an awaitable")
        except Exception:
            if not self._callback_failed:
                self._callback_failed = True
                logger.exception("on_event callback raised; the run goes on")

    def add_usage(self, usage: dict[str, int], cost_usd: float) -> None:
        for key in USAGE_KEYS:
            self.usage[key] += usage.get(key, 0)
        self.usage["cost_usd"] = round_cost(self.usage["cost_usd"] + cost_usd)

    def result(self, status: RunStatus) -> RunResult:
        redactor = default_redactor()
        error = self.error
        if error is not None:
            error = RunError(error.type, redactor.text(error.message), error.partial)
        return RunResult(
            text=redactor.text(self.text),
            events=self.events,
            status=status,
            usage=dict(self.usage),
            error=error,
            output=redactor.data(self.output),
        )


def _redact_event(event: AgentEvent) -> None:
    """Redact the event's text fields in place (it was just built for this emit)."""
    redactor = default_redactor()
    if event.content is not None:
        event.content = redactor.text(event.content)
    if event.tool_result is not None:
        event.tool_result = redactor.text(event.tool_result)
    if event.tool_args is not None:
        event.tool_args = redactor.data(event.tool_args)
    if event.tool_metadata is not None:
        event.tool_metadata = redactor.data(event.tool_metadata)
