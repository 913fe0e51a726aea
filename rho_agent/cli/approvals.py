"""Approval commands: ``approvals`` lists the fleet's pending tool calls, ``approve JOB`` decides.

A job whose tool calls need a person's decision waits as ``awaiting_approval`` (docs/approvals.md).
``approve JOB`` approves every pending call of the job except those named with ``--deny``, which
are denied with ``--reason``; the job then continues on any worker. A decision that cannot apply
(the job is not awaiting approval, a call id is not pending or was decided already) changes
nothing and exits with 2, so two people approving at once learn which one won. (With ``--deny``
the denials and the approval of the rest are two atomic steps.)
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rho_agent.cli import _exit
from rho_agent.cli._tables import JsonFlag, print_json, print_table
from rho_agent.cli.fleet_commands import _dispatcher

if TYPE_CHECKING:
    from dispatch import JobInfo

commands = typer.Typer()
"""This module's commands, merged into the ``rho-agent`` app by ``rho_agent.cli.app``."""

_ARGUMENTS_SHOWN = 60


@commands.command("approvals")
def approvals(
    broker: _exit.BrokerOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show at most this many jobs.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """List the tool calls waiting for a decision across the fleet, soonest to expire first."""
    with _exit.one_line_errors(), _dispatcher(broker, need_fleet=True) as dispatcher:
        infos = dispatcher.approvals(limit)
    now = time.time()
    rows = [row for info in infos for row in _rows(info, now)]
    if as_json:
        print_json(rows)
        return
    # The job id and the call id are both needed to decide, so both share the one column that
    # is never cut (the session id is in --json).
    table = Table("job / call", "tool", "arguments", "age", "expires in", "decided")
    for row in rows:
        cells = [
            f"{row['job_id']}\n  {row['call_id']}",
            str(row["tool_name"]),
            _short(json.dumps(row["arguments"], ensure_ascii=False)),
            _duration(row["age_s"]),
            _duration(row["expires_in_s"]),
            str(row["decision"] or "-"),
        ]
        table.add_row(*(Text(cell) for cell in cells))
    print_table(Console(), table)


def _rows(info: JobInfo, now: float) -> list[dict[str, Any]]:
    since = info.finished_at or now
    expires = (info.approval_deadline or now) - now
    return [
        {
            "job_id": info.job_id,
            "session_id": info.session_id,
            "tool_name": call.tool_name,
            "arguments": call.arguments,
            "call_id": call.call_id,
            "decision": call.decision,
            "age_s": round(now - since, 1),
            "expires_in_s": round(max(0.0, expires), 1),
        }
        for call in info.pending_approvals
    ]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ARGUMENTS_SHOWN else text[: _ARGUMENTS_SHOWN - 1] + "…"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


@commands.command("approve")
def approve(
    job_id: Annotated[str, typer.Argument(help="Job id, as `rho-agent approvals` lists it.")],
    deny: Annotated[
        list[str] | None,
        typer.Option("--deny", help="A call id to deny (repeatable); every other one is approved."),
    ] = None,
    reason: Annotated[
        str, typer.Option("--reason", help="Why the denied calls were denied (the model reads it).")
    ] = "",
    broker: _exit.BrokerOption = None,
) -> None:
    """Decide a job's pending tool calls: approve them all but the ``--deny`` ones; the job then
    continues on any worker. Exits 2, changing nothing, if the decision cannot apply."""
    with _exit.one_line_errors(), _dispatcher(broker, need_fleet=True) as dispatcher:
        job = dispatcher.job(job_id)
        denied = list(dict.fromkeys(deny or []))
        outcome = job.deny(denied, reason=reason) if denied else job.approve()
        if outcome == "waiting":  # the calls not denied are approved
            outcome = job.approve()
    shown = f" ({len(denied)} denied)" if denied else ""
    typer.echo(f"job {job_id}: decided{shown}; it continues on the fleet")
