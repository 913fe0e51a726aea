"""The values a run hands back: AgentEvent, RunResult (with RunError), CompactResult."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast, get_args

EventType = Literal[
    "text",
    "tool_start",
    "tool_end",
    "tool_blocked",
    "api_call_complete",
    "turn_complete",
    "compact_start",
    "compact_end",
    "error",
    "cancelled",
    "interruption",
    "max_turns",
    "output_invalid",
    "budget_exceeded",
    "job_restarted",
]
"""``job_restarted`` comes from the fleet: an attempt resumed a job on another worker."""

RunStatus = Literal[
    "completed",
    "error",
    "cancelled",
    "interrupted",
    "max_turns",
    "invalid_output",
    "budget_exceeded",
    "awaiting_approval",
]
"""``awaiting_approval`` comes from the fleet: a job parked until someone decides its tool calls
(a local run that needs a decision ends ``interrupted``)."""

RUN_STATUSES: frozenset[str] = frozenset(get_args(RunStatus))


def run_status(value: object) -> RunStatus:
    """A run status read back from data (a trace, a stored result); unknown ones are refused."""
    if isinstance(value, str) and value in RUN_STATUSES:
        return cast(RunStatus, value)
    raise ValueError(f"unknown run status {value!r}; expected one of {sorted(RUN_STATUSES)}")


@dataclass
class AgentEvent:
    """One thing that happened during a run; ``type`` says which fields are set."""

    type: EventType
    content: str | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    tool_args: dict[str, Any] | None = None
    tool_result: str | None = None
    tool_metadata: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data, without the unset fields (values are not copied)."""
        return {name: value for name in _EVENT_FIELDS if (value := getattr(self, name)) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentEvent:
        known = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in known})


_EVENT_FIELDS = tuple(item.name for item in fields(AgentEvent))


@dataclass(frozen=True)
class RunError:
    """Why a run failed, for callers that only hold its result.

    ``type`` is the exception's class name (``ModelError`` for a model API that failed after its
    retries), ``max_turns``, ``invalid_output`` or ``budget_exceeded``; ``message`` says what
    went wrong, as the run's ``error`` event does. ``partial`` says the run's text is an answer
    this failure cut off mid-stream.
    """

    type: str
    message: str
    partial: bool = False

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "partial": self.partial}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunError:
        return cls(
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            partial=bool(data.get("partial", False)),
        )


@dataclass
class RunResult:
    """What ``Session.run`` returns; ``error`` says why when ``status`` is "error",
    "max_turns" or "invalid_output".

    ``output`` is the validated answer of a run given an ``output_schema``: an instance of the
    pydantic model named there, or JSON data for a dict schema (and in serialised results).
    """

    text: str
    events: list[AgentEvent] = field(default_factory=list)
    status: RunStatus = "completed"
    usage: dict[str, int] = field(default_factory=dict)
    error: RunError | None = None
    output: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "status": self.status,
            "usage": dict(self.usage),
            "events": [event.to_dict() for event in self.events],
            "error": self.error.to_dict() if self.error is not None else None,
            "output": output_data(self.output),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        error = data.get("error")
        return cls(
            text=str(data.get("text", "")),
            status=run_status(data.get("status", "completed")),
            usage=dict(data.get("usage") or {}),
            events=[AgentEvent.from_dict(event) for event in data.get("events") or []],
            error=RunError.from_dict(error) if isinstance(error, dict) else None,
            output=data.get("output"),
        )


def output_data(output: Any) -> Any:
    """A result's ``output`` as JSON data (a pydantic instance is dumped)."""
    dump = getattr(output, "model_dump", None)
    return dump(mode="json") if callable(dump) else output


@dataclass
class CompactResult:
    """What ``Session.compact`` returns."""

    summary: str
    tokens_before: int
    tokens_after: int
    trigger: str
