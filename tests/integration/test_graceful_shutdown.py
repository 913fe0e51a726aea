"""SIGTERM to a real worker: it takes no new jobs, lets a short job finish, and hands a long one
back to the queue once its grace period ends; another worker resumes that job from its saved
state, so nothing is lost and no finished model call is made twice. Also `fleet status`'s view
of jobs in flight and of the queue."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest
import redis

from dispatch import Dispatcher, FleetSettings, Job
from dispatch.fleet.celery_broker import CeleryBroker
from dispatch.fleet.redis_bus import decode_entry
from dispatch.spec import build_spec
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, behaviour, text
from tests.integration._ops_support import alive, wait_for
from tests.integration.fleet import free_port
from workers.celery_app import HANDED_BACK
from workers.ops.local_fleet import Child, LocalFleet, LocalFleetOptions
from workers.ops.status import read_status

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(150),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH"),
]

PREFIX = "rho-test-graceful:"
GRACE_S = 4.0
SLOW_TURNS = 4
SLOW_DELAY_S = 2.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFleet, str]]:
    """Its own redis-server and three workers (no Flower), all killed at the end."""
    options = LocalFleetOptions(
        workers=3,
        concurrency=10,
        redis_port=free_port(),
        flower_port=None,
        run_dir=tmp_path_factory.mktemp("graceful"),
        env={
            "RHO_AGENT_KEY_PREFIX": PREFIX,
            "RHO_AGENT_SHUTDOWN_GRACE": str(GRACE_S),
            "RHO_AGENT_HEARTBEAT_INTERVAL": "0.5",
            "OPENAI_API_KEY": "sk-test-not-a-real-key",
        },
    )
    local = LocalFleet(options)
    try:
        endpoints = local.start()
        yield local, endpoints.broker_url
    finally:
        local.stop()


@pytest.fixture
def dispatcher(fleet: tuple[LocalFleet, str]) -> Iterator[Dispatcher]:
    with Dispatcher(settings=FleetSettings(broker_url=fleet[1], key_prefix=PREFIX)) as dispatcher:
        yield dispatcher


@pytest.fixture
def config(model_server: ScriptedModelServer) -> AgentConfig:
    """Prompts starting "slow" call the noop tool SLOW_TURNS times, 2 s per model call."""
    slow = behaviour(f"noop-tools:{SLOW_TURNS}", delay=SLOW_DELAY_S)
    medium = behaviour("noop-tools:1", delay=0.7)

    def respond(body: dict[str, Any]) -> ScriptedResponse | Awaitable[ScriptedResponse]:
        prompt = str(body["messages"][1]["content"])
        if prompt.startswith("slow"):
            return slow(body)
        if prompt.startswith("medium"):
            return medium(body)
        return text(f"Echo: {prompt}")

    model_server.responder = respond
    return AgentConfig(model="scripted", base_url=model_server.base_url)


def test_a_stopping_worker_finishes_its_job_and_takes_no_new_ones(
    fleet: tuple[LocalFleet, str], dispatcher: Dispatcher, config: AgentConfig
) -> None:
    medium = dispatcher.submit("medium job", config)
    worker = _running_on(fleet[0], medium)
    worker.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    quick = dispatcher.map([f"quick {index}" for index in range(4)], config)

    results = dispatcher.gather([medium, *quick], timeout=60)
    assert [result.status for result in results] == ["completed"] * 5
    info = medium.info()
    assert (info.worker, info.attempt) == (worker.name, 1)  # finished where it ran, once
    ran_quick = {str(job.info().worker) for job in quick}
    assert worker.name not in ran_quick, "a stopping worker took a new job"
    assert worker.process.wait(15) == 0
    assert not (fleet[0].run_dir / "health" / f"{worker.name}.json").exists()


def test_a_job_outliving_the_grace_is_handed_back_and_resumed_elsewhere(
    fleet: tuple[LocalFleet, str],
    dispatcher: Dispatcher,
    config: AgentConfig,
    model_server: ScriptedModelServer,
) -> None:
    job = dispatcher.submit("slow job", config)
    worker = _running_on(fleet[0], job)
    wait_for(lambda: job.info().turns >= 1, 20, "the job's first model call")
    in_flight = read_status(dispatcher.settings).in_flight
    assert [(view.job_id, view.status, view.worker) for view in in_flight] == [
        (job.id, "running", worker.name)
    ]
    stopped_at = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(GRACE_S + 10) == 0
    took = time.monotonic() - stopped_at
    assert GRACE_S - 0.5 <= took <= GRACE_S + 5, f"the worker stopped after {took:.1f} s"
    log = worker.log.read_text(errors="replace")
    assert HANDED_BACK in log and "CancelledError" not in log, "rejected in Flower, not failed"

    result = dispatcher.gather([job], timeout=60)[0]
    info = job.info()
    assert (result.status, result.text) == ("completed", "done")
    assert info.attempt == 2 and info.worker != worker.name
    assert "job_restarted" in [event.type for event in result.events]
    assert _lifecycle(fleet[1], job.id) == ["started", "handed_back", "restarted", "finished"]

    # The session's state was saved and resumed: its history holds each tool result once, and
    # at most the one model call that was streaming when the grace ended was made again.
    tool_results = [m for m in job.state().messages if m["role"] == "tool"]
    assert len(tool_results) == SLOW_TURNS
    calls = [r for r in model_server.requests if r.body["messages"][1]["content"] == "slow job"]
    assert SLOW_TURNS + 1 <= len(calls) <= SLOW_TURNS + 2


def _running_on(fleet: LocalFleet, job: Job) -> Child:
    """The worker process running ``job`` (once it has started)."""
    name = wait_for(lambda: job.info().worker, 20, f"job {job.id} to start")
    child = next(child for child in fleet.children if child.name == name)
    assert alive(child.process.pid)
    return child


def _lifecycle(broker: str, job_id: str) -> list[str]:
    with redis.Redis.from_url(broker, decode_responses=True) as client:
        entries = client.xrange(f"{PREFIX}job:{job_id}:events")
    kinds = [item for _, fields in entries for item in decode_entry(fields["d"])]
    return [entry["type"] for entry in kinds if entry.get("kind") == "job"]


def test_status_counts_waiting_messages_at_every_priority(fleet: tuple[LocalFleet, str]) -> None:
    settings = FleetSettings(broker_url=fleet[1], key_prefix=PREFIX, queue="nobody-consumes")
    broker = CeleryBroker(settings)
    try:
        config = AgentConfig(model="scripted")
        broker.send([build_spec(f"p{n}", config, priority=n) for n in (0, 4, 9)])
    finally:
        broker.close()
    status = read_status(settings)
    assert (status.queue, status.queued) == ("nobody-consumes", 3)
    assert {view.name for view in status.workers} == {child.name for child in _workers(fleet[0])}


def _workers(fleet: LocalFleet) -> list[Child]:
    return [
        child for child in fleet.children if child.role == "worker" and child.process.poll() is None
    ]
