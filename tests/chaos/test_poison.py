"""Chaos: poison jobs (a 50 MB tool output, a tool call with malformed JSON arguments) run
among ordinary ones on the same two workers; the ordinary jobs are left alone and the poison
jobs end with an answer or a reason, never a dead worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, text, tool_call
from tests.chaos.accounting import account, print_ledger
from tests.chaos.ledger import FACTORY, ledger_turns
from tests.integration.fleet import running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(120)]

JOBS = 20
TURNS = 2
FLOOD_MB = 50


def poisoned(ledger: Path) -> Any:
    ordinary = ledger_turns(ledger, TURNS, delay=0.1)

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        messages = body["messages"]
        prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        answered = any(m["role"] == "tool" for m in messages)
        if prompt == "flood":
            return text("flooded") if answered else tool_call("flood", {"megabytes": FLOOD_MB})
        if prompt == "malformed":
            if answered:
                return text("gave up on bad json")
            return tool_call("ledger", '{"path": "' + str(ledger) + '", "key": "bad')
        return ordinary(body)

    return respond


def test_poison_jobs_leave_the_other_jobs_alone(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    model_server.responder = poisoned(ledger)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    env = {"RHO_AGENT_AGENT_FACTORY": FACTORY}
    with running_fleet(tmp_path, {"w0": env, "w1": env}) as fleet, fleet.dispatcher() as d:
        started = time.monotonic()
        poison = d.map(["flood", "malformed"], config)
        jobs = d.map([f"job{index}" for index in range(JOBS)], config)
        results = d.gather(jobs, timeout=60)
        took_s = time.monotonic() - started
        poison_results = d.gather(poison, timeout=60)
        poison_infos = [job.info() for job in poison]
        counts, book = account(fleet.redis(), fleet.settings.keys, jobs, results, ledger)
        alive = [w.name for w in fleet.workers.values() if w.process and w.process.poll() is None]
    scenario = f"{JOBS} jobs beside a {FLOOD_MB} MB tool output and malformed tool-call JSON"
    counts.report(scenario)
    print_ledger(scenario, book)
    print(
        f"[chaos] {scenario}: done in {took_s:.1f} s; poison jobs ended "
        f"{[(i.status, i.attempt, (i.error or '')[:70]) for i in poison_infos]}"
    )
    assert counts.completed == JOBS and counts.lost == 0
    assert (counts.duplicate_results, counts.duplicate_events_seen) == (0, 0)
    assert book.steps == {f"job{i}#{t}" for i in range(JOBS) for t in range(1, TURNS + 1)}
    assert alive == ["w0", "w1"], "no worker died"
    assert all(info.finished for info in poison_infos)
    # The flood cannot fit the model's context, and handling it holds the worker's loop for
    # seconds (past a 2 s lease, so it may be re-sent until it gives up): either way the job
    # ends with a reason, never a crash.
    flood, malformed = poison_infos
    assert flood.status == "error"
    assert "ContextWindowExceeded" in (flood.error or "") or "gave up" in (flood.error or "")
    assert (malformed.status, poison_results[1].text) == ("completed", "gave up on bad json")
    assert "bad" not in {key.split("#")[0] for key in book.steps}, "no call ran on bad JSON"
