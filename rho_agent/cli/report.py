"""``rho-agent report BATCH``: one batch as a self-contained HTML page, or as JSON.

BATCH is a results file written by ``rho-agent dispatch`` (any mode), or a batch id on a fleet
(the jobs labelled ``batch=<id>``, found among the most recent jobs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from rho_agent.cli import _exit

commands = typer.Typer()
"""This module's commands, merged into the ``rho-agent`` app by ``rho_agent.cli.app``."""

_err = Console(stderr=True)


@commands.command("report")
def report(
    batch: Annotated[str, typer.Argument(help="A results file of `dispatch`, or a batch id.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: stdout).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of HTML.")] = False,
    broker: Annotated[
        str | None,
        typer.Option("--broker", help="Redis URL of the fleet (default: $RHO_AGENT_BROKER_URL)."),
    ] = None,
    scan: Annotated[
        int, typer.Option(help="Fleet: how many recent jobs to search for the batch's jobs.")
    ] = 20_000,
) -> None:
    """Report a batch: its jobs (status, cost, duration, worker), typed results as a sortable
    table, the reduce tree and the cost per level."""
    from dispatch.report import report_from_file, report_from_fleet
    from dispatch.report_html import render

    with _exit.one_line_errors():  # a fleet out of reach exits 3, a bad input 2
        if Path(batch).is_file():
            found = report_from_file(Path(batch))
        else:
            from dispatch import Dispatcher

            with Dispatcher(broker) as dispatcher:
                if dispatcher.mode != "fleet":
                    _err.print(
                        f"[red]error:[/] {escape(batch)} is not a file, and a batch id needs a "
                        "fleet: pass --broker redis://... or set RHO_AGENT_BROKER_URL"
                    )
                    raise typer.Exit(2)
                found = report_from_fleet(dispatcher, batch, scan)
    text = json.dumps(found.to_json(), indent=2) if as_json else render(found)
    if output is None:
        sys.stdout.write(text + "\n")
    else:
        _exit.write_output(output, text + "\n")
        _err.print(f"wrote {escape(str(output))} ({len(found.rows)} jobs)")
