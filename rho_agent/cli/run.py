"""``rho-agent run``: one local session, streamed to the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from rho_agent.agent import Agent
from rho_agent.cli import _exit
from rho_agent.cli._offline import offline_model, should_go_offline
from rho_agent.config import AgentConfig
from rho_agent.errors import ApprovalInterrupt, ConfigError, RhoAgentError
from rho_agent.events import AgentEvent, RunResult

commands = typer.Typer()
"""This module's commands, merged into the ``rho-agent`` app by ``rho_agent.cli.app``."""

err = Console(stderr=True, highlight=False)


@commands.command()
def run(
    prompt: Annotated[
        str,
        typer.Argument(help="What the agent should do; - reads it from stdin, @FILE from a file."),
    ],
    config: Annotated[Path | None, typer.Option(help="AgentConfig YAML file.")] = None,
    profile: Annotated[
        str | None, typer.Option(help="readonly, developer, unrestricted or a YAML path.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name (default gpt-5-mini).")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible API URL (vLLM, Ollama...).")
    ] = None,
    working_dir: Annotated[
        Path | None, typer.Option(help="Directory the tools work in (in the sandbox for daytona).")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="local or daytona.")] = None,
    upload: Annotated[
        list[str] | None, typer.Option(help="Daytona upload LOCAL:REMOTE (repeatable).")
    ] = None,
    resume: Annotated[str | None, typer.Option(help="Continue the session with this id.")] = None,
    approve: Annotated[
        bool, typer.Option("--approve/--auto-approve", help="Ask before risky tool calls.")
    ] = False,
    offline: Annotated[
        bool, typer.Option(help="Use the built-in scripted model (no API key needed).")
    ] = False,
    context_window: Annotated[
        int | None,
        typer.Option(min=1, help="The model's context window in tokens (for self-hosted models)."),
    ] = None,
) -> None:
    """Run one prompt in a local session and stream the answer.

    Exit codes: 0 completed, 1 the run failed (the reason is printed), 2 usage or config error,
    3 the model endpoint could not be reached.
    """
    try:
        prompt = read_prompt(prompt)
        agent_config = _base_config(config, resume)
        overrides: dict[str, Any] = {
            "profile": profile,
            "model": model,
            "base_url": base_url,
            "working_dir": _working_dir(working_dir, backend),
        }
        for name, value in overrides.items():
            if value is not None:
                setattr(agent_config, name, value)
        if backend is not None or upload:
            agent_config.backend = _backend(backend or "daytona", upload or [], agent_config)
        if approve:
            agent_config.auto_approve = False
        if context_window is not None:
            agent_config.extras["context_window"] = context_window
        with contextlib.ExitStack() as stack:
            if should_go_offline(offline=offline, base_url=agent_config.base_url):
                agent_config.base_url = stack.enter_context(offline_model(err))
            result = asyncio.run(_run(agent_config, prompt, resume))
    except RhoAgentError as exc:
        _exit.report(str(exc))
        raise typer.Exit(_exit.USAGE) from None
    raise typer.Exit(_run_exit_code(result))


def read_prompt(argument: str) -> str:
    """The prompt itself, ``-`` for stdin, or ``@path`` for a file's contents (``@@`` escapes a
    prompt that really starts with ``@``)."""
    if argument == "-":
        text = sys.stdin.read()
        where = "stdin"
    elif argument.startswith("@@"):
        return argument[1:]
    elif argument.startswith("@"):
        path = Path(argument[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise ConfigError(f"cannot read the prompt file {path}: {reason}") from None
        where = str(path)
    else:
        return argument
    if not text.strip():
        raise ConfigError(f"the prompt from {where} is empty")
    return text


def _run_exit_code(result: RunResult) -> int:
    if result.status == "completed":
        return _exit.OK
    if result.error is not None and result.error.message.startswith(_exit.MODEL_UNREACHABLE):
        return _exit.INFRASTRUCTURE
    return _exit.JOBS_FAILED


def _working_dir(path: Path | None, backend: str | None) -> str | None:
    """A local working dir is made absolute; a sandbox path is taken as written."""
    if path is None:
        return None
    return str(path) if backend == "daytona" else str(path.resolve())


def _base_config(path: Path | None, resume: str | None) -> AgentConfig:
    """The config file if given, else the resumed session's own config, else the defaults."""
    if path is not None:
        return AgentConfig.from_file(path)
    if resume is not None:
        from rho_agent.store.directory import SessionStore

        return SessionStore().load_config(resume)
    return AgentConfig()


def _backend(name: str, uploads: list[str], config: AgentConfig) -> Any:
    if name not in ("local", "daytona"):
        raise ConfigError(f"--backend {name!r} is not a backend: use local or daytona")
    if name == "local" and not uploads:
        return "local"
    from rho_agent.backends.daytona.backend import DaytonaBackend

    return DaytonaBackend.from_cli(uploads=uploads, working_dir=config.working_dir)


async def _run(config: AgentConfig, prompt: str, resume: str | None) -> RunResult:
    from rho_agent.store.directory import SessionStore

    store = SessionStore()
    agent = Agent(config)
    session = store.resume(resume, agent) if resume else store.create_session(agent)
    session.approval_callback = _ask_on_terminal
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: asyncio.ensure_future(session.cancel()))
    err.print(Text(f"session {session.state.session_id} · {config.model}", style="dim"))
    try:
        result = await session.run(prompt=prompt, on_event=_show)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await session.close()
    sys.stdout.write("\n")
    usage = result.usage
    err.print(
        f"[dim]{result.status} · {usage.get('input_tokens', 0)} in / "
        f"{usage.get('output_tokens', 0)} out tokens · ${usage.get('cost_usd', 0.0):.4f}[/]"
    )
    return result


def _show(event: AgentEvent) -> None:
    """Print one event; model and tool text goes in as ``Text``, never parsed as markup."""
    if event.type == "text" and event.content:
        sys.stdout.write(event.content)
        sys.stdout.flush()
    elif event.type == "tool_start":
        err.print(Text.assemble("\n", (f"→ {event.tool_name} ", "cyan"), _dim(event.tool_args)))
    elif event.type == "tool_end":
        ok = (event.tool_metadata or {}).get("success", True)
        mark = ("✓ ", "green") if ok else ("✗ ", "red")
        err.print(Text.assemble(mark, _dim(event.tool_result)))
    elif event.type == "tool_blocked":
        err.print(
            Text.assemble((f"⊘ {event.tool_name} blocked: ", "yellow"), event.tool_result or "")
        )
    elif event.type in ("error", "cancelled", "interruption", "max_turns", "budget_exceeded"):
        err.print(Text.assemble("\n", (f"{event.type}: ", "red"), event.content or ""))
    elif event.type == "compact_end":
        err.print("[dim](history compacted)[/]")


async def _ask_on_terminal(tool_name: str, tool_args: dict[str, Any]) -> bool:
    if not sys.stdin.isatty():
        raise ApprovalInterrupt(f"{tool_name} needs approval and the terminal is not interactive")
    question = f"Allow {tool_name} {_short(tool_args)}?"
    return await asyncio.to_thread(typer.confirm, question, default=False, err=True)


def _dim(value: object) -> Text:
    return Text(_short(value), style="dim")


def _short(value: object, limit: int = 160) -> str:
    text = str(value if value is not None else "").replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
