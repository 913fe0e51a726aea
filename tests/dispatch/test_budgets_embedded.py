"""Budgets and rate limits in embedded mode: the same semantics as the fleet, in-process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch import Dispatcher
from dispatch.batch import load_batch
from dispatch.errors import JobSpecError
from rho_agent import AgentConfig
from rho_agent.budgets import Budget
from rho_agent.testing import ScriptedModelServer, ScriptedUsage, text, tool_call

MODEL = "priced"
PRICES = {MODEL: {"input": 1_000_000.0, "output": 1_000_000.0}}
"""$1 a token."""


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    with Dispatcher(concurrency=4) as embedded:
        yield embedded


@pytest.fixture
def config(model_server: ScriptedModelServer, tmp_path: Path) -> AgentConfig:
    usage = ScriptedUsage(prompt_tokens=1_000, completion_tokens=10)
    model_server.responder = lambda body: (
        text("done", usage=usage)
        if body["messages"][-1]["role"] == "tool" and len(body["messages"]) > 8
        else tool_call("list", {"path": "."}, usage=usage)
    )
    return AgentConfig(
        model=MODEL,
        base_url=model_server.base_url,
        working_dir=str(tmp_path),
        extras={"prices": PRICES, "max_output_tokens": 10},
    )


def test_a_batch_budget_stops_the_fan_out_and_each_stopped_job_says_why(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    jobs = dispatcher.map([f"p{n}" for n in range(12)], config, batch_max_cost_usd=20_000.0)
    results = dispatcher.gather(jobs, timeout=60)
    statuses = [result.status for result in results]
    assert "budget_exceeded" in statuses and set(statuses) <= {"completed", "budget_exceeded"}
    (status,) = [s for s in dispatcher.budgets() if s.budget.scope.startswith("batch:")]
    assert status.spent_usd <= 20_000.0, "output capped and input known: no overshoot"
    assert status.spent_usd == pytest.approx(len(model_server.requests) * 1_010)
    for job, result in zip(jobs, results, strict=True):
        if result.status == "budget_exceeded":
            info = job.info()
            assert info.status == "budget_exceeded"
            assert info.error is not None and info.error.startswith(
                f"budget_exceeded: budget {status.budget.scope} exhausted: limit $20000, spent $"
            )


def test_a_job_budget_from_submit_and_a_fleet_budget_set_on_the_dispatcher(
    dispatcher: Dispatcher, config: AgentConfig
) -> None:
    job = dispatcher.submit("go", config, max_tokens=2_500)
    assert job.result(timeout=30).status == "budget_exceeded"
    assert "budget job:" in str(job.info().error)
    dispatcher.set_budget(Budget("fleet", max_cost_usd=0.5, window_s=86_400))
    other = dispatcher.submit("go", config)
    assert other.result(timeout=30).status == "budget_exceeded"
    assert str(other.info().error).startswith(
        "budget_exceeded: budget fleet exhausted: limit $0.5, spent $0"
    )


def test_a_batch_rate_limit_spaces_its_own_calls(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: text("ok")
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    limits = [{"requests": 2, "window_s": 0.5, "guard_s": 0}]
    started = time.monotonic()
    jobs = dispatcher.map(["a", "b", "c", "d", "e"], config, rate_limits=limits)
    assert {r.status for r in dispatcher.gather(jobs, timeout=30)} == {"completed"}
    assert time.monotonic() - started >= 1.0, "5 calls at 2 per 0.5 s need three windows"


def test_a_yaml_batch_carries_its_budget_and_a_bad_one_is_named(tmp_path: Path) -> None:
    path = tmp_path / "batch.yaml"
    path.write_text(
        "budget: {max_cost_usd: 5}\nrate_limits: [{model: m, requests: 10}]\n"
        "jobs: [a, {prompt: b, max_tokens: 100}]\n",
        encoding="utf-8",
    )
    first, second = load_batch(path)
    assert first.batch_id == second.batch_id and first.batch_max_cost_usd == 5
    assert second.max_tokens == 100 and first.rate_limits == [{"model": "m", "requests": 10}]
    path.write_text("budget: {usd: 5}\njobs: [a]\n", encoding="utf-8")
    with pytest.raises(JobSpecError, match="'budget' takes max_cost_usd"):
        load_batch(path)


async def test_the_task_result_flower_shows_says_why_a_budget_stopped_the_job(
    config: AgentConfig,
) -> None:
    from dispatch.engine.host import JobHost
    from dispatch.engine.memory_bus import MemoryBus
    from dispatch.engine.run import RunnerOptions
    from dispatch.spec import build_spec
    from rho_agent.budgets import MemorySpendLedger

    bus = MemoryBus()
    host = JobHost(bus, RunnerOptions(spend=MemorySpendLedger()))
    spec = build_spec("go", config, max_cost_usd=1.0)
    await bus.submit([spec], "q")
    summary = (await host.run(spec.encode())).compact()
    assert summary["status"] == "budget_exceeded"
    assert summary["error"].startswith(
        f"budget_exceeded: budget job:{spec.job_id} exhausted: limit $1, spent $0"
    )


def test_a_map_and_its_reduce_spend_from_one_batch_budget(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """Issue 14: the whole tree (map, then every reduce level) is one batch with one budget."""
    usage = ScriptedUsage(prompt_tokens=100, completion_tokens=10)
    model_server.responder = lambda body: text("a finding", usage=usage)
    config = AgentConfig(
        model=MODEL,
        base_url=model_server.base_url,
        working_dir=str(tmp_path),
        extras={"prices": PRICES, "max_output_tokens": 10},
    )
    budget = {"batch_max_cost_usd": 1_000_000.0}
    jobs = dispatcher.map([f"file {n}" for n in range(4)], config, batch_id="b-tree", **budget)
    reduction = dispatcher.reduce(jobs, "Summarise", config, batch_id="b-tree", **budget)
    assert reduction.result().status == "completed"
    (status,) = [s for s in dispatcher.budgets() if s.budget.scope == "batch:b-tree"]
    assert len(model_server.requests) == 5  # four map jobs and one reducer
    assert status.spent_usd == pytest.approx(5 * 110)
