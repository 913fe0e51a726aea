"""Jobs carry content, never worker paths or secrets; refusals name the field, never the value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from dispatch.engine.host import JobHost
from dispatch.engine.memory_bus import MemoryBus
from dispatch.engine.run import RunnerOptions
from dispatch.errors import JobSpecError
from dispatch.spec import JobSpec, build_spec
from rho_agent import Agent, AgentConfig
from rho_agent.backends.daytona import inline
from rho_agent.backends.daytona.backend import DaytonaBackend
from rho_agent.errors import ConfigError
from rho_agent.redact import default_redactor
from rho_agent.testing.fake_daytona import FakeDaytonaServer

SECRET = "sk-" + "Zq8" * 8


def payload(**config: Any) -> dict[str, Any]:
    spec = build_spec("hi", AgentConfig())
    return {**spec.encode(), "config": {**spec.config, **config}}


@pytest.mark.parametrize(
    "base_url",
    [
        f"https://models.example/v1?key={SECRET}",
        f"https://models.example/v1#Bearer {SECRET}",
        f"https://models.example/v1?api_key={SECRET[3:]}",
        "https://user:hunter2hunter2@models.example/v1",
    ],
)
def test_a_key_smuggled_in_base_url_is_refused_without_repeating_it(base_url: str) -> None:
    with pytest.raises(JobSpecError) as refused:
        JobSpec.decode(payload(base_url=base_url))
    assert "config.base_url" in str(refused.value)
    assert SECRET not in str(refused.value) and "hunter2" not in str(refused.value)
    with pytest.raises(JobSpecError) as refused_at_submit:
        build_spec("hi", AgentConfig(base_url=base_url))
    assert SECRET not in str(refused_at_submit.value)
    assert "hunter2" not in str(refused_at_submit.value)


@pytest.mark.parametrize(
    "fields",
    [{"session_id": SECRET}, {"job_id": SECRET}, {"labels": {"k": SECRET}}, {"queue": SECRET}],
)
def test_secrets_cannot_become_key_names_or_labels(fields: dict[str, Any]) -> None:
    with pytest.raises(JobSpecError) as refused:
        JobSpec.decode({**payload(), **fields})
    assert "looks like a secret" in str(refused.value) and SECRET not in str(refused.value)


def test_a_config_refused_for_another_reason_does_not_echo_its_values() -> None:
    with pytest.raises(JobSpecError) as refused:
        JobSpec.decode(payload(model=SECRET[3:] + "-model", extras=[SECRET]))
    assert SECRET not in str(refused.value)


def test_the_dispatchers_own_key_is_refused_wherever_it_hides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own = "plain-looking-value-31337"
    monkeypatch.setenv("MY_SERVICE_API_KEY", own)
    default_redactor.cache_clear()
    try:
        with pytest.raises(JobSpecError) as refused:
            build_spec("hi", AgentConfig(vars={"team": f"x{own}y"}))
    finally:
        default_redactor.cache_clear()
    assert "config.vars.team" in str(refused.value) and own not in str(refused.value)


def test_a_template_file_holding_a_secret_is_refused_after_it_is_read(tmp_path: Path) -> None:
    template = tmp_path / "system.md"
    template.write_text(f"You are helpful. Use key {SECRET} for the API.\n")
    with pytest.raises(JobSpecError) as refused:
        build_spec("hi", AgentConfig(system_prompt=str(template)))
    assert "config.system_prompt" in str(refused.value) and SECRET not in str(refused.value)


def test_templates_and_profile_files_travel_as_content(tmp_path: Path) -> None:
    template = tmp_path / "system.md"
    template.write_text("Be brief about {{ topic }}.\n")
    profile = tmp_path / "p.yaml"
    profile.write_text("name: tight\nshell: none\nwrite: none\n")
    spec = build_spec(
        "hi", AgentConfig(system_prompt=str(template), vars={"topic": "x"}, profile=str(profile))
    )
    assert spec.config["system_prompt"] == "Be brief about {{ topic }}.\n"
    assert isinstance(spec.config["profile"], dict)
    assert Agent(spec.agent_config()).system_prompt == "Be brief about x.\n"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"system_prompt": "/proc/self/environ"}, "config.system_prompt names a file"),
        ({"system_prompt": "~/.ssh/id_ed25519"}, "config.system_prompt names a file"),
        ({"system_prompt": "prompts/system.md"}, "config.system_prompt names a file"),
        ({"profile": "/etc/rho/profile.yaml"}, "config.profile must be one of"),
        ({"extras": {"_config_dir": "/proc/self"}}, "config.extras names starting with '_'"),
        ({"backend": {"forward_env": ["OPENAI_API_KEY"]}}, "config.backend.forward_env names"),
        ({"backend": {"forward_env": ["RHO_AGENT_BROKER_URL"]}}, "config.backend.forward_env"),
        (
            {"backend": {"uploads": [{"local": "/etc", "remote": "etc"}]}},
            "config.backend.uploads names files on the machine that runs the job",
        ),
    ],
)
def test_a_job_naming_a_worker_path_is_refused(config: dict[str, Any], field: str) -> None:
    with pytest.raises(JobSpecError, match=field):
        JobSpec.decode(payload(**config))


async def test_the_worker_refuses_a_path_prompt_before_reading_anything() -> None:
    bus = MemoryBus()
    bad = payload(system_prompt="/proc/self/environ")
    await bus.submit([build_spec("hi", AgentConfig(), job_id=bad["job_id"])], "q")
    host = JobHost(bus, RunnerOptions())
    with pytest.raises(JobSpecError, match="names a file"):
        await host.run(bad)
    [info] = await bus.get_info([bad["job_id"]])
    assert info is not None and info.status == "error"
    assert "names a file" in (info.error or "")


@pytest.mark.parametrize("prompt", [". Be brief.", "Answer in French.", "Say a/b or c"])
def test_one_line_prompts_that_are_text_pass(prompt: str) -> None:
    assert JobSpec.decode(payload(system_prompt=prompt)).config["system_prompt"] == prompt


def test_a_jobs_prompt_is_never_read_from_a_file_on_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "environ").write_text("OPENAI_API_KEY=leaked\n")
    monkeypatch.chdir(tmp_path)
    spec = JobSpec.decode(payload(system_prompt="environ"))
    assert Agent(spec.agent_config()).system_prompt == "environ"
    assert AgentConfig(system_prompt="environ").resolve_system_prompt().startswith("OPENAI")


async def test_uploads_travel_as_content_and_land_in_the_sandbox(
    fake_daytona: FakeDaytonaServer, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "mod.py").write_text("VALUE = 1\n")
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"read me\n\x00\xff")
    template = DaytonaBackend(working_dir="project", uploads=[f"{source}:code", (notes, "n.bin")])
    spec = build_spec("hi", AgentConfig(backend=template))
    uploads = spec.config["backend"]["uploads"]
    assert all("local" not in item for item in uploads) and len(uploads) == 2
    shutil.rmtree(source)
    notes.unlink()  # the worker never looks at the sender's files
    config = JobSpec.decode(json.loads(json.dumps(spec.encode()))).agent_config()
    assert isinstance(config.backend, DaytonaBackend)
    async with config.backend.for_session() as backend:
        root = backend.working_dir
        assert await backend.read_file(f"{root}/code/pkg/mod.py") == b"VALUE = 1\n"
        assert await backend.read_file(f"{root}/n.bin") == b"read me\n\x00\xff"


def test_uploads_too_large_for_a_job_are_refused_at_submit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline, "MAX_INLINE_BYTES", 10)
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(ConfigError, match="more than a job carries"):
        build_spec("hi", AgentConfig(backend=DaytonaBackend(uploads={tmp_path / "big": "b"})))
