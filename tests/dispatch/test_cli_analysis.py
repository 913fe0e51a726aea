"""``rho-agent dispatch --schema/--format/--reduce`` in embedded mode, and the flat table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatch.table import columns, flatten, result_rows, write_table
from rho_agent.cli import fleet_commands  # registers the fleet commands on the app
from rho_agent.cli.app import app
from rho_agent.events import RunError, RunResult
from rho_agent.testing import ScriptedModelServer
from tests.analysis_support import Finding, Summary, analyst, file_names

assert fleet_commands.dispatch_batch.__doc__


@pytest.fixture
def files(tmp_path: Path, model_server: ScriptedModelServer) -> Path:
    model_server.responder = analyst
    (tmp_path / "agent.yaml").write_text(
        f"base_url: {model_server.base_url}\nworking_dir: {tmp_path}\n", encoding="utf-8"
    )
    (tmp_path / "finding.json").write_text(json.dumps(Finding.model_json_schema()), "utf-8")
    (tmp_path / "summary.json").write_text(json.dumps(Summary.model_json_schema()), "utf-8")
    path = tmp_path / "batch.jsonl"
    names = file_names(12, bad_once=1, bad_twice=1)
    path.write_text("\n".join(json.dumps(f"Review file {name}") for name in names), "utf-8")
    return path


def dispatch(files: Path, *args: str) -> tuple[int, str, str]:
    out = files.parent / "out.txt"
    folder = files.parent
    command = ["dispatch", str(files), "-c", str(folder / "agent.yaml"), "-o", str(out), *args]
    result = CliRunner().invoke(app, command)
    return result.exit_code, result.output, out.read_text() if out.exists() else ""


def test_schema_and_csv_write_a_flat_table(files: Path) -> None:
    code, shown, out = dispatch(
        files, "--schema", str(files.parent / "finding.json"), "--format", "csv"
    )
    assert code == 1, shown  # the bad-twice file ends invalid_output
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 12
    assert list(rows[0])[:6] == ["job_id", "status", "error", "path", "severity", "note"]
    assert sorted(row["status"] for row in rows).count("invalid_output") == 1
    assert {row["path"] for row in rows if row["status"] == "completed"} >= {
        "src/module_0000.py",
        "src/bad-once-0.py",
    }


def test_reduce_writes_the_answer_after_the_results(files: Path) -> None:
    code, shown, out = dispatch(
        files,
        "--schema", str(files.parent / "finding.json"),
        "--reduce", "Summarise the findings.",
        "--reduce-schema", str(files.parent / "summary.json"),
    )  # fmt: skip
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1, shown  # one map job failed; the reduce itself completed
    results, reduced = lines[:-1], lines[-1]
    assert len(results) == 12 and all("output" in line for line in results)
    assert reduced["status"] == "completed" and reduced["output"]["count"] == 12
    failed = [line["job_id"] for line in results if line["status"] != "completed"]
    assert reduced["output"]["failed"] == failed
    assert [level["name"] for level in reduced["levels"]] == ["map", "final"]
    assert all(line["labels"]["batch"] == reduced["batch_id"] for line in results)
    assert "reduce b-" in shown and ": completed" in shown


def test_bad_format_is_one_clear_line(files: Path) -> None:
    code, shown, _ = dispatch(files, "--format", "xlsx")
    assert code == 2 and "use csv or jsonl" in shown


@pytest.mark.parametrize("prompt", ["", "  "])
def test_an_empty_reduce_prompt_is_refused_before_the_map_runs(
    files: Path, model_server: ScriptedModelServer, prompt: str
) -> None:
    code, shown, _ = dispatch(files, "--reduce", prompt)
    assert code == 2 and "--reduce needs a prompt" in shown
    assert model_server.requests == [], "exit 2 means nothing was run"


def test_flatten_names_nested_fields_with_dots() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": {}}) == {
        "a.b": 1,
        "a.c.d": "x",
        "e": [1, 2],
        "f": {},
    }
    assert flatten([1, 2]) == {"output": [1, 2]}


def test_rows_keep_failures_and_plain_text() -> None:
    results = [
        RunResult(text="", output={"x": {"y": 1}}),
        RunResult(text="", status="error", error=RunError("ModelError", "boom")),
        RunResult(text="plain"),
    ]
    rows = result_rows(["j-1", "j-2", "j-3"], results)
    assert columns(rows) == ["job_id", "status", "error", "x.y", "text"]
    sink = io.StringIO()
    write_table(rows, sink, "csv")
    assert sink.getvalue().splitlines() == [
        "job_id,status,error,x.y,text",
        "j-1,completed,,1,",
        "j-2,error,ModelError: boom,,",
        "j-3,completed,,,plain",
    ]
