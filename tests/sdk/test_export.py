"""export_session: one versioned JSON document per session, for analysis tools."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from rho_agent import Agent, AgentConfig, Session, State
from rho_agent.store.export import EXPORT_FORMAT, EXPORT_VERSION, export_session
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, ScriptedToolCall, text
from tests.sdk.helpers import ProbeTool, make_session
from tests.sdk.test_trace import build_two_run_state


def test_export_of_a_two_run_session() -> None:
    state = build_two_run_state()
    exported = export_session(state)
    assert json.loads(json.dumps(exported)) == exported  # JSON-ready as is

    assert (exported["format"], exported["version"]) == (EXPORT_FORMAT, EXPORT_VERSION)
    assert exported["session_id"] == "s-1" and exported["model"] == "gpt-5-mini"
    assert exported["profile"] == "developer" and exported["created_at"] == state.created_at
    assert (exported["status"], exported["run_count"]) == ("interrupted", 2)
    assert exported["usage"] == state.usage and exported["messages"] == state.messages

    first, second = exported["runs"]
    assert (first["run"], first["prompt"], first["status"], first["text"]) == (
        1, "first", "completed", "done"
    )  # fmt: skip
    assert first["usage"]["input_tokens"] == 300 and first["duration_s"] >= 0
    assert (second["prompt"], second["status"]) == ("second", "interrupted")

    calls = {call["call_id"]: call for call in exported["tool_calls"]}
    assert list(calls) == ["c1", "c2", "c3"]
    assert (calls["c1"]["status"], calls["c1"]["result"], calls["c1"]["run"]) == (
        "succeeded",
        "one",
        1,
    )
    assert calls["c2"]["result"] == "two" and calls["c2"]["duration_s"] >= 0
    assert calls["c1"]["ended_at"] >= calls["c2"]["ended_at"]  # c2 finished first
    assert (calls["c3"]["status"], calls["c3"]["result"], calls["c3"]["run"]) == (
        "pending",
        None,
        2,
    )
    assert exported["pending_approvals"] == [
        {"call_id": "c3", "tool_name": "bash", "arguments": {}}
    ]

    assert [call["cost_usd"] for call in exported["model_calls"]] == [0.25, 0.5, 0.125]
    assert [call["run"] for call in exported["model_calls"]] == [1, 1, 2]
    (compaction,) = exported["compactions"]
    assert compaction["summary"] == "first run used probe twice"
    assert (compaction["tokens_before"], compaction["tokens_after"], compaction["run"]) == (
        90,
        20,
        1,
    )
    # The transcript keeps what compaction removed from `messages`.
    contents = [m.get("content") for m in exported["transcript"]]
    assert contents[:4] == ["sys", "first", "", "two"] and "done" in contents
    assert all(entry["ts"] and "run" in entry for entry in exported["transcript"])


async def test_export_of_a_real_run_has_tool_arguments_results_durations_and_blocks(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    calls = [
        ScriptedToolCall("probe", {"id": "slow", "sleep": 0.2}, id="t1"),
        ScriptedToolCall("nosuchtool", {"x": 1}, id="t2"),
        ScriptedToolCall("probe", "{not json", id="t3"),
    ]
    model_server.script(ScriptedResponse(tool_calls=calls), text("All done."))
    session = make_session(model_server, tmp_path, probe=ProbeTool())
    await session.run(prompt="use tools")

    exported = export_session(State.from_jsonl(session.state.to_jsonl()))
    by_id = {call["call_id"]: call for call in exported["tool_calls"]}
    slow = by_id["t1"]
    assert slow["tool_name"] == "probe" and slow["arguments"] == {"id": "slow", "sleep": 0.2}
    assert slow["status"] == "succeeded" and slow["result"] == "probe slow"
    assert slow["metadata"] == {"id": "slow"} and 0.2 <= slow["duration_s"] < 5
    assert datetime.fromisoformat(slow["ended_at"]) > datetime.fromisoformat(slow["started_at"])
    assert by_id["t2"]["status"] == "failed" and "no tool named" in by_id["t2"]["result"]
    assert by_id["t3"]["status"] == "failed"
    assert by_id["t3"]["arguments"] == {"_raw_arguments": "{not json"}
    (run,) = exported["runs"]
    assert (run["prompt"], run["status"], run["text"]) == ("use tools", "completed", "All done.")
    assert run["usage"]["input_tokens"] == exported["usage"]["input_tokens"] > 0
    assert run["usage"]["cost_usd"] == pytest.approx(exported["usage"]["cost_usd"])


async def test_a_denied_call_is_blocked(model_server: ScriptedModelServer, tmp_path: Path) -> None:
    agent = Agent(
        AgentConfig(
            base_url=model_server.base_url,
            working_dir=str(tmp_path),
            profile="developer",
            auto_approve=False,
        )
    )
    agent.registry.register(ProbeTool(requires_approval=True))
    session = Session(agent)
    session.approval_callback = lambda name, args: False
    model_server.script(ScriptedResponse(tool_calls=[ScriptedToolCall("probe", {}, id="d1")]))
    model_server.script(text("ok then"))
    await session.run(prompt="try")
    exported = export_session(session.state)
    denied = exported["tool_calls"][0]
    assert (
        denied["status"] == "blocked"
        and denied["blocked_reason"] == "the user denied this tool call"
    )
    assert denied["started_at"] is None and denied["duration_s"] is None
    assert denied["result"] == "Blocked: the user denied this tool call"


def test_a_crashed_run_with_an_unstarted_call() -> None:
    state = build_two_run_state()
    records = state.records[:6]  # the tool turn was recorded, then the process died
    crashed = State.from_records(records)
    crashed.append("run_resume", run=1)
    crashed.append("message", role="tool", tool_call_id="c1", content="Error: the run failed")
    crashed.append("error", message="boom")
    exported = export_session(crashed)
    (run,) = exported["runs"]
    assert run["resumed_at"] and run["status"] == "running" and run["error"] == "boom"
    calls = {call["call_id"]: call for call in exported["tool_calls"]}
    assert calls["c1"]["status"] == "not_run" and calls["c2"]["status"] == "pending"
    assert exported["errors"] == [{"ts": exported["errors"][0]["ts"], "run": 1, "message": "boom"}]
