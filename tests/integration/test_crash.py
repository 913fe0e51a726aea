"""Crash safety: a worker killed mid-job, and a job outliving Celery's visibility timeout.

The workers here have a 2 s lease and a 2 s visibility timeout, so both cases show up quickly.
The kill runs on both brokers: on RabbitMQ the dead worker's unacknowledged message comes back
at once (the broker redelivers when the connection closes) as well as through the sweeper, and
the job still runs once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, text, tool_call
from tests.integration.fleet import (
    Broker,
    Fleet,
    on_both_brokers,
    on_redis_broker,
    running_fleet,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Fleet]:
    short = {"RHO_AGENT_VISIBILITY_TIMEOUT": "2"}
    workers = {"wa": short, "wb": short}
    with running_fleet(tmp_path_factory.mktemp(f"crash-{broker}"), workers, broker) as started:
        yield started


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


@on_both_brokers
def test_a_killed_workers_job_resumes_elsewhere_exactly_once(
    fleet: Fleet, broker: Broker, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    model_server.responder = marking(marks, 6, delay=0.4)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    with fleet.dispatcher() as dispatcher:
        job = dispatcher.submit("mark six times", config)
        events, killed_at, restarted_at, victim = [], 0.0, 0.0, ""
        for event in job.events():
            events.append(event)
            if [e.type for e in events].count("tool_end") == 2 and not killed_at:
                victim = job.info().worker or ""
                time.sleep(0.05)  # the worker is now waiting on the model's next answer
                fleet.workers[victim].kill(signal.SIGKILL)
                killed_at = time.monotonic()
            if event.type == "job_restarted":
                restarted_at = time.monotonic()
        result = job.result(timeout=5)
        info = job.info()
    print(f"\njob resumed {restarted_at - killed_at:.2f} s after its worker was killed")
    assert (result.status, result.text) == ("completed", "done")
    assert marks.read_text().split() == [str(n) for n in range(1, 7)], "no tool ran twice"
    assert [event.type for event in events].count("job_restarted") == 1
    assert [event.type for event in result.events].count("tool_end") == 6
    assert (info.attempt, info.worker) == (2, "wb" if victim == "wa" else "wa")
    assert 0 < restarted_at - killed_at < 2 + 0.5 + 2.0, "lease + sweep interval + margin"
    if broker == "amqp":
        # RabbitMQ gave the survivor the dead worker's own delivery too, while the lease still
        # held: START turned it away, and the sweeper's re-send is the one attempt 2 ran.
        survivor = fleet.workers[info.worker or ""]
        wait_until(lambda: "'reason': 'running elsewhere'" in survivor.log(), 5, "redelivery")
    fleet.add_worker(victim, RHO_AGENT_VISIBILITY_TIMEOUT="2").wait_ready()


@on_redis_broker
def test_a_job_longer_than_the_visibility_timeout_runs_once(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    model_server.responder = marking(marks, 12, delay=0.5)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    with fleet.dispatcher() as dispatcher:
        job = dispatcher.submit("mark twelve times", config, queue=fleet.queue_of("wb"))
        wait_until(lambda: marks.exists() and len(marks.read_text().split()) >= 4, 10, "4 marks")
        # A starting worker gives back every message unacknowledged for longer than the
        # visibility timeout: this job's message returns to wb's queue while wb still runs it.
        fleet.add_worker("wc", RHO_AGENT_VISIBILITY_TIMEOUT="2").wait_ready()
        result = job.result(timeout=30)
        info = job.info()
    assert result.status == "completed"
    assert marks.read_text().split() == [str(n) for n in range(1, 13)], "the job ran once"
    assert (info.attempt, info.worker) == (1, "wb")
    skipped = "'status': 'skipped'"
    wait_until(lambda: skipped in fleet.workers["wb"].log(), 5, "the duplicate delivery")
    assert "'reason': 'running elsewhere'" in fleet.workers["wb"].log()
