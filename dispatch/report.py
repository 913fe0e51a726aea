"""BatchReport: what one batch did, job by job and level by level, for ``rho-agent report``.

A report is built from the results file ``rho-agent dispatch`` writes (any mode: the map's result
lines, then the reduce's line with its levels and reducer jobs), or, on a fleet, from the jobs
labelled with the batch id (``batch=<id>``: the map's jobs when ``dispatch --reduce`` sent them,
and every reduce job). ``dispatch.report_html`` renders it as one self-contained page.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatch.errors import FleetError
from dispatch.info import JobInfo
from dispatch.table import flatten

if TYPE_CHECKING:
    from dispatch.dispatcher import Dispatcher

LEVEL_ORDER = {"map": 0, "final": 10_000}


@dataclass
class JobRow:
    """One job of the batch: where it sits in the tree, how it ended, what it cost."""

    job_id: str
    level: str
    status: str
    cost_usd: float = 0.0
    duration_s: float | None = None
    worker: str | None = None
    error: str | None = None
    part: str = ""
    inputs: int = 0
    output: Any = None


@dataclass
class LevelRow:
    """One level: how many jobs, how many failed, what they cost together."""

    name: str
    jobs: int
    failed: int
    cost_usd: float


@dataclass
class BatchReport:
    """A batch's jobs (map first, then each reduce level), its levels and its final answer."""

    batch_id: str
    rows: list[JobRow]
    final: dict[str, Any] | None = None
    levels: list[LevelRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows.sort(key=lambda row: (_level_rank(row.level), _part_rank(row.part)))
        if not self.levels:
            self.levels = _levels(self.rows)

    @property
    def cost_usd(self) -> float:
        return sum(row.cost_usd for row in self.rows)

    def table(self) -> tuple[list[str], list[dict[str, Any]]]:
        """The map's typed results as columns and flat rows (dotted names), for sorting."""
        rows = [
            {"job_id": row.job_id, "status": row.status, **flatten(row.output)}
            for row in self.rows
            if row.level == "map" and row.output is not None
        ]
        names: dict[str, None] = {}
        for item in rows:
            names.update(dict.fromkeys(item))
        return list(names), rows

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "cost_usd": round(self.cost_usd, 6),
            "levels": [asdict(level) for level in self.levels],
            "jobs": [asdict(row) for row in self.rows],
            "final": self.final,
        }


def row_of_info(info: JobInfo, output: Any = None) -> JobRow:
    """A job's row from its stored metadata (and its typed output, if read)."""
    labels = info.labels
    return JobRow(
        job_id=info.job_id,
        level=labels.get("level", "map"),
        status=info.status,
        cost_usd=info.cost_usd,
        duration_s=info.duration_s,
        worker=info.worker,
        error=info.error,
        part=labels.get("part", ""),
        inputs=int(labels.get("inputs") or 0),
        output=output,
    )


def report_from_file(path: Path) -> BatchReport:
    """The report of a results file written by ``rho-agent dispatch`` (with or without reduce)."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise FleetError(f"cannot read results file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FleetError(f"{path} is not a results file: it is not UTF-8 text") from None
    rows: list[JobRow] = []
    reduce: dict[str, Any] | None = None
    reduce_rows: list[JobRow] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise FleetError(f"{path} is not a results file (JSON lines): {exc.msg}") from None
        try:
            if not line.get("reduce"):
                rows.append(_row_of_line(line))
            elif reduce is None:
                reduce_rows = [JobRow(**job) for job in line.get("jobs", [])]
                reduce = {**line, "batch_id": str(line["batch_id"])}
        except (AttributeError, KeyError, TypeError, ValueError):
            raise FleetError(
                f"{path}: line {number} is not a result written by rho-agent dispatch"
            ) from None
    batch_id = reduce["batch_id"] if reduce else path.stem
    final = None
    if reduce is not None:
        final = {key: reduce.get(key) for key in ("status", "output", "text", "error")}
    return BatchReport(batch_id, rows + reduce_rows, final)


def report_from_fleet(dispatcher: Dispatcher, batch_id: str, scan: int) -> BatchReport:
    """The report of the jobs labelled ``batch=<batch_id>`` among the ``scan`` most recent."""
    infos = [
        info
        for info in dispatcher.infos([job.job_id for job in dispatcher.jobs(scan)])
        if info is not None and info.labels.get("batch") == batch_id
    ]
    if not infos:
        raise FleetError(
            f"no job of batch {batch_id} among the {scan} most recent jobs; check the id, or "
            "look further back with --scan N, or report from the results file instead"
        )
    finished = [info for info in infos if info.finished]
    results = dispatcher.gather([dispatcher.job(info.job_id) for info in finished], timeout=30)
    outputs = {
        info.job_id: r.to_dict()["output"] for info, r in zip(finished, results, strict=True)
    }
    rows = [row_of_info(info, outputs.get(info.job_id)) for info in infos]
    final_row = next((row for row in rows if row.level == "final"), None)
    final = None
    if final_row is not None:
        final = {"status": final_row.status, "output": final_row.output, "error": final_row.error}
    return BatchReport(batch_id, rows, final)


def _row_of_line(line: dict[str, Any]) -> JobRow:
    labels = line.get("labels") or {}
    usage = line.get("usage") or {}
    return JobRow(
        job_id=str(line.get("job_id")),
        level=str(labels.get("level", "map")),
        status=str(line.get("status")),
        cost_usd=float(usage.get("cost_usd") or 0.0),
        duration_s=line.get("duration_s"),
        worker=line.get("worker"),
        error=line.get("error"),
        output=line.get("output"),
    )


def _level_rank(level: str) -> int:
    if level in LEVEL_ORDER:
        return LEVEL_ORDER[level]
    digits = level.removeprefix("reduce-")
    return int(digits) if digits.isdigit() else 9_999


def _part_rank(part: str) -> int:
    head = part.split("/", 1)[0]
    return int(head) if head.isdigit() else 0


def _levels(rows: list[JobRow]) -> list[LevelRow]:
    levels: dict[str, LevelRow] = {}
    for row in rows:
        level = levels.setdefault(row.level, LevelRow(row.level, 0, 0, 0.0))
        level.jobs += 1
        level.failed += row.status != "completed"
        level.cost_usd += row.cost_usd
    return list(levels.values())
