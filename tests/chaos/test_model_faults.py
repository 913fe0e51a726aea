"""Chaos: the model misbehaves under a multi-turn fan-out: a 429/5xx storm (with Retry-After),
streams reset mid-answer or ended without their terminal event, and a response that never comes.

One fleet of two workers, the scripted model. Every job's first request on each turn fails in
the way its group says; the client retries (refused requests with the SDK's backoff and the
server's Retry-After, broken streams with the same backoff), so each job completes, and no tool
runs with half its arguments. The hanging job ends at its own time limit with a reason.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, error, text, tool_call
from tests.chaos.accounting import account, broken_histories, print_ledger
from tests.chaos.ledger import FACTORY
from tests.integration.fleet import running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(120)]

JOBS = 24
TURNS = 3
RETRY_AFTER_MS = 400
HANG_LIMIT_S = 4.0
GROUPS = ("storm", "reset", "cut", "clean")
"""Job i is in group ``GROUPS[i % 4]``: what its first request of every turn gets."""


class FaultyModel:
    """A responder: per (prompt, turn), the first request fails as the prompt's group says,
    the next ones answer (a ``ledger`` call per turn, then ``done <prompt>``)."""

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger
        self.asked: Counter[tuple[str, int]] = Counter()
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> ScriptedResponse:
        done, prompt = 0, ""
        for message in reversed(body["messages"]):
            if message["role"] == "user":
                prompt = message["content"]
                break
            done += message["role"] == "tool"
        if prompt == "hang":
            return text("never", delay=600)
        with self.lock:
            self.asked[(prompt, done)] += 1
            tries = self.asked[(prompt, done)]
        if done < TURNS:
            answer = tool_call("ledger", {"path": str(self.ledger), "key": f"{prompt}#{done + 1}"})
        else:
            answer = text(f"done {prompt}")
        group = GROUPS[int(prompt.removeprefix("job")) % len(GROUPS)]
        if group == "storm" and tries == 1:
            return error(429, "slow down", headers={"retry-after-ms": str(RETRY_AFTER_MS)})
        if group == "storm" and tries == 2:
            return error(503, "overloaded")
        if group == "reset" and tries == 1:  # the tool call's arguments are half sent
            return _with(answer, disconnect_after_chunks=2)
        if group == "cut" and tries == 1:  # a clean end of the body, without [DONE]
            return _with(answer, end_after_chunks=2)
        return answer


def _with(answer: ScriptedResponse, **fields: Any) -> ScriptedResponse:
    import dataclasses

    return dataclasses.replace(answer, arguments_chunk_size=4, text_chunk_size=2, **fields)


def test_model_storms_and_broken_streams_are_retried_and_a_hang_ends(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    model = FaultyModel(ledger)
    model_server.responder = model
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    env = {"RHO_AGENT_AGENT_FACTORY": FACTORY}
    with running_fleet(tmp_path, {"w0": env, "w1": env}) as fleet, fleet.dispatcher() as d:
        started = time.monotonic()
        hung = d.submit("hang", config, timeout_s=HANG_LIMIT_S)
        jobs = d.map([f"job{index}" for index in range(JOBS)], config)
        results = d.gather(jobs, timeout=90)
        took_s = time.monotonic() - started
        hung_result = hung.result(timeout=30)
        hung_info = hung.info()
        counts, book = account(fleet.redis(), fleet.settings.keys, jobs, results, ledger)
        broken = broken_histories(d, jobs, TURNS)
    requests = model_server.requests
    scenario = f"{JOBS} jobs under a 429/503 storm, reset and cut streams"
    counts.report(scenario)
    print_ledger(scenario, book)
    gaps = _retry_gaps(requests)
    print(
        f"[chaos] {scenario}: {len(requests)} model requests, all done in {took_s:.1f} s; "
        f"after a 429 the next try came {min(gaps):.2f}-{max(gaps):.2f} s later; the hanging "
        f"job ended {hung_info.status!r} after {hung_info.duration_s or 0:.1f} s: "
        f"{hung_info.error!r}"
    )
    assert counts.completed == JOBS and counts.lost == 0
    assert (counts.duplicate_results, counts.duplicate_events_seen) == (0, 0)
    assert book.steps == {f"job{i}#{t}" for i in range(JOBS) for t in range(1, TURNS + 1)}
    assert book.runs == JOBS * TURNS, "no tool ran twice, none with half its arguments"
    assert broken == []
    assert [r.text for r in results] == [f"done job{i}" for i in range(JOBS)]
    assert len(gaps) == JOBS // len(GROUPS) * (TURNS + 1)
    assert min(gaps) >= RETRY_AFTER_MS / 1000 * 0.9, "Retry-After was honoured"
    assert hung_result.status != "completed" and hung_info.finished
    assert hung_info.error and "timed out" in hung_info.error
    assert (hung_info.duration_s or 0) < HANG_LIMIT_S + 5


def _retry_gaps(requests: list[Any]) -> list[float]:
    """Seconds between each 429'd request of a storm job and the next request of that turn."""
    by_turn: dict[tuple[str, int], list[float]] = {}
    for request in requests:
        messages = request.body["messages"]
        prompt = next((m["content"] for m in messages if m["role"] == "user"), "")
        if not prompt.startswith("job") or GROUPS[int(prompt[3:]) % len(GROUPS)] != "storm":
            continue
        turn = sum(1 for m in messages if m["role"] == "tool")
        by_turn.setdefault((prompt, turn), []).append(request.timestamp)
    return [times[1] - times[0] for times in by_turn.values() if len(times) > 1]
