"""The seed page's examples, as files under examples/, run against the scripted server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rho_agent.testing import (
    ScriptedModelServer,
    ScriptedResponse,
    behaviour,
    error,
    text,
    tool_call,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, server: ScriptedModelServer, tmp_path: Path) -> str:
    env = {
        **os.environ,
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_API_KEY": "sk-test",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_basic_usage(model_server: ScriptedModelServer, tmp_path: Path) -> None:
    model_server.responder = behaviour("echo")
    out = run_example("basic_usage.py", model_server, tmp_path)
    assert out.strip() == "Echo: Analyze recent failures and summarize root causes."
    assert (
        model_server.requests[0].body["messages"][0]["content"] == "You are a research assistant."
    )


def test_basic_usage_says_why_a_run_failed(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: error(401, "Incorrect API key provided")
    env = {**os.environ, "OPENAI_BASE_URL": model_server.base_url, "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "basic_usage.py")],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert "the run failed: ModelError: model API error 401: Incorrect API key" in done.stderr


def test_multi_run_conversation_keeps_context(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo")
    out = run_example("multi_run.py", model_server, tmp_path).splitlines()
    assert out[:3] == [
        "Echo: List all tables in the database.",
        "Echo: Show me the schema for the users table.",
        "Echo: Find users who signed up in the last 7 days.",
    ]
    assert out[3].startswith("runs: 3, cost: $")
    last = model_server.requests[-1].body["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]


def test_parallel_dispatch(model_server: ScriptedModelServer, tmp_path: Path) -> None:
    model_server.responder = behaviour("echo", delay=0.3)
    out = run_example("parallel_dispatch.py", model_server, tmp_path).splitlines()
    assert out == [
        "Echo: Check error rates.",
        "Echo: Check latency metrics.",
        "Echo: Check disk usage.",
    ]
    starts = sorted(r.timestamp for r in model_server.requests)
    assert starts[-1] - starts[0] < 0.25, "the three sessions did not run concurrently"


def test_custom_tools(model_server: ScriptedModelServer, tmp_path: Path) -> None:
    def respond(body: dict[str, Any]) -> ScriptedResponse:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return text("Report: " + last["content"])
        assert "my_custom_handler" in [t["function"]["name"] for t in body["tools"]]
        return tool_call("my_custom_handler", {"data": "abc", "uppercase": True})

    model_server.responder = respond
    out = run_example("custom_tools.py", model_server, tmp_path)
    assert out.strip() == "Report: processed 3 characters: ABC"


def test_observing_events(model_server: ScriptedModelServer, tmp_path: Path) -> None:
    model_server.responder = behaviour("tool-then-answer")
    out = run_example("observe_events.py", model_server, tmp_path).splitlines()
    assert out[0].startswith("[") and out[0].endswith("] list")
    assert out[1].startswith("Done:")


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_is_covered(name: str) -> None:
    covered = {"basic_usage.py", "multi_run.py", "parallel_dispatch.py", "custom_tools.py",
               "observe_events.py", "fan_out_analysis.py"}  # fmt: skip
    assert name in covered or name.startswith("fleet_"), f"{name} has no test"


def test_fan_out_analysis_runs_offline(tmp_path: Path) -> None:
    """With no API key and no endpoint, the analysis runs against its scripted reviewer."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    env.pop("RHO_AGENT_BROKER_URL", None)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "fan_out_analysis.py")],
        env={**env, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "offline mode" in done.stderr
    table, report = done.stdout.split("\n\n")
    rows = table.splitlines()
    assert rows[0] == "job_id,status,error,path,risk,uses_eval,bare_except,evidence"
    assert len(rows) == 6 and all(",completed,," in row for row in rows[1:])
    assert report.splitlines()[1:] == [
        "risk 5  app/both.py: x = eval(input())",
        "risk 4  app/calc.py: return eval(expr)",
        "risk 1  app/io.py: except:",
    ]
