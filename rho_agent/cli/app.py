"""The Typer application and the registration of every command module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="rho-agent",
    help="Build and run LLM agents, locally or on a Celery/Redis fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module below registers its commands on ``app`` when imported.
from rho_agent.cli import fleet_commands as _fleet_commands  # noqa: E402,F401
from rho_agent.cli import fleet_ops as _fleet_ops  # noqa: E402,F401
from rho_agent.cli import run as _run  # noqa: E402,F401
from rho_agent.cli import sessions as _sessions  # noqa: E402,F401
