"""The ``fan_out`` tool in the SDK: granted only by name, and clear without a job engine.

How children run is the job engine's (tests/dispatch/test_fan_out.py and
tests/integration/test_fan_out.py); here: the grant, its round trip as data, and what the
tool does when a bare Session has no ``SubJobs`` (or a fake one).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rho_agent import Agent, AgentConfig, Session
from rho_agent.errors import ProfileError
from rho_agent.permissions.profile import (
    BUILTIN_PROFILES,
    PermissionProfile,
    load_profile_file,
    profile_from_dict,
    profile_to_dict,
)
from rho_agent.testing import ScriptedModelServer, text, tool_call
from rho_agent.tools import build_registry
from rho_agent.tools.sub_jobs import SubJobRequest, SubJobResult

GRANTED = PermissionProfile("fanner", shell="readonly", grants={"fan_out"})


def test_no_built_in_profile_has_fan_out() -> None:
    for profile in BUILTIN_PROFILES.values():
        assert "fan_out" not in build_registry(profile).names
    assert build_registry(GRANTED).names[-1] == "fan_out"


def test_a_grant_round_trips_as_data_and_from_yaml(tmp_path: Path) -> None:
    data = profile_to_dict(GRANTED)
    assert data["grants"] == ["fan_out"]
    assert profile_from_dict(data) == GRANTED
    assert "grants" not in profile_to_dict(BUILTIN_PROFILES["developer"]), "unchanged without"
    file = tmp_path / "team.yaml"
    file.write_text("shell: readonly\ngrants: [fan_out]\n")
    assert load_profile_file(file).grants == frozenset({"fan_out"})


def test_an_unknown_grant_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ProfileError, match=r"unknown grant\(s\) launch_missiles; choose from fan_out"
    ):
        profile_from_dict({"name": "x", "grants": ["launch_missiles"]})


def test_a_grant_is_not_weighed_by_a_worker_ceiling() -> None:
    assert GRANTED.exceeds(BUILTIN_PROFILES["readonly"]) == []


async def test_without_a_job_engine_the_tool_says_how_to_get_one(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(tool_call("fan_out", {"prompts": ["a"]}), text("ok"))
    agent = Agent(
        AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path), profile=GRANTED)
    )
    async with Session(agent) as session:
        result = await session.run("go")
    tool_message = next(m for m in session.state.messages if m["role"] == "tool")
    assert result.status == "completed"
    assert "fan_out needs a job engine" in tool_message["content"]
    assert "dispatch.Dispatcher" in tool_message["content"]


class _Recorder:
    """A SubJobs that answers at once and remembers what it was asked."""

    def __init__(self) -> None:
        self.requests: list[SubJobRequest] = []

    async def run(self, request: SubJobRequest) -> list[SubJobResult]:
        self.requests.append(request)
        return [
            SubJobResult(0, "c0", "completed", text="x" * 30_000),
            SubJobResult(1, "c1", "error", error="ModelError: down"),
        ]


async def test_the_tool_result_is_compact_json_with_long_answers_cut(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(
        tool_call("fan_out", {"prompts": ["a", "b"], "profile": "readonly"}, id="call-7"),
        text("ok"),
    )
    agent = Agent(
        AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path), profile=GRANTED)
    )
    recorder = _Recorder()
    async with Session(agent) as session:
        session.sub_jobs = recorder
        await session.run("go")
    [request] = recorder.requests
    assert (request.call_id, request.prompts, request.profile) == ("call-7", ["a", "b"], "readonly")
    content = next(m for m in session.state.messages if m["role"] == "tool")["content"]
    seen = json.loads(content)
    assert (seen["completed"], seen["failed"]) == (1, 1)
    assert seen["children"][0]["text"].endswith(" [cut: answer too long]")
    assert len(seen["children"][0]["text"]) < 20_100, "two answers share 40,000 characters"
    assert seen["children"][1] == {
        "index": 1,
        "job_id": "c1",
        "status": "error",
        "error": "ModelError: down",
    }
