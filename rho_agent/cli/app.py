"""The Typer application: every command module's commands, merged into one ``rho-agent`` app."""

from __future__ import annotations

import typer

from rho_agent.cli import fleet_commands, fleet_ops, run, sessions

app = typer.Typer(
    name="rho-agent",
    help="Build and run LLM agents, locally or on a Celery/Redis fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (run, sessions, fleet_commands, fleet_ops):
    app.add_typer(module.commands)
