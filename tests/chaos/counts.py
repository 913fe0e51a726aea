"""What every chaos test counts and prints: completed, lost, duplicate results, duplicate events
(stored in Redis, and seen by observers), re-executed side-effecting calls."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatch.fleet.redis_bus import decode_entry
from dispatch.keys import Keys
from rho_agent import AgentEvent, RunResult


@dataclass
class ChaosCounts:
    completed: int = 0
    lost: int = 0
    duplicate_results: int = 0
    duplicate_events_stored: int = 0
    duplicate_events_seen: int = 0
    reexecuted_side_effects: int = 0

    def report(self, scenario: str) -> str:
        line = (
            f"[chaos] {scenario}: completed={self.completed} lost={self.lost} "
            f"duplicate_results={self.duplicate_results} "
            f"duplicate_events_stored={self.duplicate_events_stored} "
            f"duplicate_events_seen={self.duplicate_events_seen} "
            f"reexecuted_side_effects={self.reexecuted_side_effects}"
        )
        print("\n" + line)
        return line


def count_job(
    counts: ChaosCounts,
    client: Any,
    keys: Keys,
    job_id: str,
    result: RunResult | None,
    seen: list[AgentEvent] | None = None,
) -> None:
    """Add one job's numbers: its result, its events stream and what an observer saw."""
    if result is not None and result.status == "completed":
        counts.completed += 1
    else:
        counts.lost += 1
    items = [
        item
        for _, fields in client.xrange(keys.events(job_id))
        for item in decode_entry(fields["d"])
    ]
    finished = [item for item in items if item.get("type") == "finished"]
    counts.duplicate_results += max(0, len(finished) - 1)
    ids = Counter(_event_id(item) for item in items if item.get("kind") == "event")
    counts.duplicate_events_stored += sum(copies - 1 for copies in ids.values())
    if seen is not None:
        restarts = sum(1 for item in items if item.get("type") == "restarted")
        counts.duplicate_events_seen += len(seen) - (len(ids) + restarts)


def count_marks(counts: ChaosCounts, marks: Path) -> list[int]:
    """Add the ``mark`` calls that ran more than once (each line of ``marks`` is one run)."""
    runs = [int(line) for line in marks.read_text().split()] if marks.exists() else []
    counts.reexecuted_side_effects += len(runs) - len(set(runs))
    return runs


def _event_id(item: dict[str, Any]) -> object:
    """An event's stable id; an entry written without one is identified by its content."""
    if "seq" in item:
        return (item.get("attempt"), item["seq"])
    return json.dumps(item, sort_keys=True)
