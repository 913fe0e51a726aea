"""Export a session as one versioned JSON document for analysis tools.

The trace is the complete record but is shaped for replay; the export is shaped for reading:
runs with their prompts and answers, every tool call with its arguments, result and duration,
every model call with its usage and cost. The format is documented in docs/sessions.md.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rho_agent.state import State, message_from_record
from rho_agent.trace import Record

EXPORT_FORMAT = "rho-agent.session-export"
EXPORT_VERSION = 1
_COMPACTION_KEYS = ("trigger", "summary", "tokens_before", "tokens_after")


def export_session(state: State) -> dict[str, Any]:
    """The session as JSON-ready data (``json.dumps`` it as is)."""
    builder = _ExportBuilder()
    for record in state.records:
        builder.add(record)
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "session_id": state.session_id,
        "model": state.model,
        "profile": state.profile,
        "created_at": state.created_at,
        "status": state.status,
        "run_count": state.run_count,
        "usage": dict(state.usage),
        "runs": builder.runs,
        "tool_calls": list(builder.tool_calls.values()),
        "model_calls": builder.model_calls,
        "compactions": builder.compactions,
        "errors": builder.errors,
        "pending_approvals": list(state.pending_approvals),
        "transcript": builder.transcript,
        "messages": list(state.messages),
    }


class _ExportBuilder:
    """Folds trace records, in order, into the export's lists."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.tool_calls: dict[str, dict[str, Any]] = {}
        self.model_calls: list[dict[str, Any]] = []
        self.compactions: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.transcript: list[dict[str, Any]] = []
        self._run: dict[str, Any] | None = None
        self._started: dict[str, str] = {}

    @property
    def run_number(self) -> int | None:
        return self._run["run"] if self._run is not None else None

    def add(self, record: Record) -> None:
        handlers = {
            "run_start": self._on_run_start,
            "run_resume": self._on_run_resume,
            "run_end": self._on_run_end,
            "message": self._on_message,
            "tool_start": self._on_tool_start,
            "tool_end": self._on_tool_end,
            "tool_blocked": self._on_tool_blocked,
            "model_call": self._on_model_call,
            "compaction": self._on_compaction,
            "error": self._on_error,
        }
        handler = handlers.get(str(record.get("type")))
        if handler is not None:
            handler(record)

    def _on_run_start(self, record: Record) -> None:
        self._run = {
            "run": record.get("run", len(self.runs) + 1),
            "prompt": record.get("prompt"),
            "started_at": record["ts"],
            "resumed_at": [],
            "ended_at": None,
            "duration_s": None,
            "status": "running",
            "text": None,
            "usage": None,
            "error": None,
        }
        self.runs.append(self._run)

    def _on_run_resume(self, record: Record) -> None:
        if self._run is None or self._run["status"] != "running":
            self._on_run_start({**record, "prompt": None})
        assert self._run is not None
        self._run["resumed_at"].append(record["ts"])

    def _on_run_end(self, record: Record) -> None:
        if self._run is None:
            return
        self._run.update(
            ended_at=record["ts"],
            duration_s=_seconds_between(self._run["started_at"], record["ts"]),
            status=record.get("status", "completed"),
            text=record.get("text"),
            usage=record.get("usage"),
        )

    def _on_message(self, record: Record) -> None:
        message = message_from_record(record)
        self.transcript.append({"ts": record["ts"], "run": self.run_number, **message})
        for call in message.get("tool_calls") or []:
            self._add_tool_call(call, record["ts"])
        call_id = message.get("tool_call_id")
        if message.get("role") == "tool" and call_id in self.tool_calls:
            entry = self.tool_calls[call_id]
            entry["result"] = message.get("content")
            if entry["status"] == "pending":
                entry["status"] = "not_run"  # answered for it after a cancel, error or crash

    def _add_tool_call(self, call: dict[str, Any], ts: str) -> None:
        function = call.get("function") or {}
        self.tool_calls[call["id"]] = {
            "call_id": call["id"],
            "run": self.run_number,
            "tool_name": function.get("name"),
            "arguments": _parse_arguments(function.get("arguments")),
            "requested_at": ts,
            "started_at": None,
            "ended_at": None,
            "duration_s": None,
            "status": "pending",
            "success": None,
            "result": None,
            "metadata": None,
            "blocked_reason": None,
        }

    def _tool_entry(self, record: Record) -> dict[str, Any]:
        call_id = str(record.get("call_id"))
        if call_id not in self.tool_calls:
            call = {"id": call_id, "function": {"name": record.get("tool_name")}}
            self._add_tool_call(call, record["ts"])
        return self.tool_calls[call_id]

    def _on_tool_start(self, record: Record) -> None:
        entry = self._tool_entry(record)
        entry.update(started_at=record["ts"], arguments=record.get("arguments", entry["arguments"]))

    def _on_tool_end(self, record: Record) -> None:
        self._finish_tool(record, "succeeded" if record.get("success", True) else "failed")
        entry = self._tool_entry(record)
        entry.update(success=record.get("success", True), metadata=record.get("metadata"))

    def _on_tool_blocked(self, record: Record) -> None:
        self._finish_tool(record, "blocked")
        self._tool_entry(record)["blocked_reason"] = record.get("reason")

    def _finish_tool(self, record: Record, status: str) -> None:
        entry = self._tool_entry(record)
        entry.update(ended_at=record["ts"], status=status)
        if entry["started_at"] is not None:
            entry["duration_s"] = _seconds_between(entry["started_at"], record["ts"])

    def _on_model_call(self, record: Record) -> None:
        self.model_calls.append(
            {
                "ts": record["ts"],
                "run": self.run_number,
                "model": record.get("model"),
                "usage": record.get("usage"),
                "cost_usd": record.get("cost_usd", 0.0),
                "estimated": record.get("estimated", False),
            }
        )

    def _on_compaction(self, record: Record) -> None:
        self.compactions.append(
            {
                "ts": record["ts"],
                "run": self.run_number,
                **{key: record.get(key) for key in _COMPACTION_KEYS},
            }
        )

    def _on_error(self, record: Record) -> None:
        message = record.get("message")
        self.errors.append({"ts": record["ts"], "run": self.run_number, "message": message})
        if self._run is not None and self._run["status"] == "running":
            self._run["error"] = message


def _parse_arguments(raw: Any) -> Any:
    """Tool arguments as the model sent them: a JSON object when they parse, else the raw text."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        return raw


def _seconds_between(start: str, end: str) -> float:
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 6)
