"""``rho-agent sessions``: list, show and export stored sessions from the command line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rho_agent import Agent, AgentConfig, SessionStore
from rho_agent.cli import app
from rho_agent.store.export import export_session
from rho_agent.testing import ScriptedModelServer, ScriptedUsage, text, tool_call
from tests.sdk.helpers import ProbeTool

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")


async def _stored_session(server: ScriptedModelServer, store: SessionStore, tmp_path: Path) -> str:
    server.script(
        tool_call("probe", {"id": "[bold]abc[/bold]"}, usage=ScriptedUsage(1000, 20)),
        text("The probe said abc.", usage=ScriptedUsage(2000, 30, 500)),
    )
    agent = Agent(AgentConfig(base_url=server.base_url, working_dir=str(tmp_path)))
    agent.registry.register(ProbeTool())
    session = store.create_session(agent)
    await session.run(prompt="Probe [red]abc[/red] please")
    await session.close()
    return session.state.session_id


async def test_export_to_a_path_that_cannot_be_written_is_one_clear_line(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    session_id = await _stored_session(model_server, SessionStore(), tmp_path)
    result = runner.invoke(app, ["sessions", "export", session_id, "-o", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"cannot write {tmp_path}" in result.output


def test_listing_an_empty_store(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sessions", "--dir", str(tmp_path / "none")])
    assert result.exit_code == 0, result.output
    assert "No sessions in" in result.output


async def test_list_show_and_export(model_server: ScriptedModelServer, tmp_path: Path) -> None:
    store = SessionStore()  # RHO_AGENT_SESSIONS_DIR points into tmp_path (tests/conftest.py)
    session_id = await _stored_session(model_server, store, tmp_path)

    listed = runner.invoke(app, ["sessions"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if session_id in line)
    for cell in ("completed", "gpt-5-mini", "Probe [red]abc[/red] please"):
        assert cell in row

    shown = runner.invoke(app, ["sessions", "show", session_id])
    assert shown.exit_code == 0, shown.output
    out = shown.output
    state = store.load_state(session_id)
    for expected in (
        f"Session {session_id}",
        "status completed",
        "user: Probe [red]abc[/red] please",  # markup in user text is shown, not interpreted
        '→ probe {"id":"[bold]abc[/bold]"}',
        "← probe: probe [bold]abc[/bold]",
        "assistant: The probe said abc.",
        "3000 in (500 cached) / 50 out tokens",
        f"${state.usage['cost_usd']:.4f}",
        "run completed",
    ):
        assert expected in out, f"{expected!r} not in:\n{out}"
    assert out.index("user:") < out.index("→ probe") < out.index("assistant:")

    exported = runner.invoke(app, ["sessions", "export", session_id])
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout) == export_session(state)

    target = tmp_path / "out.json"
    written = runner.invoke(app, ["sessions", "export", session_id, "-o", str(target)])
    assert written.exit_code == 0, written.output
    assert json.loads(target.read_text()) == export_session(state)


async def test_dir_option_limit_and_errors(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    store = SessionStore(tmp_path / "elsewhere")
    session_id = await _stored_session(model_server, store, tmp_path)
    default = runner.invoke(app, ["sessions"])
    assert session_id not in default.output

    listed = runner.invoke(app, ["sessions", "--dir", str(store.path)])
    assert session_id in listed.output
    assert (
        session_id
        not in runner.invoke(app, ["sessions", "--dir", str(store.path), "-n", "0"]).output
    )
    shown = runner.invoke(app, ["sessions", "show", session_id, "--dir", str(store.path)])
    assert shown.exit_code == 0 and "The probe said abc." in shown.output

    missing = runner.invoke(app, ["sessions", "show", "nope", "--dir", str(store.path)])
    assert missing.exit_code == 2 and "no session nope" in missing.output
    bad = runner.invoke(app, ["sessions", "export", "../etc", "--dir", str(store.path)])
    assert bad.exit_code == 2 and "invalid session id" in bad.output


async def test_ids_stay_whole_in_a_narrow_pipe_and_json_lists_everything(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    store = SessionStore()
    session_id = await _stored_session(model_server, store, tmp_path)
    env = {**os.environ, "COLUMNS": "40"}  # stdout is a pipe: Rich uses COLUMNS
    cli = [sys.executable, "-c", "from rho_agent.cli import main; main()"]

    def rho(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=60)

    narrow = await asyncio.to_thread(rho, "sessions")
    assert narrow.returncode == 0, narrow.stderr
    assert session_id in narrow.stdout, narrow.stdout
    listed = await asyncio.to_thread(rho, "sessions", "--json")
    [row] = json.loads(listed.stdout)
    assert row["id"] == session_id and row["status"] == "completed"
    assert row["first_prompt"] == "Probe [red]abc[/red] please"
    assert row["created_at"].startswith("20") and "T" in row["created_at"]
