"""Fleet commands: ``dispatch FILE``, ``watch JOB_ID``, ``jobs``, ``worker`` and ``flower``.

Thin wrappers: the logic lives in ``dispatch`` (batch files, jobs, events) and ``workers`` (the
Celery app), imported lazily so the rest of the CLI works without the ``fleet`` extra.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rho_agent.errors import RhoAgentError

if TYPE_CHECKING:
    from dispatch import Dispatcher, JobInfo
    from dispatch.batch import BatchProgress
    from rho_agent.events import AgentEvent

commands = typer.Typer()
"""This module's commands, merged into the ``rho-agent`` app by ``rho_agent.cli.app``."""

Broker = Annotated[
    str | None,
    typer.Option("--broker", help="Redis URL of the fleet (default: $RHO_AGENT_BROKER_URL)."),
]
_err = Console(stderr=True)


@contextmanager
def _fleet_errors() -> Iterator[None]:
    """Show rho-agent's own errors as one red line and exit 2, without a traceback."""
    try:
        yield
    except RhoAgentError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _dispatcher(broker: str | None, *, need_fleet: bool = False) -> Dispatcher:
    from dispatch import Dispatcher

    dispatcher = Dispatcher(broker)
    if need_fleet and dispatcher.mode != "fleet":
        dispatcher.close()
        _err.print(
            "[red]error:[/] this command needs a fleet: pass --broker redis://... or set "
            "RHO_AGENT_BROKER_URL (embedded jobs live only in the process that ran them)"
        )
        raise typer.Exit(2)
    return dispatcher


@commands.command("dispatch")
def dispatch_batch(
    file: Annotated[Path, typer.Argument(help="Batch file: .jsonl (one entry per line) or .yaml.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Agent config YAML for every entry.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="JSONL results file (default: stdout)."),
    ] = None,
    broker: Broker = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Embedded mode: jobs run at once in this process.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model for entries that name none.")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible API URL (vLLM, Ollama...).")
    ] = None,
    offline: Annotated[
        bool, typer.Option(help="Use the built-in scripted model (no API key needed).")
    ] = False,
) -> None:
    """Run every entry of a batch file, with live progress; exit 1 if any job failed.

    With no OPENAI_API_KEY and no --base-url the batch runs in offline mode, against the
    project's scripted model server.
    """
    from dispatch import Dispatcher
    from dispatch.batch import load_batch, run_batch
    from rho_agent.cli._offline import offline_model, should_go_offline
    from rho_agent.config import AgentConfig

    with _fleet_errors(), ExitStack() as stack:
        base = AgentConfig.from_file(config) if config else AgentConfig()
        if model is not None:
            base.model = model
        if base_url is not None:
            base.base_url = base_url
        if should_go_offline(offline=offline, base_url=base.base_url):
            base.base_url = stack.enter_context(offline_model(_err))
        specs = load_batch(file, base)
        sink: IO[str] = output.open("w", encoding="utf-8") if output else sys.stdout
        try:
            with Dispatcher(broker, concurrency=concurrency) as dispatcher, _progress() as bar:
                task = bar.add_task(f"{dispatcher.mode}", total=len(specs), stats="")

                def show(progress: BatchProgress) -> None:
                    bar.update(task, completed=progress.finished, stats=_stats(progress))

                outcome = run_batch(dispatcher, specs, on_progress=show, output=sink)
        finally:
            if output:
                sink.close()
    done = outcome.progress
    _err.print(f"{done.completed} completed, {done.failed} failed; {_stats(done)}")
    if not outcome.ok:
        raise typer.Exit(1)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=_err,
    )


def _stats(progress: BatchProgress) -> str:
    return (
        f"failed {progress.failed} · running {progress.running} · "
        f"tokens {progress.input_tokens + progress.output_tokens:,} · "
        f"${progress.cost_usd:.4f}"
    )


@commands.command("watch")
def watch(
    job_id: Annotated[str, typer.Argument(help="Job id, as `rho-agent jobs` lists it.")],
    broker: Broker = None,
) -> None:
    """Follow a fleet job's events live, from its first event to its end."""
    with _fleet_errors(), _dispatcher(broker, need_fleet=True) as dispatcher:
        job = dispatcher.job(job_id)
        out = Console()
        for event in job.events():
            _show_event(out, event)
        info = job.info()
    out.print()
    out.print(
        f"[bold]{info.status}[/] · {info.turns} turns · "
        f"{info.input_tokens + info.output_tokens:,} tokens · ${info.cost_usd:.4f} · "
        f"worker {info.worker or '-'} · attempt {info.attempt}"
    )
    if info.error:
        out.print(f"[red]{info.error}[/]")


def _show_event(out: Console, event: AgentEvent) -> None:
    if event.type == "text":
        out.print(event.content or "", end="", highlight=False, markup=False)
    elif event.type == "tool_start":
        out.print(f"\n[cyan]→ {event.tool_name}[/] {event.tool_args or {}}", highlight=False)
    elif event.type == "tool_end":
        result = (event.tool_result or "").strip().splitlines()
        out.print(f"[dim]  ← {result[0][:120] if result else '(no output)'}[/]", highlight=False)
    elif event.type in ("error", "cancelled", "tool_blocked", "max_turns", "interruption"):
        out.print(f"\n[yellow]{event.type}[/] {event.content or event.tool_name or ''}")
    elif event.type == "job_restarted":
        out.print(f"\n[magenta]↻ {event.content}[/]")


@commands.command("jobs")
def jobs(
    broker: Broker = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show at most this many.")] = 20,
) -> None:
    """List the fleet's most recent jobs with live progress (turns, tokens, cost)."""
    with _fleet_errors(), _dispatcher(broker, need_fleet=True) as dispatcher:
        infos = dispatcher.jobs(limit)
    table = Table(
        "job", "status", "model", "profile", "turns", "tokens", "cost", "worker", "age", "prompt"
    )
    now = time.time()
    for info in infos:
        table.add_row(*_job_row(info, now))
    Console().print(table)


def _job_row(info: JobInfo, now: float) -> list[str]:
    age = now - info.submitted_at if info.submitted_at else 0.0
    return [
        info.job_id,
        info.status,
        info.model,
        info.profile,
        str(info.turns),
        f"{info.input_tokens + info.output_tokens:,}",
        f"${info.cost_usd:.4f}",
        info.worker or "-",
        f"{age:.0f}s" if age < 120 else f"{age / 60:.0f}m",
        info.prompt[:40],
    ]


@commands.command("worker")
def worker(
    broker: Broker = None,
    concurrency: Annotated[
        int | None,
        typer.Option(help="Jobs at once ($RHO_AGENT_WORKER_CONCURRENCY, 500)."),
    ] = None,
    max_profile: Annotated[
        str | None, typer.Option(help="Most permissive profile to run ($RHO_AGENT_MAX_PROFILE).")
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Queue to consume ($RHO_AGENT_QUEUE).")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Start a fleet worker (the same as `celery -A workers worker`)."""
    from workers.ops.launch import run_worker

    _set_env(
        RHO_AGENT_BROKER_URL=broker,
        RHO_AGENT_WORKER_CONCURRENCY=None if concurrency is None else str(concurrency),
        RHO_AGENT_MAX_PROFILE=max_profile,
        RHO_AGENT_QUEUE=queue,
    )
    with _fleet_errors():
        run_worker(loglevel=loglevel)


@commands.command("flower")
def flower(
    broker: Broker = None,
    port: Annotated[int, typer.Option(help="Port of the web UI.")] = 5555,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Open Flower on the fleet (the same as `celery -A workers flower`)."""
    from workers.ops.launch import run_flower

    _set_env(RHO_AGENT_BROKER_URL=broker)
    with _fleet_errors():
        run_flower(port=port, address=address)


def _set_env(**values: str | None) -> None:
    for name, value in values.items():
        if value is not None:
            os.environ[name] = value
