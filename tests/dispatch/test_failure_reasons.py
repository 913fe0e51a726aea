"""A run that ends badly on its own (the model API fails, max_turns) carries its reason into
JobInfo.error and the Celery task's result (what Flower shows), embedded and fleet alike: both
use JobRun, and both buses store what it passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dispatch.engine.memory_bus import MemoryBus
from dispatch.engine.run import JobRun, RunnerOptions
from dispatch.spec import build_spec
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, error, tool_call


async def test_a_model_error_is_the_jobs_error_and_the_task_results(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: error(400, "this model does not exist")
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    spec = build_spec("hello", config)
    bus = MemoryBus()
    await bus.submit([spec], "q")
    outcome = await JobRun(spec, bus, RunnerOptions(worker="w1")).run()
    assert outcome.status == "error"
    task_result = outcome.compact()  # the Celery task's return value, Flower's "result"
    assert "this model does not exist" in task_result["error"]
    [info] = await bus.get_info([spec.job_id])
    assert info is not None and info.status == "error"
    assert info.error == outcome.error and "this model does not exist" in info.error


async def test_max_turns_says_so_without_becoming_an_error(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    def respond(body: dict[str, Any]) -> Any:
        return tool_call("list", {"path": "."})

    model_server.responder = respond
    config = AgentConfig(
        base_url=model_server.base_url, working_dir=str(tmp_path), extras={"max_turns": 2}
    )
    spec = build_spec("loop", config)
    bus = MemoryBus()
    await bus.submit([spec], "q")
    outcome = await JobRun(spec, bus, RunnerOptions(worker="w1")).run()
    [info] = await bus.get_info([spec.job_id])
    assert info is not None and info.status == "max_turns"
    assert info.error is not None and "max_turns=2" in info.error
    assert outcome.compact()["error"] == info.error
