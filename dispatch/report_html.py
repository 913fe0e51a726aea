"""A BatchReport as one self-contained HTML page: no external file, script or font.

Everything a model wrote (outputs, errors) is escaped: a report of untrusted answers must not run
them. Tables sort on a click of their header (a few lines of inline script; numbers sort as
numbers).
"""

from __future__ import annotations

import json
from collections import Counter
from html import escape
from typing import Any

from dispatch.report import BatchReport, JobRow

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2430;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.muted{color:#677}.summary span{margin-right:16px}
table{border-collapse:collapse;width:100%;margin-bottom:8px}
th,td{border-bottom:1px solid #dde;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f9;cursor:pointer;user-select:none;white-space:nowrap}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.s-completed{color:#17803d}.s-error,.s-invalid_output,.s-max_turns{color:#b42318}
.s-cancelled,.s-interrupted{color:#8a6100}
.tree{display:flex;flex-direction:column;gap:10px}
.level{display:flex;align-items:center;gap:6px;flex-wrap:wrap}
.level b{width:90px}.node{border:1px solid #cbd3e1;border-radius:4px;padding:2px 6px;
background:#f8fafc;font-size:12px}
pre{background:#f3f5f9;padding:10px;overflow:auto;max-height:400px}
"""

_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) { h.className = ""; });
      th.className = asc ? "sorted-asc" : "sorted-desc";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].textContent, y = b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? cmp : -cmp;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def render(report: BatchReport) -> str:
    """The page, as one string."""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>rho-agent batch {escape(report.batch_id)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        _header(report),
        _levels(report),
        _tree(report),
        _results(report),
        _jobs(report),
        _final(report),
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)


def _header(report: BatchReport) -> str:
    counts = Counter(row.status for row in report.rows)
    statuses = "".join(
        f"<span class='s-{escape(status)}'>{escape(status)}: {count}</span>"
        for status, count in sorted(counts.items())
    )
    return (
        f"<h1>Batch {escape(report.batch_id)}</h1>"
        f"<div class='summary muted'><span>{len(report.rows)} jobs</span>"
        f"<span>cost ${report.cost_usd:.4f}</span>{statuses}</div>"
    )


def _levels(report: BatchReport) -> str:
    rows = [
        [level.name, level.jobs, level.failed, f"{level.cost_usd:.6f}"] for level in report.levels
    ]
    return "<h2>Cost per level</h2>" + _table(
        "levels", ["level", "jobs", "failed", "cost_usd"], rows
    )


def _tree(report: BatchReport) -> str:
    by_level: dict[str, list[JobRow]] = {}
    for row in report.rows:
        by_level.setdefault(row.level, []).append(row)
    if len(by_level) < 2:
        return ""
    lines = ["<h2>Reduce tree</h2><div class='tree' id='tree'>"]
    for level, rows in by_level.items():
        if level == "map":
            failed = sum(row.status != "completed" for row in rows)
            nodes = f"<span class='node'>{len(rows)} jobs, {failed} failed</span>"
        else:
            nodes = "".join(
                f"<span class='node s-{escape(row.status)}' title='{escape(row.job_id)}'>"
                f"{escape(row.part or row.job_id[-6:])} &middot; {row.inputs} in &middot; "
                f"{escape(row.status)}</span>"
                for row in rows
            )
        lines.append(f"<div class='level'><b>{escape(level)}</b>{nodes}</div>")
    lines.append("</div>")
    return "".join(lines)


def _results(report: BatchReport) -> str:
    names, rows = report.table()
    if not rows:
        return ""
    cells = [[item.get(name) for name in names] for item in rows]
    return "<h2>Typed results</h2>" + _table("results", names, cells)


def _jobs(report: BatchReport) -> str:
    names = ["job_id", "level", "status", "cost_usd", "duration_s", "worker", "error"]
    rows = [
        [
            row.job_id,
            row.level,
            row.status,
            f"{row.cost_usd:.6f}",
            "" if row.duration_s is None else f"{row.duration_s:.3f}",
            row.worker,
            row.error,
        ]
        for row in report.rows
    ]
    return "<h2>Jobs</h2>" + _table("jobs", names, rows)


def _final(report: BatchReport) -> str:
    if report.final is None:
        return ""
    text = json.dumps(report.final, indent=2, ensure_ascii=False)
    return f"<h2>Final answer</h2><pre id='final'>{escape(text)}</pre>"


def _table(table_id: str, names: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(name)}</th>" for name in names)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return (
        f"<table class='sortable' id='{table_id}'><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{'true' if value else 'false'}</td>"
    if isinstance(value, int | float):
        return f"<td class='num'>{value}</td>"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    numeric = _is_number(text)
    css = " class='num'" if numeric else ""
    return f"<td{css}>{escape(text)}</td>"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
