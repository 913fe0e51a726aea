"""The fleet commands of the CLI (``rho_agent.cli.fleet_commands``), in embedded mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rho_agent.cli import fleet_commands  # registers the fleet commands on the app
from rho_agent.cli.app import app
from rho_agent.testing import ScriptedModelServer, behaviour

assert fleet_commands.dispatch_batch.__doc__


@pytest.fixture
def batch(tmp_path: Path, model_server: ScriptedModelServer) -> Path:
    model_server.responder = behaviour("echo")
    (tmp_path / "agent.yaml").write_text(
        f"base_url: {model_server.base_url}\nworking_dir: {tmp_path}\n", encoding="utf-8"
    )
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"p{i}"}) for i in range(4)), "utf-8")
    return path


def test_dispatch_writes_results_and_succeeds(batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    result = CliRunner().invoke(
        app, ["dispatch", str(batch), "-c", str(tmp_path / "agent.yaml"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["text"] for line in lines) == [f"Echo: p{i}" for i in range(4)]
    assert "4 completed, 0 failed" in result.output


def test_dispatch_exits_1_when_a_job_fails(batch: Path, tmp_path: Path) -> None:
    with batch.open("a") as more:
        more.write("\n" + json.dumps({"prompt": "x", "session_id": "gone"}))
    result = CliRunner().invoke(app, ["dispatch", str(batch), "-c", str(tmp_path / "agent.yaml")])
    assert result.exit_code == 1
    assert "4 completed, 1 failed" in result.output


def test_bad_batch_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "colour": "red"}', "utf-8")
    result = CliRunner().invoke(app, ["dispatch", str(bad)])
    assert result.exit_code == 2
    assert "unknown key(s) ['colour']" in result.output


def test_results_written_over_the_batch_file_are_refused(batch: Path, tmp_path: Path) -> None:
    before = batch.read_bytes()
    same = tmp_path / "." / batch.name  # the same file, spelled another way
    result = CliRunner().invoke(
        app, ["dispatch", str(batch), "-c", str(tmp_path / "agent.yaml"), "-o", str(same)]
    )
    assert result.exit_code == 2, result.output
    assert "-o" in result.output and "batch file" in result.output
    assert batch.read_bytes() == before, "the batch file must not be replaced by its results"


def test_an_embedded_resume_from_another_batch_file_is_refused(batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    config = ["-c", str(tmp_path / "agent.yaml"), "-o", str(out)]
    first = CliRunner().invoke(app, ["dispatch", str(batch), *config])
    assert first.exit_code == 0, first.output
    before = out.read_bytes()
    batch_id = json.loads(before.splitlines()[0])["batch"]
    other = tmp_path / "other.jsonl"
    other.write_text('"a new entry"\n', "utf-8")
    again = CliRunner().invoke(app, ["dispatch", str(other), *config, "--resume", batch_id])
    assert again.exit_code == 2, again.output
    assert f"batch {batch_id} has at least 4 entries but the file has 1" in again.output
    assert out.read_bytes() == before


@pytest.mark.parametrize("scope", ["label:", "label:team", "label:=ops", "team"])
def test_a_budget_scope_no_job_can_be_in_is_refused(scope: str) -> None:
    result = CliRunner().invoke(
        app, ["budgets", "set", scope, "--usd", "5", "--broker", "redis://127.0.0.1:1/0"]
    )
    assert result.exit_code == 2, result.output
    assert repr(scope) in result.output and "label:KEY=VALUE" in result.output


@pytest.mark.parametrize("command", [["jobs"], ["watch", "j-1"]])
def test_fleet_only_commands_need_a_broker(command: list[str]) -> None:
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2
    assert "needs a fleet" in result.output
