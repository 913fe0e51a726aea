"""Fleet commands: ``dispatch FILE``, ``watch JOB_ID``, ``jobs``, ``budgets``, ``worker`` and
``flower``.

Thin wrappers: the logic lives in ``dispatch`` (batch files, jobs, events) and ``workers`` (the
Celery app), imported lazily so the rest of the CLI works without the ``fleet`` extra.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from rho_agent.cli import _exit
from rho_agent.cli._results_file import ResultsFile
from rho_agent.cli._tables import JsonFlag, print_json, print_table
from rho_agent.config import AgentConfig
from rho_agent.errors import ConfigError

if TYPE_CHECKING:
    from dispatch import Dispatcher, JobInfo
    from dispatch.batch_run import BatchProgress, BatchRun
    from rho_agent.budgets import BudgetStatus
    from rho_agent.events import AgentEvent, RunResult

commands = typer.Typer()
"""This module's commands, merged into the ``rho-agent`` app by ``rho_agent.cli.app``."""

_err = Console(stderr=True)


def _dispatcher(broker: str | None, *, need_fleet: bool = False) -> Dispatcher:
    from dispatch import Dispatcher

    dispatcher = Dispatcher(broker)
    if need_fleet and dispatcher.mode != "fleet":
        dispatcher.close()
        _exit.report(
            "this command needs a fleet: pass --broker redis://... or set "
            "RHO_AGENT_BROKER_URL (embedded jobs live only in the process that ran them)"
        )
        raise typer.Exit(_exit.USAGE)
    return dispatcher


@commands.command("dispatch")
def dispatch_batch(
    file: Annotated[Path, typer.Argument(help="Batch file: .jsonl (one entry per line) or .yaml.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Agent config YAML for every entry.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="JSONL results file, replaced only once results exist (default: stdout).",
        ),
    ] = None,
    broker: _exit.BrokerOption = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Embedded mode: jobs run at once in this process.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model for entries that name none.")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible API URL (vLLM, Ollama...).")
    ] = None,
    offline: Annotated[
        bool, typer.Option(help="Embedded mode: use the built-in scripted model (no API key).")
    ] = False,
    schema: Annotated[
        Path | None,
        typer.Option("--schema", help="JSON schema file: every answer is typed and validated."),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="Write typed results as a flat table, csv or jsonl (dotted columns)."
        ),
    ] = None,
    reduce: Annotated[
        str | None,
        typer.Option("--reduce", help="Then reduce every result with this prompt, on the queue."),
    ] = None,
    reduce_schema: Annotated[
        Path | None, typer.Option("--reduce-schema", help="JSON schema of the reduce's answer.")
    ] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option("--max-cost-usd", help="Budget of the whole batch, in USD.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Budget of the whole batch, in tokens.")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="BATCH",
            help="Send only the entries of this batch that did not "
            "complete (follow the ones still running).",
        ),
    ] = None,
) -> None:
    """Run every entry of a batch file, with live progress (exit codes: `rho-agent --help`).

    Embedded mode with no OPENAI_API_KEY and no --base-url runs offline, against the project's
    scripted model server. With a broker the workers' own settings choose the model. See
    docs/analysis.md for --schema, --format and --reduce.
    """
    from dispatch import Dispatcher
    from dispatch.batch import load_batch, with_batch
    from dispatch.batch_run import BatchRun, line_result, new_batch_id
    from dispatch.settings import FleetSettings
    from rho_agent.cli._analysis import Analysis
    from rho_agent.cli._offline import offline_model, should_go_offline
    from rho_agent.output import load_schema_file

    with _exit.one_line_errors(), ExitStack() as stack:
        settings = FleetSettings.from_env(broker_url=broker, embedded_concurrency=concurrency)
        fleet = settings.broker_url is not None
        _check_dispatch_options(
            fleet=fleet, offline=offline, resume=resume, output=output, file=file
        )
        base = _base_config(config, model, base_url)
        if not fleet and should_go_offline(offline=offline, base_url=base.base_url):
            base.base_url = stack.enter_context(offline_model(_err))
        batch_id = resume or new_batch_id()
        analysis = Analysis.from_options(fmt, reduce, reduce_schema, batch_id)
        specs = load_batch(file, base, output_schema=load_schema_file(schema) if schema else None)
        specs = analysis.label(specs)
        specs = with_batch(
            specs, batch_id=batch_id, max_cost_usd=max_cost_usd, max_tokens=max_tokens
        )
        results = ResultsFile(output, batch_id) if output else None
        done = {i: line_result(line) for i, line in results.completed.items()} if results else {}
        dispatcher = stack.enter_context(Dispatcher(settings=settings))
        sink = results.sink if results else sys.stdout
        batch = BatchRun(
            dispatcher,
            len(specs),
            batch_id=batch_id,
            output=None if analysis.table else sink,
            done=done if resume else {},
        )
        _err.print(
            f"batch [bold]{escape(batch_id)}[/] · {dispatcher.mode} · {len(specs)} jobs"
            + (
                f" ({len(done)} already completed in {escape(str(output))})"
                if resume and done
                else ""
            ),
            highlight=False,
        )
        reduced = None
        with _stopping_on_ctrl_c(batch.stop) as interrupted:
            try:
                with _progress() as bar:
                    task = bar.add_task(dispatcher.mode, total=len(specs), stats="")

                    def show(progress: BatchProgress) -> None:
                        bar.update(task, completed=progress.finished, stats=_stats(progress))

                    if resume is not None and fleet:
                        batch.resume(specs)
                    else:
                        batch.start(specs)
                    outcome = batch.wait(show)
                    analysis.write_table(outcome.jobs, outcome.results, sink)
                    if analysis.reduce is not None and not interrupted:
                        budget = {
                            "batch_max_cost_usd": max_cost_usd,
                            "batch_max_tokens": max_tokens,
                        }
                        reduced = analysis.run_reduce(
                            dispatcher, outcome.jobs, base, bar, sink, budget
                        )
            except BaseException as exc:
                _lost_contact(exc, batch, results, file, output)
                raise
        if interrupted and batch.pending and not fleet:
            batch.record_cancelled()
        if results is not None:
            results.commit()
    if interrupted:
        _interrupted_summary(batch, fleet, file, output)
        raise typer.Exit(_exit.INTERRUPTED)
    done_progress = outcome.progress
    _err.print(
        Text(
            f"batch {batch_id}: {done_progress.completed} completed, {done_progress.failed} "
            f"failed · tokens {done_progress.input_tokens + done_progress.output_tokens:,} · "
            f"${done_progress.cost_usd:.4f}"
        )
    )
    if reduced is not None:
        _err.print(Text(f"reduce {batch_id}: {reduced.status}"))
    results_all = outcome.results + ([reduced] if reduced is not None else [])
    raise typer.Exit(_batch_exit_code(results_all))


def _check_dispatch_options(
    *, fleet: bool, offline: bool, resume: str | None, output: Path | None, file: Path
) -> None:
    if output is not None and output.exists() and file.exists() and output.samefile(file):
        raise ConfigError(
            f"-o {output} is the batch file itself, which the results would replace: "
            "write the results to another file"
        )
    if fleet and offline:
        raise ConfigError(
            "--offline runs the scripted model inside this process, which a fleet's workers "
            "do not use: drop --offline (the workers' OPENAI_API_KEY / base URL choose the "
            "model), or drop --broker to run embedded"
        )
    if resume is not None and not fleet and output is None:
        raise ConfigError(
            "--resume in embedded mode needs -o FILE, the results file of that batch: "
            "its completed entries are what is not sent again"
        )


def _base_config(config: Path | None, model: str | None, base_url: str | None) -> AgentConfig:
    """The config every entry starts from: the --config file, then --model and --base-url."""
    base = AgentConfig.from_file(config) if config else AgentConfig()
    if model is not None:
        base.model = model
    if base_url is not None:
        base.base_url = base_url
    return base


@contextmanager
def _stopping_on_ctrl_c(stop: Callable[[], None]) -> Iterator[list[bool]]:
    """The first Ctrl+C asks the batch to stop following (a summary follows); a second one
    interrupts at once. Yields a list that is truthy once Ctrl+C was pressed."""
    pressed: list[bool] = []
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        pressed.append(True)
        stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _lost_contact(
    exc: BaseException,
    batch: BatchRun,
    results: ResultsFile | None,
    file: Path,
    output: Path | None,
) -> None:
    """The batch stopped on an error: keep the old results file, say where the batch stands."""
    kept = results.abandon() if results is not None else None
    if kept is not None:
        _err.print(Text(f"{output} left as it was; the results collected so far are in {kept}"))
    sent = batch.jobs or batch.results
    if sent and isinstance(exc, Exception) and _exit.classify(exc)[0] == _exit.INFRASTRUCTURE:
        out = f" -o {output}" if output else ""
        _err.print(
            f"batch {batch.batch_id}: {batch.progress.finished} of {batch.progress.total} "
            f"finished before the error; the jobs already sent keep running on the fleet. Later: "
            f"`rho-agent results {batch.batch_id}{out}` collects them, "
            f"`rho-agent dispatch {file} --resume {batch.batch_id}{out}` finishes the batch",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def _interrupted_summary(batch: BatchRun, fleet: bool, file: Path, output: Path | None) -> None:
    progress = batch.progress
    out = f" -o {output}" if output else ""
    lines = [
        f"interrupted: batch {batch.batch_id}: {progress.finished} of {progress.total} finished "
        f"({progress.completed} completed, {progress.failed} failed)"
        + (f", written to {output}" if output else "")
    ]
    if fleet and batch.pending:
        lines += [
            f"{len(batch.pending)} jobs are still queued or running on the fleet; they go on.",
            f"  collect their results: rho-agent results {batch.batch_id}{out}",
            f"  finish the batch (send again what failed): "
            f"rho-agent dispatch {file} --resume {batch.batch_id}{out}",
        ]
    elif not fleet and progress.total > progress.finished:
        unfinished = progress.total - progress.finished
        lines += [
            f"{unfinished} jobs that had not finished are recorded as cancelled"
            + (f" in {output}" if output else ""),
            f"  send them again: rho-agent dispatch {file} --resume {batch.batch_id}"
            + (out or " -o FILE"),
        ]
    _err.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


def _batch_exit_code(results: list[RunResult]) -> int:
    """0 all completed; 3 when every failure is the model endpoint being unreachable; else 1."""
    from dispatch.engine.bus import failure_reason

    failed = [result for result in results if result.status != "completed"]
    if not failed:
        return _exit.OK
    reasons = [failure_reason(result) or "" for result in failed]
    if all(_exit.MODEL_UNREACHABLE in reason for reason in reasons):
        return _exit.INFRASTRUCTURE
    return _exit.JOBS_FAILED


@commands.command("results")
def collect_results(
    batch_id: Annotated[str, typer.Argument(help="Batch id, as `rho-agent dispatch` printed it.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="JSONL results file (default: stdout)."),
    ] = None,
    broker: _exit.BrokerOption = None,
    wait: Annotated[bool, typer.Option(help="Wait for the jobs still running.")] = False,
) -> None:
    """Collect the results of a fleet batch, now or later; exit 0 only if all completed.

    With -o, the file's lines of other entries of the same batch are kept.
    """
    from dispatch.batch_run import BatchRun, line_result

    with _exit.one_line_errors(), _dispatcher(broker, need_fleet=True) as dispatcher:
        total, _ = dispatcher.batch_jobs(batch_id)
        results = ResultsFile(output, batch_id) if output else None
        done = {i: line_result(line) for i, line in results.completed.items()} if results else {}
        batch = BatchRun(
            dispatcher,
            total,
            batch_id=batch_id,
            output=results.sink if results else sys.stdout,
            done=done,
        )
        try:
            batch.resume(None)
            if wait:
                batch.wait()
            else:
                batch.poll()
        except BaseException:
            if results is not None:
                results.abandon()
            raise
        if results is not None:
            results.commit()
    progress = batch.progress
    _err.print(
        f"batch {batch_id}: {progress.completed} completed, {progress.failed} failed, "
        f"{len(batch.pending)} still queued or running, {len(batch.unsent)} never sent or "
        "expired" + (f"; written to {output}" if output else ""),
        highlight=False,
        markup=False,
    )
    if batch.unsent:
        _err.print(
            f"send them again: rho-agent dispatch FILE --resume {batch_id}"
            + (f" -o {output}" if output else ""),
            highlight=False,
            markup=False,
        )
    raise typer.Exit(_exit.OK if progress.completed == total else _exit.JOBS_FAILED)


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
    stopped = f" ({progress.budget_exceeded} by budget)" if progress.budget_exceeded else ""
    return (
        f"failed {progress.failed}{stopped} · running {progress.running} · "
        f"tokens {progress.input_tokens + progress.output_tokens:,} · "
        f"${progress.cost_usd:.4f}"
    )


@commands.command("watch")
def watch(
    job_id: Annotated[str, typer.Argument(help="Job id, as `rho-agent jobs` lists it.")],
    broker: _exit.BrokerOption = None,
) -> None:
    """Follow a fleet job's events live, from its first event to its end."""
    with _exit.one_line_errors(), _dispatcher(broker, need_fleet=True) as dispatcher:
        job = dispatcher.job(job_id)
        out = Console()
        for event in job.events():
            _show_event(out, event)
        info = job.info()
    out.print()
    out.print(
        f"[bold]{info.status}[/] · {info.turns} turns · "
        f"{info.input_tokens + info.output_tokens:,} tokens · ${info.cost_usd:.4f} · "
        f"worker {escape(info.worker or '-')} · attempt {info.attempt}"
    )
    if info.error:  # why it did not complete, whole on one line (as text: it may hold brackets)
        out.print(Text(info.error, style="red"), soft_wrap=True)


def _show_event(out: Console, event: AgentEvent) -> None:
    if event.type == "text":
        out.print(event.content or "", end="", highlight=False, markup=False)
    elif event.type == "tool_start":
        out.print(
            f"\n[cyan]→ {escape(event.tool_name or '')}[/] {escape(str(event.tool_args or {}))}",
            highlight=False,
        )
    elif event.type == "tool_end":
        result = (event.tool_result or "").strip().splitlines()
        out.print(Text(f"  ← {result[0][:120] if result else '(no output)'}", style="dim"))
    elif event.type in ("error", "cancelled", "tool_blocked", "max_turns", "interruption"):
        out.print(f"\n[yellow]{event.type}[/] {escape(event.content or event.tool_name or '')}")
    elif event.type == "job_restarted":
        out.print(Text(f"\n↻ {event.content}", style="magenta"))


@commands.command("jobs")
def jobs(
    broker: _exit.BrokerOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show at most this many.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List the fleet's most recent jobs with live progress (turns, tokens, cost) and, for a
    job that failed, why."""
    with _exit.one_line_errors(), _dispatcher(broker, need_fleet=True) as dispatcher:
        infos = dispatcher.jobs(limit)
    if as_json:
        print_json([info.model_dump() for info in infos])
        return
    table = Table(
        "job", "status", "model", "profile", "turns", "tokens", "cost", "worker", "age",
        "prompt", "error",
    )  # fmt: skip
    now = time.time()
    for info in infos:
        table.add_row(*(Text(cell) for cell in _job_row(info, now)))
    print_table(Console(), table)


def _job_row(info: JobInfo, now: float) -> list[str]:
    age = now - info.submitted_at if info.submitted_at else 0.0
    return [
        info.job_id,
        f"{info.status}: {info.waiting}" if info.waiting and not info.finished else info.status,
        info.model,
        info.profile,
        str(info.turns),
        f"{info.input_tokens + info.output_tokens:,}",
        f"${info.cost_usd:.4f}",
        info.worker or "-",
        f"{age:.0f}s" if age < 120 else f"{age / 60:.0f}m",
        " ".join(info.prompt.split())[:60],
        " ".join((info.error or "").split()),
    ]


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@commands.command("worker")
def worker(
    broker: _exit.BrokerOption = None,
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
    from dispatch.settings import BROKER_URL, QUEUE
    from workers.ops.launch import run_worker
    from workers.worker_settings import CONCURRENCY, MAX_PROFILE

    overrides = _given(
        {
            BROKER_URL.name: broker,
            CONCURRENCY.name: None if concurrency is None else str(concurrency),
            MAX_PROFILE.name: max_profile,
            QUEUE.name: queue,
        }
    )
    with _exit.one_line_errors():
        if loglevel.upper() not in _LOG_LEVELS:
            raise ConfigError(
                f"--loglevel {loglevel!r} is not a log level; use one of {', '.join(_LOG_LEVELS)}"
            )
        run_worker(loglevel=loglevel, overrides=overrides)


@commands.command("flower")
def flower(
    broker: _exit.BrokerOption = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the web UI.")] = 5555,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Open Flower on the fleet (the same as `celery -A workers flower`)."""
    from dispatch.settings import BROKER_URL
    from workers.ops.launch import run_flower

    with _exit.one_line_errors():
        run_flower(port=port, address=address, overrides=_given({BROKER_URL.name: broker}))


def _given(flags: dict[str, str | None]) -> dict[str, str]:
    """The settings the command line gave, as variable name to value (unset flags left out).

    They are passed on as overrides, never written into this process's environment.
    """
    return {name: value for name, value in flags.items() if value is not None}


# -- budgets -------------------------------------------------------------------------------------

budgets_app = typer.Typer(help="Spending budgets of the fleet (see docs/budgets.md).")
commands.add_typer(budgets_app, name="budgets")


@budgets_app.callback(invoke_without_command=True)
def list_budgets(
    ctx: typer.Context, broker: _exit.BrokerOption = None, as_json: JsonFlag = False
) -> None:
    """List every budget scope: limit, spent and reserved in its current window."""
    if ctx.invoked_subcommand is not None:
        return
    with _exit.one_line_errors(), _dispatcher(broker, need_fleet=True) as dispatcher:
        statuses = dispatcher.budgets()
    if as_json:
        print_json([status.to_dict() for status in statuses])
        return
    table = Table("scope", "limit", "spent", "reserved", "window", "state")
    for status in statuses:
        table.add_row(*(Text(cell) for cell in _budget_row(status)))
    print_table(Console(), table)


@budgets_app.command("set")
def set_budget(
    scope: Annotated[str, typer.Argument(help="'fleet' or 'label:KEY=VALUE', e.g. label:team=ops")],
    usd: Annotated[float | None, typer.Option("--usd", help="Limit in USD.")] = None,
    tokens: Annotated[int | None, typer.Option("--tokens", help="Limit in tokens.")] = None,
    window: Annotated[
        str | None, typer.Option("--window", help="'1d', '12h', '30m' (default: no window).")
    ] = None,
    broker: _exit.BrokerOption = None,
) -> None:
    """Set (or change) a label or fleet-wide budget; running jobs see it at their next call."""
    from rho_agent.budgets import Budget, parse_window

    with _exit.one_line_errors():
        key, equals, _ = scope.removeprefix("label:").partition("=")
        if scope != "fleet" and not (scope.startswith("label:") and key and equals):
            _exit.report(
                f"budget scope {scope!r}: set budgets for 'fleet' or 'label:KEY=VALUE'; jobs and "
                "batches carry their own (max_cost_usd, --max-cost-usd, batch_max_cost_usd)"
            )
            raise typer.Exit(_exit.USAGE)
        budget = Budget(scope, max_cost_usd=usd, max_tokens=tokens, window_s=parse_window(window))
        with _dispatcher(broker, need_fleet=True) as dispatcher:
            dispatcher.set_budget(budget)
    print_json(budget.to_dict())


def _budget_row(status: BudgetStatus) -> list[str]:
    budget = status.budget
    limits, spent, reserved = [], [], []
    if budget.max_cost_usd is not None:
        limits.append(f"${budget.max_cost_usd:,.4f}")
        spent.append(f"${status.spent_usd:,.4f}")
        reserved.append(f"${status.reserved_usd:,.4f}")
    if budget.max_tokens is not None:
        limits.append(f"{budget.max_tokens:,} tok")
        spent.append(f"{status.spent_tokens:,} tok")
        reserved.append(f"{status.reserved_tokens:,} tok")
    return [
        budget.scope,
        " / ".join(limits),
        " / ".join(spent),
        " / ".join(reserved),
        _budget_window(status),
        "exhausted" if status.exhausted else "open",
    ]


def _budget_window(status: BudgetStatus) -> str:
    if status.budget.window_s is None or status.window_start is None:
        return "-"
    start = time.strftime("%Y-%m-%d %H:%M", time.gmtime(status.window_start))
    return f"{status.budget.window_s}s from {start} UTC"
