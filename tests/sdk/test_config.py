"""AgentConfig: fields and defaults, YAML round trip, validation, prompt templates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rho_agent import Agent, AgentConfig, ConfigError, PermissionProfile, Session
from rho_agent.permissions.profile import load_profile


def test_fields_and_defaults_match_the_documented_api() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(AgentConfig)}
    assert list(defaults) == [
        "system_prompt", "vars", "model", "profile", "backend", "working_dir", "base_url",
        "service_tier", "reasoning_effort", "response_format", "auto_approve", "extras",
    ]  # fmt: skip
    config = AgentConfig()
    assert config.system_prompt is None and config.vars == {} and config.model == "gpt-5-mini"
    assert config.profile is None and config.backend == "local" and config.working_dir is None
    assert config.base_url is None and config.service_tier is None
    assert config.reasoning_effort is None and config.response_format is None
    assert config.auto_approve is True and config.extras == {}


def test_yaml_round_trip(tmp_path: Path) -> None:
    config = AgentConfig(
        system_prompt="You are {{ role }}.",
        vars={"role": "an analyst"},
        model="gpt-4.1-mini",
        profile="readonly",
        working_dir="/srv/data",
        base_url="http://127.0.0.1:8000/v1",
        service_tier="flex",
        reasoning_effort="high",
        response_format={"type": "json_object"},
        auto_approve=False,
        extras={"team": "sre", "max_turns": 5},
    )
    path = tmp_path / "agent.yaml"
    config.to_file(path)
    loaded = AgentConfig.from_file(path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.resolve_system_prompt() == "You are an analyst."


def test_profile_object_round_trips_through_yaml(tmp_path: Path) -> None:
    profile = PermissionProfile("auditors", shell="readonly", write="none")
    config = AgentConfig(profile=profile)
    config.to_file(tmp_path / "a.yaml")
    loaded = AgentConfig.from_file(tmp_path / "a.yaml")
    assert isinstance(loaded.profile, PermissionProfile) and loaded.profile == profile


def test_unknown_field_names_the_field_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("model: gpt-5\nsystem_promt: hello\n")
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_file(path)
    assert "system_promt" in str(info.value) and str(path) in str(info.value)


def test_mistyped_field_names_the_field_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("auto_approve: 'sometimes'\n")
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_file(path)
    assert "auto_approve" in str(info.value) and str(path) in str(info.value)


def test_an_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("system_prompt: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        AgentConfig.from_file(latin1)
    assert str(latin1) in str(info.value)
    with pytest.raises(ConfigError, match="directory") as info:
        AgentConfig.from_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_bad_backend_and_model_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="backend"):
        AgentConfig(backend="docker")
    with pytest.raises(ConfigError, match="model"):
        AgentConfig(model="")


def test_template_file_with_vars_relative_to_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "analyst.md").write_text(
        "Analyse {{service}} logs in {{ working_dir }}."
    )
    (tmp_path / "agent.yaml").write_text(
        "system_prompt: prompts/analyst.md\nvars: {service: billing}\nworking_dir: /var/log\n"
    )
    config = AgentConfig.from_file(tmp_path / "agent.yaml")
    assert config.resolve_system_prompt() == "Analyse billing logs in /var/log."


def test_missing_variable_is_named() -> None:
    config = AgentConfig(system_prompt="Hello {{ team }} and {{ region }}", vars={"team": "a"})
    with pytest.raises(ConfigError, match="region"):
        config.resolve_system_prompt()


def test_missing_template_file_is_an_error() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        AgentConfig(system_prompt="prompts/nope.md").resolve_system_prompt()


def test_default_prompt_needs_no_vars(tmp_path: Path) -> None:
    prompt = AgentConfig(working_dir=str(tmp_path)).resolve_system_prompt()
    assert str(tmp_path) in prompt and "{{" not in prompt


def test_profile_accepts_name_object_and_yaml_path(tmp_path: Path) -> None:
    assert Agent(AgentConfig(profile="readonly")).profile.name == "readonly"
    custom = PermissionProfile("mine", shell="none", write="none")
    assert Agent(AgentConfig(profile=custom)).profile is custom
    path = tmp_path / "profile.yaml"
    path.write_text("name: ops\nshell: readonly\nwrite: none\n")
    assert Agent(AgentConfig(profile=str(path))).profile == load_profile(str(path))


def test_agent_is_stateless_and_reusable(tmp_path: Path) -> None:
    agent = Agent(AgentConfig(system_prompt="Be brief.", profile="developer"))
    assert agent.system_prompt == "Be brief."
    assert {"bash", "read", "write", "edit", "glob", "grep", "list"} <= set(agent.registry.names)
    assert agent.create_client() is not None
    first, second = Session(agent), Session(agent)
    assert first.state is not second.state and first.state.messages is not second.state.messages


def test_readonly_agent_has_no_write_tools() -> None:
    names = set(Agent(AgentConfig(profile="readonly")).registry.names)
    assert "write" not in names and "edit" not in names and "read" in names
