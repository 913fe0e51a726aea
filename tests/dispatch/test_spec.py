"""JobSpec: built from SDK values, decoded from untrusted payloads, never carrying a secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatch import JobSpec, JobSpecError
from dispatch.spec import build_spec, find_secrets
from rho_agent import AgentConfig, PermissionProfile


def test_round_trip_through_json() -> None:
    spec = build_spec(["one", "two"], AgentConfig(model="gpt-5"), labels={"team": "a"})
    decoded = JobSpec.decode(json.dumps(spec.encode()))
    assert decoded == spec
    assert decoded.prompts == ["one", "two"]
    assert decoded.agent_config().model == "gpt-5"
    assert not decoded.continue_session


def test_session_id_given_means_continue() -> None:
    spec = build_spec("hi", AgentConfig(), session_id="s-1", continue_session=True)
    assert spec.session_id == "s-1" and spec.continue_session


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"v": 2, "job_id": "j"}, "version 2 is not supported"),
        ({"job_id": "j", "prompts": [], "config": {}, "session_id": "s"}, "'prompts'"),
        ({"job_id": "j", "prompts": ["x"], "config": {}, "session_id": "s", "boom": 1}, "boom"),
        ({"job_id": "../etc", "prompts": ["x"], "config": {}, "session_id": "s"}, "job_id"),
        ({"job_id": "j", "prompts": ["x"], "config": {}}, "missing field 'session_id'"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_clear_error(payload: object, message: str) -> None:
    with pytest.raises(JobSpecError) as caught:
        JobSpec.decode(payload)
    assert message in str(caught.value)


@pytest.mark.parametrize("prompts", [None, 5])
def test_prompts_that_are_not_text_are_named(prompts: object) -> None:
    with pytest.raises(JobSpecError, match=f"field 'prompts'.*got {prompts}"):
        build_spec(prompts, AgentConfig())  # type: ignore[arg-type]


def test_bad_config_is_named_when_used() -> None:
    spec = JobSpec.decode(
        {"job_id": "j", "prompts": ["x"], "config": {"modle": "x"}, "session_id": "s"}
    )
    with pytest.raises(JobSpecError, match="modle"):
        spec.agent_config()


@pytest.mark.parametrize(
    "extras",
    [
        {"api_key": "abc"},
        {"nested": {"openai_api_key": "abc"}},
        {"anything": "sk-abcdefghijklmnopqrstuvwxyz"},
        {"url": "https://user:hunter2@example.com/v1"},
    ],
)
def test_configs_holding_secrets_are_refused(extras: dict[str, object]) -> None:
    with pytest.raises(JobSpecError, match="secret"):
        build_spec("hi", AgentConfig(extras=extras))


def test_find_secrets_ignores_harmless_names() -> None:
    assert find_secrets({"max_tokens": 5, "token_budget": 3, "url": "https://example.com"}) == []


def test_local_files_travel_as_content(tmp_path: Path) -> None:
    (tmp_path / "prompt.md").write_text("You are {{ role }}.", encoding="utf-8")
    (tmp_path / "careful.yaml").write_text("shell: none\nwrite: none\n", encoding="utf-8")
    config = AgentConfig(
        system_prompt=str(tmp_path / "prompt.md"),
        vars={"role": "a tester"},
        profile=str(tmp_path / "careful.yaml"),
    )
    spec = build_spec("hi", config)
    assert spec.config["system_prompt"] == "You are {{ role }}."
    assert spec.config["profile"]["shell"] == "none"
    assert spec.profile_label == "careful"
    rebuilt = spec.agent_config()
    assert rebuilt.resolve_system_prompt() == "You are a tester."


def test_profile_objects_become_data() -> None:
    profile = PermissionProfile("mine", shell="none", write="none")
    spec = build_spec("hi", AgentConfig(profile=profile))
    assert spec.agent_config().profile == profile


def test_unknown_submit_options_are_named() -> None:
    with pytest.raises(JobSpecError, match="colour"):
        build_spec("hi", AgentConfig(), colour="blue")
