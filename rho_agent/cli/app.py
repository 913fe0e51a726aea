"""The Typer application and the registration of every command module."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="rho-agent",
    help="Build and run LLM agents, locally or on a Celery/Redis fleet.\n\n"
    "Exit codes: 0 all completed · 1 some jobs failed · 2 usage or config error · "
    "3 broker or model endpoint unreachable · 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_debug = False


def debug_enabled() -> bool:
    """``--debug`` was given: unexpected errors show their traceback."""
    return _debug


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an unexpected error.")
    ] = False,
) -> None:
    global _debug
    _debug = debug


# Each module below registers its commands on ``app`` when imported.
from rho_agent.cli import fleet_commands as _fleet_commands  # noqa: E402,F401
from rho_agent.cli import fleet_ops as _fleet_ops  # noqa: E402,F401
from rho_agent.cli import run as _run  # noqa: E402,F401
from rho_agent.cli import sessions as _sessions  # noqa: E402,F401
