"""Run rho-agent's benchmark suite:
``python tests/bench/run.py [--quick] [--out FILE] [--only K] [--redis URL] [--broker URL]``.

Each benchmark measures the project against a baseline taken in the same run on this machine and
prints a table of figures (the median of repeated measurements, with their range) and ratios,
and the load average while it ran; ``--out`` writes the rows as a JSON list, one object per
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
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from dispatch.urls import redact_url

if TYPE_CHECKING:
    from tests.bench.harness import Benchmark, Row

REPO_ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    # Imported here: run as a script, the repository root is on sys.path only from now on.
    from tests.bench.harness import LoadSampler, Settings, machine
    from tests.bench.registry import BENCHMARKS

    args = _parser().parse_args(argv)
    chosen = _select(BENCHMARKS, args.only)
    redis = _redis_server(args.redis)
    broker = None if args.broker is None else _rabbitmq_server(args.broker)
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # logs and pipes: no wrapping of the table
    about = {**machine(), "redis": redis, "broker": redact_url(broker) if broker else redis}
    console.print(f"[bold]rho-agent benchmarks[/] ({'quick' if args.quick else 'full'}): {about}")
    rows: list[Row] = []
    failed: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rho-bench-") as workdir:
        for benchmark in chosen:
            console.print(f"running {benchmark.key}. {benchmark.title} ...")
            settings = Settings(quick=args.quick, workdir=workdir, redis=redis, broker=broker)
            try:
                with LoadSampler() as load:
                    measured = benchmark.run(settings)
                for row in measured:
                    row.load = load.summary()
                rows.extend(measured)
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
    from tests.bench.harness import DEFAULT_REDIS

    parser = argparse.ArgumentParser(description="rho-agent benchmarks against in-run baselines.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under 3 minutes)")
    parser.add_argument("--out", type=Path, help="write the results to this JSON file")
    parser.add_argument(
        "--only", action="append", metavar="KEY", help="run only this benchmark (repeatable)"
    )
    parser.add_argument(
        "--redis",
        default=DEFAULT_REDIS,
        metavar="URL",
        help="the Redis server for benchmarks 3-6 and 11 (no database: each claims a free "
        "database 1-15 on it and flushes it afterwards)",
    )
    parser.add_argument(
        "--broker",
        metavar="URL",
        help="a RabbitMQ server (amqp://user:password@host:port, this machine's node: the vhosts "
        "are made with rabbitmqctl) to carry the jobs of benchmarks 3-6 and 11 and bare "
        "Celery's tasks, each in a fresh vhost; --redis then holds the bus and the results. "
        "Default: --redis carries the jobs too",
    )
    return parser


def _redis_server(url: str) -> str:
    """``url`` as ``redis://host:port``; refuses a database or path, which the suite chooses."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise SystemExit(f"--redis {url!r} is not a redis:// URL; e.g. redis://127.0.0.1:6380")
    if parts.path.strip("/"):
        raise SystemExit(
            f"--redis {url!r} names a database; give the server only (redis://host:port): "
            "each benchmark claims a free database 1-15 of its own"
        )
    return url.rstrip("/")


def _rabbitmq_server(url: str) -> str:
    """``url`` as ``amqp://user:password@host:port``; refuses a vhost, which the suite makes."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps", "pyamqp") or not parts.hostname:
        raise SystemExit(
            f"--broker {redact_url(url)!r} is not an amqp:// URL; "
            "e.g. amqp://guest:guest@127.0.0.1:5672"
        )
    if parts.path.strip("/"):
        raise SystemExit(
            f"--broker {redact_url(url)!r} names a vhost; give the server only "
            "(amqp://user:password@host:port): each benchmark makes fresh vhosts of its own"
        )
    return f"{parts.scheme}://{parts.netloc}"


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
    columns = ("benchmark", "median", "range (n)", "baseline", "ratio", "target", "met", "load")
    for column in columns:
        table.add_column(column, justify="left" if column in ("benchmark", "target") else "right")
    for row in rows:
        if "skipped" in row.details:
            table.add_row(row.name, "skipped", "", "", "", row.details["skipped"], "-", "")
            continue
        table.add_row(
            row.name,
            f"{_number(row.figure)} {row.unit}",
            _range(row.runs),
            _baseline(row),
            "-" if row.ratio is None else f"{row.ratio:.2f}x",
            row.target,
            {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[row.met],
            _load(row.load),
        )
    return table


def _range(runs: list[float]) -> str:
    if not runs:
        return "(1)"
    return f"{_number(min(runs))}-{_number(max(runs))} ({len(runs)})"


def _baseline(row: Row) -> str:
    if row.baseline is None:
        return "-"
    spread = f" [{_range(row.baseline_runs)}]" if len(row.baseline_runs) > 1 else ""
    return f"{row.baseline_bound}{_number(row.baseline)} {row.unit}{spread}"


def _load(load: dict[str, float]) -> str:
    if not load:
        return ""
    return f"{load['median']:.1f} ({load['min']:.1f}-{load['max']:.1f})"


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
