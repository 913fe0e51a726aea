"""State: the conversation trajectory, rebuilt exactly from its trace.

Every change to a State is a trace record passed to ``State.append``; ``apply`` is the one reducer
used both live and by ``State.from_jsonl``, so a resumed State is the State that was written.

``messages`` is valid to send to the API at every point: an assistant message with tool calls is
held back (``pending_turn``) until every call has its tool message, and then both go in together in
the model's order, whatever order the tools finished in.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rho_agent.errors import TraceError
from rho_agent.redact import redact_data
from rho_agent.trace import (
    RECORD_META_KEYS,
    TRACE_FORMAT_VERSION,
    Record,
    TraceSink,
    decode_records,
    encode_record,
    now_iso,
)

logger = logging.getLogger("rho_agent.state")

USAGE_KEYS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
COST_DIGITS = 10
"""Dollar amounts are rounded to 1e-10 (far below any price) wherever they are added up, so a sum
of binary floats prints as ``0.0006655``, not ``0.0006655000000000001``."""


def round_cost(dollars: float) -> float:
    """``dollars`` rounded to ``COST_DIGITS``: use it on every cost computed or added up."""
    return round(dollars, COST_DIGITS)


@runtime_checkable
class StateObserver(Protocol):
    """Notified of every trace record as it is appended (each carries ``type`` and ``ts``)."""

    def on_event(self, event: dict[str, Any]) -> None: ...


def empty_usage() -> dict[str, Any]:
    return {**dict.fromkeys(USAGE_KEYS, 0), "cost_usd": 0.0}


class State:
    """Messages, token usage, cost in USD, status and run count of one session."""

    def __init__(self, session_id: str = "") -> None:
        self.session_id = session_id
        self.messages: list[dict[str, Any]] = []
        self.usage: dict[str, Any] = empty_usage()
        self.status = "idle"
        self.run_count = 0
        self.model: str | None = None
        self.profile: str | None = None
        self.created_at: str | None = None
        self.last_error: str | None = None
        self.pending_turn: dict[str, Any] | None = None
        """The assistant message whose tool calls are not all answered yet."""
        self.pending_results: dict[str, dict[str, Any]] = {}
        """Tool messages already produced for ``pending_turn`` by call id (the finished calls)."""
        self.pending_approvals: list[dict[str, Any]] = []
        """Tool calls waiting for a human decision (set by an interruption)."""
        self.records: list[Record] = []
        self._observers: list[StateObserver] = []
        self._sinks: list[TraceSink] = []
        self._broken_observers: set[int] = set()

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def from_records(cls, records: list[Record]) -> State:
        state = cls()
        for record in records:
            state.apply(record)
            state.records.append(record)
        return state

    @classmethod
    def from_jsonl(cls, trace: bytes | str | os.PathLike[str]) -> State:
        """Rebuild a State, with no Session needed, from a ``trace.jsonl`` file's path or its
        content (bytes, or a str of records, which starts with ``{``).

        A missing file raises ``TraceError``: an empty State would look like a session that never
        ran."""
        data = _trace_data(trace)
        with _gc_paused():
            return cls.from_records(decode_records(data))

    def to_jsonl(self) -> bytes:
        return b"".join(encode_record(record) for record in self.records)

    # -- observing ------------------------------------------------------------------------------

    def add_observer(self, observer: StateObserver) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: StateObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def add_sink(self, sink: TraceSink) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink: TraceSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    @property
    def sinks(self) -> list[TraceSink]:
        return list(self._sinks)

    # -- changing -------------------------------------------------------------------------------

    def append(self, record_type: str, **fields: Any) -> Record:
        """Record one change: apply it, persist it to every sink, then tell every observer.

        Secrets are redacted first (``rho_agent.redact``): a key a tool printed reaches neither
        the trace nor the model's next request.
        """
        record: Record = {
            "v": TRACE_FORMAT_VERSION,
            "type": record_type,
            "ts": now_iso(),
            **redact_data(fields),
        }
        self.apply(record)
        self.records.append(record)
        for sink in self._sinks:
            sink.write(record)
        for observer in self._observers:
            self._notify(observer, record)
        return record

    def _notify(self, observer: StateObserver, record: Record) -> None:
        try:
            observer.on_event(record)
        except Exception:
            if id(observer) not in self._broken_observers:
                self._broken_observers.add(id(observer))
                logger.exception("state observer %r raised; the run goes on", observer)

    def apply(self, record: Record) -> None:
        """The reducer: how each record type changes the State."""
        handler = _REDUCERS.get(str(record.get("type")))
        if handler is not None:
            handler(self, record)

    # -- reading --------------------------------------------------------------------------------

    def get_user_messages(self) -> list[str]:
        """The text of every user prompt, in order."""
        return [
            message["content"]
            for message in self.messages
            if message.get("role") == "user" and isinstance(message.get("content"), str)
        ]

    @property
    def has_unfinished_run(self) -> bool:
        """A run started and never ended (its process stopped mid-run)."""
        return self.status == "running"

    def unanswered_tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls of the pending turn that have no result yet, in the model's order."""
        if self.pending_turn is None:
            return []
        return [
            call
            for call in self.pending_turn.get("tool_calls") or []
            if call["id"] not in self.pending_results
        ]


def _trace_data(trace: bytes | str | os.PathLike[str]) -> bytes | str:
    """The records themselves, read from the file when ``trace`` is a path."""
    if isinstance(trace, bytes) or (isinstance(trace, str) and trace.lstrip().startswith("{")):
        return trace
    try:
        return Path(trace).read_bytes()
    except OSError as exc:
        raise TraceError(
            f"cannot read the trace file {os.fspath(trace)!r}: {exc.strerror or exc}; "
            "pass the path of a session's trace.jsonl (or its content as bytes)"
        ) from None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: loading creates millions of acyclic objects, and the collections
    they trigger would make a 100,000-record load about three times slower."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


STATUS_RECORD_TYPES = frozenset({"session_start", "run_start", "run_resume", "run_end", "status"})
"""The record types after which a session's status is known from the record alone."""


def status_after(record: Record) -> str | None:
    """The session status right after ``record``; None for records that do not set it.

    Stores use it to keep a session's status current without replaying the whole trace.
    """
    kind = record.get("type")
    if kind not in STATUS_RECORD_TYPES:
        return None
    if kind in ("run_start", "run_resume"):
        return "running"
    if kind == "session_start":
        return "idle"
    return str(record.get("status", "completed"))


def message_from_record(record: Record) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in RECORD_META_KEYS}


def _on_session_start(state: State, record: Record) -> None:
    state.session_id = record.get("session_id", state.session_id)
    state.model = record.get("model")
    state.profile = record.get("profile")
    state.created_at = record.get("ts")


def _on_run_start(state: State, record: Record) -> None:
    state.status = "running"
    state.last_error = None


def _on_message(state: State, record: Record) -> None:
    message = message_from_record(record)
    message.pop("partial", None)  # marks a cut-off answer in the trace; not a chat-protocol key
    if message.get("role") == "assistant" and not message.get("tool_calls"):
        # Older traces hold null here; some servers render a null as the word "None".
        message["content"] = message.get("content") or ""
    if message.get("role") == "assistant" and message.get("tool_calls"):
        state.pending_turn = message
        state.pending_results = {}
        return
    call_id = message.get("tool_call_id")
    if state.pending_turn is not None and message.get("role") == "tool" and call_id:
        state.pending_results[call_id] = message
        if not state.unanswered_tool_calls():
            _flush_pending_turn(state)
        return
    state.messages.append(message)


def _flush_pending_turn(state: State) -> None:
    turn = state.pending_turn
    assert turn is not None
    state.messages.append(turn)
    state.messages.extend(state.pending_results[call["id"]] for call in turn["tool_calls"])
    state.pending_turn = None
    state.pending_results = {}
    state.pending_approvals = []


def _on_model_call(state: State, record: Record) -> None:
    usage = record.get("usage") or {}
    for key in USAGE_KEYS:
        state.usage[key] += int(usage.get(key, 0))
    state.usage["cost_usd"] = round_cost(
        state.usage["cost_usd"] + float(record.get("cost_usd", 0.0))
    )


def _on_approval_pending(state: State, record: Record) -> None:
    state.pending_approvals = list(record.get("calls") or [])


def _on_compaction(state: State, record: Record) -> None:
    state.messages = list(record["messages"])


def _on_error(state: State, record: Record) -> None:
    state.last_error = record.get("message")


def _on_run_end(state: State, record: Record) -> None:
    state.status = str(record.get("status", "completed"))
    state.run_count += 1


def _on_status(state: State, record: Record) -> None:
    state.status = str(record["status"])


_REDUCERS = {
    "session_start": _on_session_start,
    "run_start": _on_run_start,
    "run_resume": _on_run_start,
    "message": _on_message,
    "model_call": _on_model_call,
    "approval_pending": _on_approval_pending,
    "compaction": _on_compaction,
    "error": _on_error,
    "run_end": _on_run_end,
    "status": _on_status,
}
