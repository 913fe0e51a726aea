"""``rho-agent fleet up`` (a whole fleet on this machine) and ``rho-agent fleet status``.

Thin wrappers over ``workers.ops.local_fleet`` and ``workers.ops.status``, imported lazily so the
rest of the CLI works without the ``fleet`` extra.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rho_agent.cli import _exit
from rho_agent.cli._tables import JsonFlag, print_json, print_table

if TYPE_CHECKING:
    from workers.ops.local_fleet import Child, Endpoints, LocalFleet
    from workers.ops.status import FleetStatus

commands = typer.Typer()
"""This module's commands, merged into the ``rho-agent`` app by ``rho_agent.cli.app``."""

fleet_app = typer.Typer(
    name="fleet", help="Run a fleet on this machine, and see how a fleet is doing.",
    no_args_is_help=True,
)  # fmt: skip
commands.add_typer(fleet_app, name="fleet")

_err = Console(stderr=True, highlight=False)


class _Interrupts:
    """Ctrl+C or SIGTERM once: stop gracefully. Again while stopping: hand jobs back now."""

    def __init__(self) -> None:
        self.count = 0
        self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def arm(self) -> None:
        for sig in self._previous:
            signal.signal(sig, self._interrupt)

    def stopping(self) -> None:
        for sig in self._previous:
            signal.signal(sig, self._again)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def hurry(self) -> bool:
        return self.count > 1

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        raise KeyboardInterrupt

    def _again(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        print("handing running jobs back to the queue now...", flush=True)


@fleet_app.command("up")
def up(
    workers: Annotated[int, typer.Option(help="Worker processes to start.")] = 2,
    concurrency: Annotated[int, typer.Option(help="Jobs each worker runs at once.")] = 100,
    redis_port: Annotated[
        int, typer.Option(help="Use the Redis on this port, or start one there.")
    ] = 6379,
    broker: Annotated[
        str | None,
        typer.Option("--broker", help="Use the Redis at this URL (no redis-server is started)."),
    ] = None,
    flower_port: Annotated[int, typer.Option(help="Flower's port (0: any free port).")] = 5555,
    flower: Annotated[bool, typer.Option(help="Start Flower.")] = True,
    run_dir: Annotated[
        Path | None, typer.Option(help="Directory for logs and health files (default: new temp).")
    ] = None,
) -> None:
    """Start Redis (if none answers), workers and Flower on 127.0.0.1; Ctrl+C stops them all."""
    from workers.ops.local_fleet import LocalFleet, LocalFleetOptions

    interrupts = _Interrupts()
    with _exit.one_line_errors():
        options = LocalFleetOptions(
            workers=workers,
            concurrency=concurrency,
            redis_port=redis_port,
            broker_url=broker,
            flower_port=flower_port if flower else None,
            run_dir=run_dir,
        )
        fleet = LocalFleet(options)
        interrupts.arm()
        try:
            dead = _run(fleet)
        finally:
            interrupts.stopping()
            print("stopping the fleet (Ctrl+C again: hand running jobs back now)...", flush=True)
            fleet.stop(hurry=interrupts.hurry)
            interrupts.restore()
            print("fleet stopped.", flush=True)
    if dead is not None:
        _err.print(
            f"[red]error:[/] {dead.name} exited with code {dead.process.returncode}; "
            f"the end of {escape(str(dead.log))}:\n{escape(dead.tail())}"
        )
        raise typer.Exit(1)


def _run(fleet: LocalFleet) -> Child | None:
    """Start, say where to look, and supervise: restart workers that exit (with backoff, up to
    a limit); the child that could not be kept running, or None after Ctrl+C."""
    try:
        _print_endpoints(fleet.start(), fleet)
        while (dead := fleet.supervise(lambda line: print(line, flush=True))) is None:
            time.sleep(0.5)
        return dead
    except KeyboardInterrupt:
        return None


def _print_endpoints(endpoints: Endpoints, fleet: LocalFleet) -> None:
    redis_note = "started here; nothing is saved" if endpoints.started_redis else "already running"
    logs = ", ".join(child.log.name for child in fleet.children)
    lines = [
        f"rho-agent fleet is up: {len(endpoints.worker_names)} workers "
        f"({fleet.options.concurrency} jobs each) on 127.0.0.1",
        f"  broker  {endpoints.broker_url}  ({redis_note})",
        f"  flower  {endpoints.flower_url or '(not started)'}",
        f"  logs    {endpoints.run_dir}  ({logs})",
        f"  health  python -m workers.health --dir {endpoints.run_dir / 'health'}",
        "From another terminal:",
        f"  export RHO_AGENT_BROKER_URL={endpoints.broker_url}",
        "  rho-agent fleet status",
        "  rho-agent dispatch prompts.jsonl",
        f"Ctrl+C stops everything (running jobs get {fleet.shutdown_grace_s:g} s to finish, then "
        "go back to the queue).",
    ]
    print("\n".join(lines), flush=True)


@fleet_app.command("status")
def status(
    broker: _exit.BrokerOption = None,
    as_json: JsonFlag = False,
    limit: Annotated[int, typer.Option(help="Show at most this many jobs in flight.")] = 50,
) -> None:
    """Show the fleet's workers (and any that stopped heartbeating), queue depth and jobs."""
    from dispatch.settings import FleetSettings
    from workers.ops.status import read_status

    with _exit.one_line_errors():
        report = read_status(FleetSettings.from_env(broker_url=broker), limit=limit)
    if as_json:
        print_json(report.to_dict())
        return
    _print_status(report)


def _print_status(report: FleetStatus) -> None:
    out = Console()
    silent = sum(worker.silent for worker in report.workers)
    out.print(
        f"[bold]{escape(report.broker)}[/] · queue [bold]{escape(report.queue)}[/]: "
        f"{report.queued} waiting · "
        f"{len(report.in_flight)} in flight · {len(report.workers) - silent} workers live"
        + (f" · [red]{silent} silent[/]" if silent else "")
    )
    workers = Table(
        "worker", "host", "pid", "jobs", "last beat", "restarts", "health", title="workers"
    )
    for worker in report.workers:
        health = worker.health
        style = "red" if worker.silent or health.startswith("not") else ""
        workers.add_row(
            Text(worker.name),
            Text(worker.host),
            str(worker.pid),
            str(worker.jobs),
            f"{worker.beat_age_s:.0f}s ago",
            str(worker.restarts),
            Text(health, style=style),
        )
    if report.workers:
        print_table(out, workers)
    else:
        out.print("no worker has sent a heartbeat")
    if report.in_flight:
        jobs = Table("job", "status", "worker", "attempt", "turns", "age", "prompt", title="jobs")
        for job in report.in_flight:
            jobs.add_row(
                Text(job.job_id),
                job.status,
                Text(job.worker or "-"),
                str(job.attempt),
                str(job.turns),
                f"{job.age_s:.0f}s",
                Text(" ".join(job.prompt.split())),
            )
        print_table(out, jobs)
