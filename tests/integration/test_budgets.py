"""Budgets on a real fleet: real Redis, real worker processes, the scripted model.

The scripted model reports, for each call, exactly the input tokens the session estimated
(``compaction.request_tokens`` of the same messages and tools) and 80 output tokens while the
request's cap is 50: every call overruns its reservation by exactly 30 output tokens, the worst a
misbehaving server can do here. At $1 a token, dollars read as tokens.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dispatch import Dispatcher
from rho_agent import AgentConfig, compaction
from rho_agent.budgets import Budget
from rho_agent.cli.app import app
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, ScriptedUsage, text, tool_call
from tests.integration.fleet import Fleet, running_fleet

pytestmark = pytest.mark.integration

MODEL = "budget-test-model"
CAP, OUTPUT = 50, 80
OVERRUN_USD = OUTPUT - CAP
"""What one call can spend past its reservation ($1 a token)."""
TURNS = 5
"""Model calls the longest job needs (tool calls, then the answer); each prompt needs 1-5."""
SLOTS = 50
"""Jobs each of the two workers runs at once: 100 in flight, the other 100 wait in the queue."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("budget-fleet")
    slots = {"RHO_AGENT_WORKER_CONCURRENCY": str(SLOTS)}
    with running_fleet(tmp, {"b1": slots, "b2": slots}) as running:
        yield running


@pytest.fixture
def dispatcher(fleet: Fleet) -> Iterator[Dispatcher]:
    with fleet.dispatcher() as client:
        yield client


def priced_config(server: ScriptedModelServer, tmp_path: Path) -> AgentConfig:
    server.responder = _respond
    return AgentConfig(
        model=MODEL,
        base_url=server.base_url,
        working_dir=str(tmp_path),
        profile="readonly",
        extras={
            "prices": {MODEL: {"input": 1_000_000, "output": 1_000_000}},
            "max_output_tokens": CAP,
        },
    )


def _respond(body: dict[str, Any]) -> ScriptedResponse:
    messages = body["messages"]
    usage = ScriptedUsage(
        prompt_tokens=compaction.count_tokens(messages, body.get("tools") or []),
        completion_tokens=OUTPUT,
    )
    done, prompt = 0, ""
    for message in reversed(messages):
        if message.get("role") == "user":
            prompt = str(message.get("content"))
            break
        done += message.get("role") == "tool"
    if done < zlib.crc32(prompt.encode()) % TURNS:
        return tool_call("list", {"path": "."}, usage=usage, delay=0.2)
    return text("done", usage=usage, delay=0.2)


def _served_usd(server: ScriptedModelServer) -> float:
    """What every call the server answered cost ($1 a token)."""
    total = 0
    for request in server.requests:
        messages, tools = request.body["messages"], request.body.get("tools") or []
        total += compaction.count_tokens(messages, tools) + OUTPUT
    return float(total)


def test_200_jobs_under_one_batch_budget_stop_within_the_bound(
    fleet: Fleet,
    dispatcher: Dispatcher,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    config = priced_config(model_server, tmp_path)
    limit = 600_000.0
    jobs = dispatcher.map([f"job {n}" for n in range(200)], config, batch_max_cost_usd=limit)
    results = dispatcher.gather(jobs, timeout=240)
    infos = dispatcher.infos([job.id for job in jobs])
    statuses = [result.status for result in results]
    stopped = [info for info in infos if info is not None and info.status == "budget_exceeded"]
    assert set(statuses) <= {"completed", "budget_exceeded"}, statuses
    assert stopped, "the budget covers about half of the work"
    batch_id = json.loads(fleet.redis().hget(f"{fleet.prefix}job:{jobs[0].id}", "spec"))["batch_id"]
    scope = f"batch:{batch_id}"
    for info in stopped:
        assert info.error is not None and info.error.startswith(
            f"budget_exceeded: budget {scope} exhausted: limit ${limit:.0f}, spent $"
        )
    never_called = [info for info in stopped if info.turns == 0]

    (status,) = [s for s in dispatcher.budgets() if s.budget.scope == scope]
    spent, served = status.spent_usd, _served_usd(model_server)
    assert status.reserved_usd == pytest.approx(0, abs=1e-6), "every reservation was settled"
    assert spent == pytest.approx(served), "every call the model answered was reserved and settled"
    assert spent == pytest.approx(sum(info.cost_usd for info in infos if info is not None))
    in_flight_max = 2 * SLOTS
    bound = limit + in_flight_max * OVERRUN_USD
    overshoot = spent - limit
    print(
        f"\nbatch budget ${limit:,.0f}: spent ${spent:,.0f} over {len(model_server.requests)} "
        f"calls; overshoot ${overshoot:,.0f} (bound ${in_flight_max * OVERRUN_USD:,.0f} = "
        f"{in_flight_max} calls in flight x ${OVERRUN_USD}); {len(stopped)} jobs stopped, "
        f"{len(never_called)} before their first call"
    )
    assert spent <= bound
    completed = statuses.count("completed")
    assert (
        len(model_server.requests) <= completed * TURNS + (len(stopped) - len(never_called)) * TURNS
    )


def test_a_label_budget_per_day_is_shared_by_two_batches(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    config = priced_config(model_server, tmp_path)
    limit = 100_000.0
    dispatcher.set_budget(Budget("label:team=ops", max_cost_usd=limit, window_s=86_400))
    first = dispatcher.map([f"a{n}" for n in range(10)], config, labels={"team": "ops"})
    assert {r.status for r in dispatcher.gather(first, timeout=120)} == {"completed"}
    (after_first,) = [s for s in dispatcher.budgets() if s.budget.scope == "label:team=ops"]
    assert 0 < after_first.spent_usd < limit and after_first.budget.window_s == 86_400

    second = dispatcher.map([f"b{n}" for n in range(40)], config, labels={"team": "ops"})
    other = dispatcher.map([f"c{n}" for n in range(5)], config, labels={"team": "dev"})
    second_results = dispatcher.gather(second, timeout=120)
    assert {r.status for r in dispatcher.gather(other, timeout=120)} == {"completed"}
    assert "budget_exceeded" in {r.status for r in second_results}
    (label,) = [s for s in dispatcher.budgets() if s.budget.scope == "label:team=ops"]
    assert label.exhausted is not None
    assert label.spent_usd <= limit + 40 * OVERRUN_USD
    for info in dispatcher.infos([job.id for job in second]):
        assert info is not None
        if info.status == "budget_exceeded":
            assert info.error is not None and "budget label:team=ops exhausted" in info.error

    listed = CliRunner().invoke(
        app,
        ["budgets", "--json", "--broker", str(dispatcher.settings.broker_url)],
        env={"RHO_AGENT_KEY_PREFIX": dispatcher.settings.key_prefix},
    )
    assert listed.exit_code == 0, listed.output
    rows = {row["scope"]: row for row in json.loads(listed.stdout)}
    assert rows["label:team=ops"]["max_cost_usd"] == limit
    assert rows["label:team=ops"]["spent_usd"] == pytest.approx(label.spent_usd)
    assert rows["label:team=ops"]["exhausted"].startswith("budget label:team=ops exhausted")

    env = {"RHO_AGENT_KEY_PREFIX": dispatcher.settings.key_prefix}
    broker = ["--broker", str(dispatcher.settings.broker_url)]
    made = CliRunner().invoke(
        app,
        ["budgets", "set", "label:team=cli", "--tokens", "5000", "--window", "12h", *broker],
        env=env,
    )
    assert made.exit_code == 0, made.output
    (cli_set,) = [s for s in dispatcher.budgets() if s.budget.scope == "label:team=cli"]
    assert (cli_set.budget.max_tokens, cli_set.budget.window_s) == (5000, 43_200)
    refused = CliRunner().invoke(app, ["budgets", "set", "job:j1", "--usd", "1", *broker], env=env)
    assert refused.exit_code == 2 and "'fleet' or 'label:KEY=VALUE'" in refused.output
