"""Run rho-agent's benchmark suite: ``python tests/bench/run.py [--quick] [--out FILE] [--only K]``.

Each benchmark measures the project against a baseline taken in the same run on this machine and
prints a table of figures and ratios; ``--out`` writes the rows as a JSON list, one object per
figure. See docs/benchmarks.md for what each benchmark measures and the latest figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from tests.bench.harness import Benchmark, Row

REPO_ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    # Imported here: run as a script, the repository root is on sys.path only from now on.
    from tests.bench.harness import Settings, machine
    from tests.bench.registry import BENCHMARKS

    args = _parser().parse_args(argv)
    chosen = _select(BENCHMARKS, args.only)
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # logs and pipes: no wrapping of the table
    about = machine()
    console.print(f"[bold]rho-agent benchmarks[/] ({'quick' if args.quick else 'full'}): {about}")
    rows: list[Row] = []
    failed: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rho-bench-") as workdir:
        for benchmark in chosen:
            console.print(f"running {benchmark.key}. {benchmark.title} ...")
            settings = Settings(quick=args.quick, workdir=workdir)
            try:
                rows.extend(benchmark.run(settings))
            except Exception:
                failed.append(benchmark.key)
                console.print(
                    f"[red]benchmark {benchmark.key} failed:[/]\n{traceback.format_exc()}"
                )
    console.print(_table(rows, time.monotonic() - started))
    if args.out is not None:
        payload = [row.as_json(about) for row in rows]
        args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {len(payload)} results to {args.out}")
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="rho-agent benchmarks against in-run baselines.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under 3 minutes)")
    parser.add_argument("--out", type=Path, help="write the results to this JSON file")
    parser.add_argument(
        "--only", action="append", metavar="KEY", help="run only this benchmark (repeatable)"
    )
    return parser


def _select(benchmarks: tuple[Benchmark, ...], only: list[str] | None) -> list[Benchmark]:
    if not only:
        return list(benchmarks)
    known = {benchmark.key for benchmark in benchmarks}
    unknown = sorted(set(only) - known)
    if unknown:
        raise SystemExit(
            f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
        )
    return [benchmark for benchmark in benchmarks if benchmark.key in only]


def _table(rows: list[Row], seconds: float) -> Table:
    table = Table(title=f"rho-agent benchmarks ({seconds:.0f} s)")
    for column in ("benchmark", "figure", "baseline", "ratio", "target", "met"):
        table.add_column(column, justify="left" if column in ("benchmark", "target") else "right")
    for row in rows:
        table.add_row(
            row.name,
            f"{_number(row.figure)} {row.unit}",
            "-"
            if row.baseline is None
            else f"{row.baseline_bound}{_number(row.baseline)} {row.unit}",
            "-" if row.ratio is None else f"{row.ratio:.2f}x",
            row.target,
            {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[row.met],
        )
    return table


def _baseline(row: Row) -> str:
    if row.baseline is None:
        return "-"
    return f"{row.baseline_bound}{_number(row.baseline)} {row.unit}"


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


if __name__ == "__main__":
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
