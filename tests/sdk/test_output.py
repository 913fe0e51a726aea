"""Typed results in the SDK: the schema is asked for, the answer validated, corrected once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, field_validator

from rho_agent import AgentConfig, ConfigError, State
from rho_agent.output import OutputSchema
from rho_agent.testing import ScriptedModelServer, structured, text, tool_call
from tests.sdk.helpers import assert_history_valid, make_session


class Finding(BaseModel):
    path: str
    severity: int

    @field_validator("severity")
    @classmethod
    def _in_range(cls, value: int) -> int:
        if not 1 <= value <= 5:
            raise ValueError("severity must be 1-5")
        return value


SCHEMA: dict[str, Any] = {
    "title": "Verdict",
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "notes": {"type": "string"}},
    "required": ["ok"],
}


async def test_response_format_asks_for_the_schema_and_parses_a_model(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(structured({"path": "a.py", "severity": 2}))
    session = make_session(model_server, tmp_path)
    result = await session.run("review a.py", output_schema=Finding)
    assert result.status == "completed"
    assert result.output == Finding(path="a.py", severity=2)
    body = model_server.requests[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == Finding.model_json_schema()
    assert result.to_dict()["output"] == {"path": "a.py", "severity": 2}


async def test_tool_mode_offers_final_answer_to_a_server_without_json_schema(
    tmp_path: Path,
) -> None:
    with ScriptedModelServer(json_schema_support=False) as server:
        server.script(structured({"ok": True, "notes": "fine"}))
        session = make_session(server, tmp_path, extras={"structured_output": "tool"})
        result = await session.run("check", output_schema=SCHEMA)
        body = server.requests[0].body
    assert (result.status, result.output) == ("completed", {"ok": True, "notes": "fine"})
    assert "response_format" not in body
    assert body["tools"][-1]["function"]["name"] == "final_answer"
    assert_history_valid(session.state.messages)


async def test_the_server_refuses_json_schema_when_it_lacks_it(tmp_path: Path) -> None:
    with ScriptedModelServer(json_schema_support=False) as server:
        server.script(structured({"ok": True}))
        result = await make_session(server, tmp_path).run("check", output_schema=SCHEMA)
    assert result.status == "error"
    assert result.error is not None and "json_schema is not supported" in result.error.message


async def test_tool_mode_wraps_a_schema_that_is_not_an_object(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(structured({"answer": [1, 2, 3]}))
    session = make_session(model_server, tmp_path, extras={"structured_output": "tool"})
    schema = {"type": "array", "items": {"type": "integer"}}
    result = await session.run("numbers", output_schema=schema)
    assert result.output == [1, 2, 3]
    parameters = model_server.requests[0].body["tools"][-1]["function"]["parameters"]
    assert parameters["properties"]["answer"] == schema


async def test_an_invalid_answer_gets_one_corrective_turn(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(
        structured({"path": "a.py", "severity": 9}), structured({"path": "a.py", "severity": 4})
    )
    session = make_session(model_server, tmp_path)
    result = await session.run("review", output_schema=Finding)
    assert (result.status, result.output) == ("completed", Finding(path="a.py", severity=4))
    correction = model_server.requests[1].body["messages"][-1]
    assert correction["role"] == "user" and "severity must be 1-5" in correction["content"]
    assert [e.type for e in result.events].count("output_invalid") == 1


async def test_two_invalid_answers_end_as_invalid_output(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(structured("not json"), structured({"ok": "yes"}), text("unused"))
    session = make_session(model_server, tmp_path)
    result = await session.run("check", output_schema=SCHEMA)
    assert result.status == "invalid_output" and result.output is None
    assert result.error is not None and result.error.type == "invalid_output"
    assert "'yes' is not of type 'boolean'" in result.error.message
    assert model_server.pending == 1  # exactly one corrective turn, no third call


async def test_tool_mode_correction_keeps_the_history_valid(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(
        structured({"ok": 1}), tool_call("final_answer", {"ok": False}), text("unused")
    )
    session = make_session(model_server, tmp_path, extras={"structured_output": "tool"})
    result = await session.run("check", output_schema=SCHEMA)
    assert (result.status, result.output) == ("completed", {"ok": False})
    assert_history_valid(session.state.messages)
    assert "final_answer tool again" in model_server.requests[1].body["messages"][-1]["content"]


async def test_the_trace_keeps_the_output(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(structured({"ok": True}))
    session = make_session(model_server, tmp_path)
    await session.run("check", output_schema=SCHEMA)
    state = State.from_jsonl(session.state.to_jsonl())
    run_end = [r for r in state.records if r["type"] == "run_end"][-1]
    assert run_end["output"] == {"ok": True}


def test_bad_schemas_and_modes_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="not a valid JSON schema"):
        OutputSchema.of({"type": "no-such-type"})
    with pytest.raises(ConfigError, match="must be JSON data: Out of range float"):
        OutputSchema.of({"type": "number", "minimum": float("nan")})
    with pytest.raises(ConfigError, match="pydantic model class or a JSON schema"):
        OutputSchema.of("Finding")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="structured_output"):
        AgentConfig(extras={"structured_output": "grammar"})


def test_a_fenced_answer_is_read() -> None:
    assert OutputSchema.of(SCHEMA).parse('```json\n{"ok": true}\n```') == {"ok": True}


async def test_a_resumed_run_does_not_get_a_second_correction(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """The process stopped after the correction was recorded: the resumed run's next invalid
    answer ends it, as it would have without the stop."""
    model_server.script(structured({"ok": "no"}), structured({"ok": True}))
    session = make_session(model_server, tmp_path)
    await session.run("check", output_schema=SCHEMA)
    records = session.state.records
    cut = max(
        i for i, r in enumerate(records) if r["type"] == "message" and r.get("role") == "user"
    )
    stopped = State.from_records(records[: cut + 1])  # the correction, then the process stopped
    assert stopped.has_unfinished_run
    model_server.reset()
    model_server.script(structured({"ok": "still no"}), structured({"ok": True}))
    resumed = make_session(model_server, tmp_path)
    resumed = type(resumed)(resumed.agent, state=stopped)
    result = await resumed.resume_run(output_schema=SCHEMA)
    assert result.status == "invalid_output"
    assert model_server.pending == 1
