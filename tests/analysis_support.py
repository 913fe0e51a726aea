"""A scripted analyst for the map-reduce tests: reviews files, then reduces the reviews.

A map prompt ``Review file NAME`` is answered with a ``Finding``; a file named ``bad-once-*`` is
answered wrongly the first time (fixed after the corrective turn) and ``bad-twice-*`` always
wrongly. A reducer's prompt (results under ``### <id> (<status>)`` lines) is answered with a
``Summary`` computed from what the prompt holds, so the final summary proves which results
reached a reducer. The answers are pure functions of the request, as fleet workers need.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

from pydantic import BaseModel

from rho_agent.testing import ScriptedResponse, structured

ITEM = re.compile(r"^### (\S+) \((completed|FAILED: [a-z_]+)\)\n(.*)$", re.M)


class Finding(BaseModel):
    path: str
    severity: int
    note: str


class Summary(BaseModel):
    count: int
    failed: list[str]
    max_severity: int


def file_names(total: int, bad_once: int = 5, bad_twice: int = 2) -> list[str]:
    names = [f"src/module_{index:04d}.py" for index in range(total - bad_once - bad_twice)]
    names += [f"src/bad-once-{index}.py" for index in range(bad_once)]
    names += [f"src/bad-twice-{index}.py" for index in range(bad_twice)]
    return names


def severity(path: str) -> int:
    return zlib.crc32(path.encode()) % 5 + 1


def analyst(body: dict[str, Any]) -> ScriptedResponse:
    """The model: map answers, corrected answers and reducer summaries."""
    messages = body.get("messages") or []
    users = [m for m in messages if m.get("role") == "user"]
    first = str(users[0].get("content") or "") if users else ""
    corrected = len(users) > 1
    if "### " in first:
        return structured(summarise(first).model_dump())
    path = first.removeprefix("Review file ").strip()
    if "bad-twice" in path or ("bad-once" in path and not corrected):
        return structured({"path": path, "severity": "high", "note": "unsure"})
    note = f"looked at {path}; " + "padding " * 20
    return structured(Finding(path=path, severity=severity(path), note=note).model_dump())


def summarise(prompt: str) -> Summary:
    """What a reducer reads in ``prompt``, summed: map findings and lower summaries alike."""
    count, failed, worst = 0, [], 0
    for match in ITEM.finditer(prompt):
        source, status, body = match.groups()
        if status != "completed":
            count += 1
            failed.append(source)
            continue
        data = json.loads(body)
        if "count" in data:
            count += data["count"]
            failed += data["failed"]
            worst = max(worst, data["max_severity"])
        else:
            count += 1
            worst = max(worst, data["severity"])
    return Summary(count=count, failed=failed, max_severity=worst)
