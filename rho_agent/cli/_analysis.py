"""What ``rho-agent dispatch`` adds for analyses: typed results as a table, and a reduce.

``--schema`` types every answer, ``--format csv|jsonl`` writes the typed results as a flat table
instead of full result lines, and ``--reduce PROMPT`` reduces every result with reducer jobs on
the same queue, shown level by level on the same progress display.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.progress import Progress, TaskID

from rho_agent.errors import ConfigError
from rho_agent.output import load_schema_file

if TYPE_CHECKING:
    from dispatch import Dispatcher, Job, JobSpec
    from dispatch.batch_run import TextSink
    from dispatch.table import TableFormat
    from rho_agent.config import AgentConfig
    from rho_agent.events import RunResult

TABLE_FORMATS = ("csv", "jsonl")


@dataclass(frozen=True)
class Analysis:
    """The analysis options of one ``dispatch`` command."""

    table: TableFormat | None = None
    reduce: str | None = None
    reduce_schema: dict[str, Any] | None = None
    batch_id: str = ""

    @classmethod
    def from_options(
        cls, fmt: str | None, reduce: str | None, reduce_schema: Path | None, batch_id: str
    ) -> Analysis:
        if fmt is not None and fmt not in TABLE_FORMATS:
            raise ConfigError(f"--format {fmt!r} is not a table format; use csv or jsonl")
        if reduce is not None and not reduce.strip():
            raise ConfigError(
                "--reduce needs a prompt saying how to combine the results, e.g. "
                "--reduce 'Summarise the findings'"
            )
        if reduce_schema is not None and reduce is None:
            raise ConfigError("--reduce-schema types the reduce's answer: give --reduce too")
        return cls(
            table=cast("TableFormat | None", fmt),
            reduce=reduce,
            reduce_schema=load_schema_file(reduce_schema) if reduce_schema else None,
            batch_id=batch_id if reduce else "",
        )

    def label(self, specs: list[JobSpec]) -> list[JobSpec]:
        """The map's jobs, labelled with the batch id the reduce levels carry too."""
        if not self.batch_id:
            return specs
        return [
            spec.model_copy(
                update={"labels": {**spec.labels, "batch": self.batch_id, "level": "map"}}
            )
            for spec in specs
        ]

    def write_table(self, jobs: list[Job], results: list[RunResult], sink: TextSink) -> None:
        from dispatch.table import result_rows, write_table

        if self.table is not None:
            write_table(result_rows([job.id for job in jobs], results), sink, self.table)
            sink.flush()

    def run_reduce(
        self,
        dispatcher: Dispatcher,
        jobs: list[Job],
        config: AgentConfig,
        bar: Progress,
        sink: TextSink,
        budget: dict[str, float | int | None],
    ) -> RunResult:
        """Reduce the map's results, one progress row per level; write the answer as one line.

        ``budget`` is the batch's (``batch_max_cost_usd``, ``batch_max_tokens``): the reducers
        spend from the same one as the map."""
        from dispatch.report import row_of_info

        assert self.reduce is not None
        reduction = dispatcher.reduce(
            jobs,
            self.reduce,
            config,
            output_schema=self.reduce_schema,
            batch_id=self.batch_id,
            **budget,
        )
        rows: dict[str, TaskID] = {}
        try:
            while not reduction.done():
                _show(bar, rows, reduction.progress())
                time.sleep(0.2)
        except KeyboardInterrupt:
            reduction.cancel()
            raise
        result = reduction.result()
        _show(bar, rows, reduction.progress())
        reducers = [job_id for level in reduction.levels[1:] for job_id in level.job_ids]
        infos = [info for info in dispatcher.infos(reducers) if info is not None]
        line = {
            "batch_id": reduction.id,
            "reduce": True,
            "status": result.status,
            "output": result.to_dict()["output"],
            "text": result.text,
            "error": str(result.error) if result.error is not None else None,
            "levels": [level.to_dict() for level in reduction.levels],
            "jobs": [asdict(row_of_info(info)) for info in infos],
        }
        sink.write(json.dumps(line, ensure_ascii=False) + "\n")
        sink.flush()
        return result


def _show(bar: Progress, rows: dict[str, TaskID], levels: list[tuple[str, int, int]]) -> None:
    for name, done, total in levels:
        if name == "map":
            continue  # the map has its own row already
        if name not in rows:
            rows[name] = bar.add_task(name, total=total, stats="")
        bar.update(rows[name], completed=done)
