"""Fail closed without Landlock; tool processes never see the worker's secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rho_agent.backends.local import LocalBackend
from rho_agent.errors import ConfigError, ConfinementUnavailable
from rho_agent.permissions import load_profile
from rho_agent.sandbox import Sandbox, Support, probe, tool_environment
from rho_agent.tools.base import ToolInvocation
from rho_agent.tools.builtin.shell import BashTool

_NO_LANDLOCK = Support(0, "this kernel has no Landlock (test)")


@pytest.mark.parametrize("profile", ["readonly", "developer"])
async def test_no_landlock_fails_closed_naming_the_opt_out(tmp_path: Path, profile: str) -> None:
    backend = LocalBackend(str(tmp_path), sandbox=Sandbox(_NO_LANDLOCK))
    with pytest.raises(ConfinementUnavailable) as refusal:
        await backend.run_command("touch made", timeout=5, profile=load_profile(profile))
    assert "no Landlock" in str(refusal.value)
    assert "RHO_AGENT_ALLOW_UNCONFINED=1" in str(refusal.value)
    assert not (tmp_path / "made").exists()


async def test_the_bash_tool_reports_the_refusal(tmp_path: Path) -> None:
    backend = LocalBackend(str(tmp_path), sandbox=Sandbox(_NO_LANDLOCK))
    invocation = ToolInvocation("c", "bash", {"command": "ls"}, backend, load_profile(None))
    with pytest.raises(ConfinementUnavailable, match="RHO_AGENT_ALLOW_UNCONFINED"):
        await BashTool("readonly").handle(invocation)


async def test_unrestricted_needs_no_landlock(tmp_path: Path) -> None:
    backend = LocalBackend(str(tmp_path), sandbox=Sandbox(_NO_LANDLOCK))
    result = await backend.run_command(
        "touch made", timeout=5, profile=load_profile("unrestricted")
    )
    assert result.exit_code == 0 and (tmp_path / "made").exists()


async def test_the_opt_out_runs_unconfined_and_says_so_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    backend = LocalBackend(str(tmp_path), sandbox=Sandbox(_NO_LANDLOCK, allow_unconfined=True))
    result = await backend.run_command("touch made", timeout=5, profile=load_profile("readonly"))
    assert result.exit_code == 0 and (tmp_path / "made").exists()
    assert sum("WITHOUT OS confinement" in r.getMessage() for r in caplog.records) >= 2


def test_from_env_reads_the_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RHO_AGENT_ALLOW_UNCONFINED", "1")
    assert Sandbox.from_env().allow_unconfined
    monkeypatch.setenv("RHO_AGENT_ALLOW_UNCONFINED", "yes")
    assert not Sandbox.from_env().allow_unconfined


@pytest.mark.skipif(probe().problem is not None, reason="no OS confinement here")
async def test_printenv_under_readonly_shows_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "OPENAI_API_KEY": "sk-canary-openai-1234567890",
        "DAYTONA_API_KEY": "dtn_canary_daytona_123456",
        "RHO_AGENT_BROKER_URL": "redis://:hunter2pass@127.0.0.1:6379/0",
        "REDIS_URL": "redis://127.0.0.1:6379/1",
        "GITHUB_TOKEN": "ghp_canarycanarycanary",
        "DB_PASSWORD": "canary-db-pw",
        "HARMLESS_LOOKING": "sk-proj-canaryvalue123456",
        "RHO_TEST_CANARY": "plain-canary-7f3a",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    backend = LocalBackend(str(tmp_path))
    invocation = ToolInvocation("c", "bash", {"command": "printenv"}, backend, load_profile(None))
    output = (await BashTool("readonly").handle(invocation)).content
    for name, value in secrets.items():
        assert name not in output and value not in output
    assert "LC_ALL=C.UTF-8" in output and "PATH=" in output


def test_the_allowlist_drops_secret_values_and_names() -> None:
    source = {
        "PATH": "/usr/bin",
        "HOME": "sk-live-abcdefghijkl",
        "LC_TIME": "C",
        "SHELL": "/bin/bash",
        "EXTRA": "ok",
        "API_TOKEN": "x",
    }
    assert tool_environment(source, ["EXTRA", "API_TOKEN"]) == {
        "PATH": "/usr/bin",
        "LC_TIME": "C",
        "EXTRA": "ok",
    }


def test_a_secret_looking_extra_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        LocalBackend(env_names=["OPENAI_API_KEY"])
