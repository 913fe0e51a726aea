"""Chaos: a stale worker is fenced off, no job is stranded, hand-backs are not failures.

Real Redis, real worker processes (2 s leases, a 0.5 s sweep), the scripted model; the rolling
SIGTERMs also run with RabbitMQ as the broker (Redis then holds only the job bus). Each test
prints its counts (``[chaos] ...``): completed, lost, duplicate results, duplicate events stored
and seen, and side-effecting calls (``mark``) that ran twice.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from dispatch import Dispatcher
from rho_agent import AgentConfig, AgentEvent
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, text, tool_call
from tests.chaos.counts import ChaosCounts, count_job, count_marks
from tests.integration.fleet import (
    Broker,
    Fleet,
    claimed_db,
    on_both_brokers,
    running_fleet,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(60)]


def marking(marks: Path, total: int, delay: float) -> Any:
    """A model that calls ``mark`` 1..total (each answer after ``delay`` s), then says done."""

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        done = 0
        for message in reversed(body["messages"]):
            if message["role"] == "user":
                break
            done += message["role"] == "tool"
        if done < total:
            return tool_call("mark", {"path": str(marks), "n": done + 1}, delay=delay)
        return text("done", delay=delay)

    return respond


def assert_intact_history(fleet: Fleet, dispatcher: Dispatcher, job_id: str, calls: int) -> None:
    """One run, every tool call answered once, nothing a stale attempt wrote."""
    state = dispatcher.job(job_id).state()
    types = [record["type"] for record in state.records]
    assert state.run_count == 1
    assert "cancelled" not in types and types.count("run_end") == 1
    tool_messages = [m for m in state.messages if m["role"] == "tool"]
    answered = [m["tool_call_id"] for m in tool_messages]
    asked = [c["id"] for m in state.messages for c in m.get("tool_calls") or []]
    assert len(answered) == len(set(answered)) == calls and set(answered) == set(asked)


def other(name: str) -> str:
    return "wb" if name == "wa" else "wa"


def test_a_worker_stopped_past_its_lease_is_fenced_off(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    model_server.responder = marking(marks, 6, delay=0.4)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    counts = ChaosCounts()
    with running_fleet(tmp_path, {"wa": {}, "wb": {}}) as fleet, fleet.dispatcher() as dispatcher:
        job = dispatcher.submit("mark six times", config)
        seen: list[AgentEvent] = []
        victim, resumed = "", False
        for event in job.events():
            seen.append(event)
            ends = [e.type for e in seen].count("tool_end")
            if ends == 2 and not victim:
                victim = job.info().worker or ""
                fleet.workers[victim].kill(signal.SIGSTOP)  # past its 2 s lease
            if event.type == "job_restarted":
                resumed = True
            if resumed and event.type == "tool_end" and fleet.workers[victim].process:
                fleet.workers[victim].kill(signal.SIGCONT)  # back while attempt 2 runs
                resumed = False
        result = job.result(timeout=10)
        info = job.info()
        stale_log = fleet.workers[victim]
        wait_until(lambda: "'status': 'superseded'" in stale_log.log(), 10, "the stale run to stop")
        assert "a newer attempt owns the job" in stale_log.log()
        assert_intact_history(fleet, dispatcher, job.id, 6)
        client = fleet.redis()
        count_job(counts, client, fleet.settings.keys, job.id, result, seen)
        runs = count_marks(counts, marks)
    counts.report("worker SIGSTOPped past its lease, then SIGCONTed")
    assert (result.status, result.text) == ("completed", "done")
    assert (info.attempt, info.worker) == (2, other(victim))
    assert sorted(set(runs)) == list(range(1, 7))
    assert "cancelled" not in [event.type for event in seen + result.events]
    assert (counts.lost, counts.duplicate_results, counts.duplicate_events_seen) == (0, 0, 0)
    assert counts.reexecuted_side_effects == 0, "the stale worker ran no tool after waking"


def test_a_worker_killed_before_claiming_strands_nothing(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    model_server.responder = marking(marks, 2, delay=0.1)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    received = tmp_path / "received"
    counts = ChaosCounts()
    with claimed_db() as db:
        fleet = Fleet(db, tmp_path)
        try:
            slow = fleet.add_worker(
                "wa",
                app="tests.chaos.slow_claim",
                RHO_TEST_CLAIM_DELAY="60",
                RHO_TEST_RECEIVED_FILE=str(received),
            )
            slow.wait_ready()
            settings = dataclasses.replace(fleet.settings, queued_lease_s=2)
            with Dispatcher(settings=settings) as dispatcher:
                job = dispatcher.submit("mark twice", config)
                wait_until(received.exists, 15, "the slow worker to receive the job")
                slow.kill(signal.SIGKILL)  # received, never claimed: the message is unacked
                started = time.monotonic()
                fleet.add_worker("wb", RHO_AGENT_QUEUED_LEASE="2").wait_ready()
                result = job.result(timeout=30)
                recovered_s = time.monotonic() - started
                # The original delivery comes back late (a worker with a short visibility
                # timeout restores it at start): the attempt counter makes it a no-op.
                late = fleet.add_worker("wc", RHO_AGENT_VISIBILITY_TIMEOUT="1")
                late.wait_ready()
                wait_until(
                    lambda: "already completed" in late.log() + fleet.workers["wb"].log(),
                    15,
                    "the late original delivery",
                )
                count_job(counts, fleet.redis(), fleet.settings.keys, job.id, result)
                runs = count_marks(counts, marks)
                info = job.info()
        finally:
            fleet.stop()
    counts.report("worker SIGKILLed between receiving and claiming a job")
    print(f"[chaos] the stranded job completed {recovered_s:.1f} s after its worker was killed")
    assert result.status == "completed" and info.attempt == 1
    assert runs == [1, 2], "the job ran once"
    assert (counts.lost, counts.duplicate_results, counts.reexecuted_side_effects) == (0, 0, 0)


@on_both_brokers
def test_three_rolling_sigterms_do_not_fail_the_job(
    broker: Broker, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    model_server.responder = marking(marks, 8, delay=0.3)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    counts = ChaosCounts()
    fast = {"RHO_AGENT_SHUTDOWN_GRACE": "0"}
    workers = {"w0": fast, "w1": fast}
    with running_fleet(tmp_path, workers, broker) as fleet, fleet.dispatcher() as d:
        job = d.submit("mark eight times", config)
        seen: list[AgentEvent] = []
        terms = 0
        for event in job.events():
            seen.append(event)
            ends = [e.type for e in seen].count("tool_end")
            if event.type == "tool_end" and ends == 2 * (terms + 1) and terms < 3:
                running = job.info().worker or ""
                fleet.workers[running].stop()  # SIGTERM: the job is handed back at once
                terms += 1
                fleet.add_worker(f"w{terms + 1}", **fast)  # the rolling replacement
        result = job.result(timeout=30)
        info = job.info()
        count_job(counts, fleet.redis(), fleet.settings.keys, job.id, result, seen)
        runs = count_marks(counts, marks)
        handbacks = fleet.redis().hget(fleet.settings.keys.job(job.id), "handbacks")
    counts.report(f"three rolling SIGTERMs on the job's worker ({broker} broker)")
    assert terms == 3 and handbacks == "3"
    assert result.status == "completed", result.events[-1]
    assert info.attempt == 4, "three hand-backs and the attempt that finished"
    assert sorted(set(runs)) == list(range(1, 9))
    assert (counts.lost, counts.duplicate_results, counts.duplicate_events_seen) == (0, 0, 0)
