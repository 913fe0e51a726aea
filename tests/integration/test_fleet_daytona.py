"""A dispatched job with a Daytona backend runs its tools in a sandbox the worker creates and
deletes when the job ends, also when it fails (real worker process, real SDK, fake Daytona)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rho_agent import AgentConfig
from rho_agent.backends.daytona.backend import DaytonaBackend
from rho_agent.testing import ScriptedModelServer, error, text, tool_call
from rho_agent.testing.fake_daytona import FakeDaytonaServer
from tests.integration.fleet import Fleet, running_fleet, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fake_daytona() -> Iterator[FakeDaytonaServer]:
    with FakeDaytonaServer() as server:
        yield server


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, fake_daytona: FakeDaytonaServer
) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("fleet"), {"wd": fake_daytona.env()}) as started:
        yield started


def config_for(model_server: ScriptedModelServer) -> AgentConfig:
    backend = DaytonaBackend(env_vars={"MODE": "sandboxed-on-a-worker"})
    return AgentConfig(base_url=model_server.base_url, profile="developer", backend=backend)


def test_job_tools_run_in_a_worker_owned_sandbox(
    fleet: Fleet, fake_daytona: FakeDaytonaServer, model_server: ScriptedModelServer
) -> None:
    before = len(fake_daytona.created)
    model_server.script(tool_call("bash", {"command": "echo $MODE"}), text("done"))
    with fleet.dispatcher() as dispatcher:
        result = dispatcher.submit("where am I?", config_for(model_server)).result(timeout=60)
    assert result.status == "completed", result.events
    outputs = [event.tool_result or "" for event in result.events if event.type == "tool_end"]
    assert "sandboxed-on-a-worker" in outputs[0]
    assert len(fake_daytona.created) == before + 1
    wait_until(lambda: fake_daytona.running == [], 10, "sandbox deletion")


def test_a_failed_job_still_deletes_its_sandbox(
    fleet: Fleet, fake_daytona: FakeDaytonaServer, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    before = len(fake_daytona.created)
    model_server.script(tool_call("bash", {"command": "true"}), error(400, "bad request"))
    with fleet.dispatcher() as dispatcher:
        result = dispatcher.submit("fail after a tool", config_for(model_server)).result(timeout=60)
    assert result.status == "error"
    assert len(fake_daytona.created) == before + 1
    wait_until(lambda: fake_daytona.running == [], 10, "sandbox deletion")
