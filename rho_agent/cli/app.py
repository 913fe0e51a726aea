"""The Typer application: every command module's commands, merged into one ``rho-agent`` app."""

from __future__ import annotations

from typing import Annotated

import typer

from rho_agent.cli import _exit, approvals, fleet_commands, fleet_ops, report, run, sessions

app = typer.Typer(
    name="rho-agent",
    help="Build and run LLM agents, locally or on a Celery/Redis fleet.\n\n"
    "Exit codes: 0 all completed · 1 some jobs failed · 2 usage or config error · "
    "3 broker or model endpoint unreachable · 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (run, sessions, fleet_commands, fleet_ops, report, approvals):
    app.add_typer(module.commands)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    _exit.set_debug(debug)
