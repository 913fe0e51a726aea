"""Typed results as a flat table: one row per job, nested output fields named with dots.

``rho-agent dispatch --format csv|jsonl`` writes it, and ``rho-agent report`` shows it. A field
``finding.lines`` holds ``{"finding": {"lines": ...}}``; a list is kept whole (as JSON in a CSV
cell), since its length differs from row to row. Columns are the union over all rows, in the
order they first appear, after the job's own columns.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from rho_agent.events import RunResult, output_data

if TYPE_CHECKING:
    from dispatch.batch_run import TextSink

TableFormat = Literal["csv", "jsonl"]
JOB_COLUMNS = ("job_id", "status", "error")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1]}`` -> ``{"a.b": 1, "c": [1]}``; a non-object is one column."""
    if not isinstance(data, dict):
        return {prefix or "output": data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def result_rows(job_ids: Sequence[str], results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One flat row per job: id, status, error, then its output's fields (or its text)."""
    rows = []
    for job_id, result in zip(job_ids, results, strict=True):
        row: dict[str, Any] = {
            "job_id": job_id,
            "status": result.status,
            "error": str(result.error) if result.error is not None else None,
        }
        output = output_data(result.output)
        if output is not None:
            row.update(flatten(output))
        elif result.status == "completed":
            row["text"] = result.text
        rows.append(row)
    return rows


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every column of ``rows``, the job's own first, the others as they first appear."""
    names = dict.fromkeys(JOB_COLUMNS)
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def write_table(rows: Sequence[dict[str, Any]], sink: TextSink, fmt: TableFormat) -> None:
    """Write ``rows`` as CSV (a header, then one line per row) or as JSON lines."""
    if fmt == "jsonl":
        for row in rows:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    names = columns(rows)
    writer = csv.writer(sink, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_cell(row.get(name)) for name in names])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
