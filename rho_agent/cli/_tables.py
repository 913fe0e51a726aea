"""Tables whose ID column is never cut, and the ``--json`` switch of the listing commands.

Rich shrinks every column of a table that is too wide, IDs included, so ``…da1f…`` could not be
copied. ``print_table`` sizes the columns itself: the ID column keeps its full width and the
other columns give way (cut with an ellipsis, widest first); a terminal too narrow even for the
IDs gets longer lines rather than cut IDs. In a pipe Rich assumes 80 columns, the same rules hold.

Each listing command (``sessions``, ``jobs``, ``fleet status``, and later ``approvals`` and
``budgets``) takes ``--json`` (``JsonFlag``) and prints ``print_json(rows)``: the same records as
the table, whole, one JSON document on stdout.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print JSON (whole records, IDs and all) instead of a table.")
]

_MIN_WIDTH = 3


def print_json(data: Any) -> None:
    """One JSON document on stdout; datetimes as ISO 8601."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_iso))


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def print_table(console: Console, table: Table, *, id_column: int = 0) -> None:
    """Print ``table`` with column ``id_column`` whole; the others shrink to fit the console."""
    widths = [_natural_width(console, table, index) for index in range(len(table.columns))]
    count = len(widths)
    overhead = 2 * count + (count - 1) + (2 if table.show_edge else 0)
    available = console.width - overhead
    while sum(widths) > available:
        others = [i for i in range(count) if i != id_column and widths[i] > _MIN_WIDTH]
        if not others:
            break
        widest = max(others, key=lambda i: widths[i])
        widths[widest] -= 1
    for column, width in zip(table.columns, widths, strict=True):
        column.width = width
        column.no_wrap = True
        column.overflow = "ellipsis"
    table.columns[id_column].overflow = "fold"
    needed = sum(widths) + overhead
    if needed <= console.width:
        console.print(table)
        return
    narrow = console.width  # Rich clamps a print's width to the console's: widen it for once
    console.width = needed
    try:
        console.print(table, crop=False)
    finally:
        console.width = narrow


def _natural_width(console: Console, table: Table, index: int) -> int:
    column = table.columns[index]
    cells = [column.header, *column.cells]
    width = max(console.measure(cell).maximum for cell in cells)
    return min(width, column.max_width) if column.max_width else width
