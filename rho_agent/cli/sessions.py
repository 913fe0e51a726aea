"""``rho-agent sessions``: list stored sessions, show one as a transcript, export one as JSON.

The sessions are read from a directory store (``--dir``, or the default directory), or from the
fleet's Redis (``--broker``, or ``$RHO_AGENT_BROKER_URL`` when ``--dir`` is not given), where
dispatched jobs keep theirs: the same three commands work on both.
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, NoReturn, Protocol, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dispatch.errors import FleetUnavailable
from dispatch.settings import BROKER_URL
from rho_agent.cli import _exit
from rho_agent.cli._tables import JsonFlag, print_json, print_table
from rho_agent.errors import RhoAgentError
from rho_agent.state import State
from rho_agent.store.directory import SessionInfo, SessionStore
from rho_agent.store.export import export_session
from rho_agent.trace import Record

commands = typer.Typer()
"""This module's commands, merged into the ``rho-agent`` app by ``rho_agent.cli.app``."""

sessions_app = typer.Typer(
    help="List, show and export stored sessions (resume one with `rho-agent run --resume ID`).",
    no_args_is_help=False,
)
commands.add_typer(sessions_app, name="sessions")

T = TypeVar("T")
StoreDir = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Sessions directory (default: $RHO_AGENT_SESSIONS_DIR or "
        "~/.config/rho-agent/sessions).",
    ),
]
Broker = Annotated[
    str | None,
    typer.Option(
        "--broker",
        help="Read the fleet's sessions from this Redis URL (default: $RHO_AGENT_BROKER_URL, "
        "unless --dir is given).",
    ),
]
SessionId = Annotated[str, typer.Argument(help="Session id, as `rho-agent sessions` lists it.")]

_STATUS_STYLE = {
    "completed": "green",
    "running": "cyan",
    "idle": "dim",
    "interrupted": "yellow",
    "cancelled": "yellow",
    "max_turns": "yellow",
    "budget_exceeded": "yellow",
    "error": "red",
    "crashed": "red",
}


@sessions_app.callback(invoke_without_command=True)
def list_sessions(
    ctx: typer.Context,
    directory: StoreDir = None,
    broker: Broker = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show at most this many.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List stored sessions, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    with _opened(directory, broker) as (store, where):
        infos = _guarded(store.list)[: max(limit, 0)]
    if as_json:
        print_json([asdict(info) for info in infos])
        return
    console = Console()
    if not infos:
        console.print(Text(f"No sessions in {where}."))
        return
    print_table(console, _sessions_table(infos))


class _Store(Protocol):
    """What these commands read: both ``SessionStore`` and ``RedisSessionStore`` offer it."""

    def list(self) -> builtins.list[SessionInfo]: ...
    def info(self, session_id: str) -> SessionInfo: ...
    def load_state(self, session_id: str) -> State: ...


@contextmanager
def _opened(directory: Path | None, broker: str | None) -> Iterator[tuple[_Store, str]]:
    """The store to read and how to name it: ``--dir``, else the fleet's Redis if a broker is
    given or set, else the default directory."""
    if directory is not None and broker is not None:
        _fail(
            "give --dir (a sessions directory) or --broker (the fleet's Redis), not both",
            _exit.USAGE,
        )
    url = broker or (None if directory is not None else BROKER_URL.value(os.environ))
    if not url:
        store = SessionStore(directory)
        yield store, str(store.path)
        return
    from dispatch.fleet.celery_broker import require_fleet_extra

    try:
        require_fleet_extra()
    except FleetUnavailable as exc:
        _fail(str(exc), _exit.USAGE)
    from dispatch.fleet.session_store import RedisSessionStore

    fleet = _guarded(lambda: RedisSessionStore(url))
    try:
        yield fleet, "the fleet's Redis"
    finally:
        fleet.close()


def _sessions_table(infos: list[SessionInfo]) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for header in ("ID", "Status", "Created", "Model"):
        table.add_column(header)
    table.add_column("First prompt", max_width=60)
    for info in infos:
        created = info.created_at.astimezone().strftime("%Y-%m-%d %H:%M")
        status = Text(info.status, style=_STATUS_STYLE.get(info.status, ""))
        cells = (info.id, created, info.model, _one_line(info.first_prompt))
        ident, created_text, model, prompt = (Text(cell) for cell in cells)
        table.add_row(ident, status, created_text, model, prompt)
    return table


@sessions_app.command("show")
def show_session(
    session_id: SessionId,
    directory: StoreDir = None,
    broker: Broker = None,
    full: Annotated[bool, typer.Option(help="Do not shorten tool arguments and results.")] = False,
) -> None:
    """Print a session as a readable transcript, with usage and cost."""
    with _opened(directory, broker) as (store, _):
        state = _guarded(lambda: store.load_state(session_id))
        info = _guarded(lambda: store.info(session_id))
    console = Console(highlight=False)
    usage = state.usage
    console.print(Text(f"Session {info.id}", style="bold"))
    console.print(
        Text(
            f"status {info.status} · created {info.created_at.astimezone():%Y-%m-%d %H:%M:%S} · "
            f"model {info.model} · profile {info.profile} · runs {state.run_count}"
        )
    )
    console.print(Text(f"usage {_usage_text(usage)}"), end="\n\n")
    _Transcript(console, limit=None if full else 400).render(state.records)


@sessions_app.command("export")
def export_command(
    session_id: SessionId,
    directory: StoreDir = None,
    broker: Broker = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Export a session as JSON for analysis tools (format: docs/sessions.md)."""
    with _opened(directory, broker) as (store, _):
        state = _guarded(lambda: store.load_state(session_id))
    document = json.dumps(export_session(state), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        typer.echo(document, nl=False)
        return
    _exit.write_output(output, document)
    Console(stderr=True).print(Text(f"wrote {output}"))


class _Transcript:
    """Prints trace records as a conversation (one handler per record type)."""

    def __init__(self, console: Console, *, limit: int | None) -> None:
        self.console = console
        self.limit = limit
        self.tool_names: dict[str, str] = {}
        self.handlers: dict[str, Callable[[Record], None]] = {
            "run_start": self._run_start,
            "run_resume": self._run_resume,
            "message": self._message,
            "tool_end": self._tool_end,
            "tool_blocked": self._tool_blocked,
            "approval_pending": self._approval_pending,
            "model_call": self._model_call,
            "compaction": self._compaction,
            "error": lambda r: self._say("error", "red", str(r.get("message"))),
            "cancelled": lambda r: self._say("cancelled", "yellow", str(r.get("reason", ""))),
            "run_end": self._run_end,
        }

    def render(self, records: list[Record]) -> None:
        for record in records:
            handler = self.handlers.get(str(record.get("type")))
            if handler is not None:
                handler(record)

    def _say(self, label: str, style: str, body: str) -> None:
        line = Text(f"{label}: ", style=style)
        line.append(body)
        self.console.print(line)

    def _short(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if self.limit is None or len(text) <= self.limit:
            return text
        return text[: self.limit] + f"… ({len(text) - self.limit} more characters)"

    def _run_start(self, record: Record) -> None:
        self.console.rule(Text(f"Run {record.get('run', '?')}"), style="dim")

    def _run_resume(self, record: Record) -> None:
        self.console.print(
            Text(f"(run {record.get('run', '?')} resumed after its process stopped)", style="dim")
        )

    def _message(self, record: Record) -> None:
        role = record.get("role")
        content = record.get("content")
        if role == "user":
            self._say("user", "bold blue", str(content))
        elif role == "assistant":
            if content:
                self._say("assistant", "bold green", str(content))
            for call in record.get("tool_calls") or []:
                function = call.get("function") or {}
                self.tool_names[call.get("id", "")] = str(function.get("name"))
                args = self._short(function.get("arguments", ""))
                self.console.print(Text(f"→ {function.get('name')} ", style="cyan") + Text(args))
        elif role == "tool":
            name = self.tool_names.get(str(record.get("tool_call_id")), "tool")
            self.console.print(Text(f"← {name}: ", style="cyan") + Text(self._short(content)))

    def _tool_end(self, record: Record) -> None:
        if not record.get("success", True):
            self._say("tool failed", "red", str(record.get("tool_name")))

    def _tool_blocked(self, record: Record) -> None:
        self._say(f"blocked {record.get('tool_name')}", "yellow", str(record.get("reason")))

    def _approval_pending(self, record: Record) -> None:
        names = ", ".join(str(call.get("tool_name")) for call in record.get("calls") or [])
        self._say("waiting for approval", "yellow", names)

    def _model_call(self, record: Record) -> None:
        usage = {**(record.get("usage") or {}), "cost_usd": record.get("cost_usd", 0.0)}
        self.console.print(Text(f"  model call · {_usage_text(usage)}", style="dim"))

    def _compaction(self, record: Record) -> None:
        before, after = record.get("tokens_before"), record.get("tokens_after")
        label = f"history compacted ({record.get('trigger')}, {before} → {after} tokens)"
        self._say(label, "magenta", self._short(record.get("summary", "")))

    def _run_end(self, record: Record) -> None:
        usage = record.get("usage") or {}
        status = str(record.get("status"))
        style = _STATUS_STYLE.get(status, "")
        line = Text(f"run {status}", style=style)
        line.append(f" · {_usage_text(usage)}", style="dim")
        self.console.print(line, end="\n\n")


def _usage_text(usage: dict[str, Any]) -> str:
    return (
        f"{usage.get('input_tokens', 0)} in ({usage.get('cached_tokens', 0)} cached) / "
        f"{usage.get('output_tokens', 0)} out tokens · ${float(usage.get('cost_usd', 0.0)):.4f}"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _guarded(action: Callable[[], T]) -> T:
    """Run ``action``; a rho-agent error becomes a one-line message and its exit code (3 when
    the fleet's Redis cannot be reached)."""
    try:
        return action()
    except RhoAgentError as exc:
        code, message = _exit.classify(exc)
        _fail(message, code)


def _fail(message: str, code: int) -> NoReturn:
    _exit.report(message)
    raise typer.Exit(code) from None
