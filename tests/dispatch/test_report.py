"""``rho-agent report``: a batch's results file as one HTML page (rendered by real Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatch.report import report_from_file
from dispatch.report_html import render
from rho_agent.cli.app import app
from rho_agent.testing import ScriptedModelServer
from tests.analysis_support import Finding, Summary, analyst, file_names

FILES = 40


@pytest.fixture
def results(tmp_path: Path, model_server: ScriptedModelServer) -> Path:
    """A map of 40 typed files and a hierarchical reduce, written by ``rho-agent dispatch``."""
    model_server.responder = analyst
    (tmp_path / "agent.yaml").write_text(
        f"base_url: {model_server.base_url}\nworking_dir: {tmp_path}\nprofile: readonly\n"
        "extras: {context_window: 4000}\n",
        encoding="utf-8",
    )
    (tmp_path / "finding.json").write_text(json.dumps(Finding.model_json_schema()), "utf-8")
    (tmp_path / "summary.json").write_text(json.dumps(Summary.model_json_schema()), "utf-8")
    batch = tmp_path / "batch.jsonl"
    names = file_names(FILES, bad_once=2, bad_twice=1)
    names[3] = "src/<script>alert(1)</script>.py"  # a model-written value must stay text
    batch.write_text("\n".join(json.dumps(f"Review file {name}") for name in names), "utf-8")
    out = tmp_path / "results.jsonl"
    command = [
        "dispatch", str(batch), "-c", str(tmp_path / "agent.yaml"), "-o", str(out),
        "--schema", str(tmp_path / "finding.json"),
        "--reduce", "Summarise the findings.", "--reduce-schema", str(tmp_path / "summary.json"),
    ]  # fmt: skip
    done = CliRunner().invoke(app, command)
    assert done.exit_code == 1, done.output  # the bad-twice file
    return out


def test_the_report_holds_every_job_level_and_result(results: Path) -> None:
    report = report_from_file(results)
    levels = [level.name for level in report.levels]
    assert levels[0] == "map" and levels[-1] == "final" and "reduce-1" in levels
    assert report.levels[0].jobs == FILES and report.levels[0].failed == 1
    reducers = [row for row in report.rows if row.level != "map"]
    assert all(row.worker == "embedded" and row.duration_s is not None for row in reducers)
    assert sum(row.inputs for row in reducers if row.level == "reduce-1") == FILES
    assert report.final is not None and report.final["output"]["count"] == FILES
    names, rows = report.table()
    assert names[:5] == ["job_id", "status", "path", "severity", "note"] and len(rows) == FILES - 1
    failed = next(row for row in report.rows if row.status == "invalid_output")
    assert failed.error is not None and "is not of type 'integer'" in failed.error
    html = render(report)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_report_json_form(results: Path) -> None:
    done = CliRunner().invoke(app, ["report", str(results), "--json"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert len(data["jobs"]) == FILES + sum(
        level["jobs"] for level in data["levels"] if level["name"] != "map"
    )
    assert {"name", "jobs", "failed", "cost_usd"} <= set(data["levels"][0])
    assert data["cost_usd"] == pytest.approx(sum(job["cost_usd"] for job in data["jobs"]), abs=1e-5)


def test_an_unknown_batch_without_a_fleet_is_one_clear_line(tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["report", "b-nothere"])
    assert done.exit_code == 2 and "needs a fleet" in done.output


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b'{"index": 0}\n[1, 2]\n', "line 2 is not a result"),
        (b'{"index": 0, "usage": "free"}\n', "line 1 is not a result"),
        (b'{"index": 0, "usage": {"cost_usd": "x"}}\n', "line 1 is not a result"),
        ('{"prompt": "caf\u00e9"}\n'.encode("latin-1"), "not UTF-8"),
    ],
)
def test_a_file_that_is_not_a_results_file_is_one_clear_line(
    tmp_path: Path, content: bytes, complaint: str
) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(content)
    done = CliRunner().invoke(app, ["report", str(path)])
    assert done.exit_code == 2, done.output
    assert complaint in done.output and "results.jsonl" in done.output


def test_an_output_path_that_cannot_be_written_is_one_clear_line(
    results: Path, tmp_path: Path
) -> None:
    done = CliRunner().invoke(app, ["report", str(results), "-o", str(tmp_path)])
    assert done.exit_code == 2, done.output
    assert f"cannot write {tmp_path}" in done.output and "Traceback" not in done.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_chromium_renders_the_page(results: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    done = CliRunner().invoke(app, ["report", str(results), "-o", str(page)])
    assert done.exit_code == 0, done.output
    flags = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    results_table = dom.split('id="results"', 1)[1].split("</table>", 1)[0]
    assert results_table.count("<tr>") == FILES - 1 + 1  # the header, then one row per result
    jobs_table = dom.split('id="jobs"', 1)[1].split("</table>", 1)[0]
    assert len(re.findall(r"<td>j-\d{8}-", jobs_table)) >= FILES + 2
    assert 'id="tree"' in dom and "reduce-1" in dom
    assert shot.stat().st_size > 20_000  # a page with content, not a blank one
