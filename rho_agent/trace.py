"""Trace records and the sinks that persist them.

A trace is an append-only sequence of JSON records, one per state change. Every record carries
``v`` (format version), ``type`` and ``ts`` (ISO 8601 UTC); ``docs/trace-format.md`` lists
the types.
Message records carry the OpenAI message's own keys at top level (``role``, ``content``,
``tool_calls``, ``tool_call_id``), so an observer reads ``record["tool_calls"]`` directly.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rho_agent import jsoncodec

TRACE_FORMAT_VERSION = 1
RECORD_META_KEYS = frozenset({"v", "type", "ts"})

Record = dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def encode_record(record: Record) -> bytes:
    """One JSONL line (compact, UTF-8, newline-terminated)."""
    return jsoncodec.dumpb(record) + b"\n"


def decode_records(data: bytes | str) -> list[Record]:
    """Parse JSONL trace bytes. A torn last line (a crash mid-write) is skipped; any other bad line
    raises ``TraceError`` naming its line number."""
    from rho_agent.errors import TraceError

    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return []
    try:
        # One C-level parse of the whole trace is several times faster than a loads per line.
        parsed = jsoncodec.loads("[" + ",".join(lines) + "]")
        if all(isinstance(item, dict) for item in parsed):
            return list(parsed)
    except json.JSONDecodeError:
        pass
    records: list[Record] = []
    for number, line in enumerate(lines, start=1):
        try:
            item = jsoncodec.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the torn tail of an interrupted write
            raise TraceError(f"trace line {number} is not valid JSON: {line[:80]!r}") from None
        if not isinstance(item, dict):
            raise TraceError(f"trace line {number} is not a JSON object: {line[:80]!r}")
        records.append(item)
    return records


@runtime_checkable
class TraceSink(Protocol):
    """Somewhere trace records go as they happen. ``write`` must not block for long."""

    def write(self, record: Record) -> None: ...

    def close(self) -> None: ...


class MemoryTraceSink:
    """Keeps records in a list (tests, embedded runs)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, record: Record) -> None:
        self.records.append(record)

    def close(self) -> None:
        return None


class JsonlTraceSink:
    """Appends each record to a ``trace.jsonl`` file as one line, flushed at once.

    The file is opened in append mode and only ever appended to: each write is O(1), and a crash
    leaves at most one torn last line, which ``decode_records`` tolerates.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held for the session

    def write(self, record: Record) -> None:
        self._file.write(encode_record(record))

    def close(self) -> None:
        self._file.close()
