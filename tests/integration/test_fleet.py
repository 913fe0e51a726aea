"""The fleet end to end: real Redis, two real worker processes, the scripted model server.

The tests marked ``on_both_brokers`` run twice: with Redis as the broker, and with RabbitMQ as
the broker (quorum queues, publisher confirms) and Redis as the job bus only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch import Dispatcher
from dispatch.fleet.celery_broker import RUN_JOB_TASK, CeleryBroker
from dispatch.fleet.redis_bus import RedisBus
from dispatch.spec import build_spec
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, behaviour, text, tool_call
from tests.integration.fleet import (
    CANARY_KEY,
    REPO_ROOT,
    Broker,
    Fleet,
    free_port,
    on_amqp_broker,
    on_both_brokers,
    on_redis_broker,
    rabbitmq_queues,
    running_fleet,
    wait_until,
)
from workers.ops.status import read_status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Fleet]:
    workers = {"wa": {"RHO_AGENT_WORKER_CONCURRENCY": "600"}, "wb": {}}
    with running_fleet(tmp_path_factory.mktemp(f"fleet-{broker}"), workers, broker) as started:
        yield started


@pytest.fixture
def dispatcher(fleet: Fleet) -> Iterator[Dispatcher]:
    with fleet.dispatcher() as fleet_dispatcher:
        yield fleet_dispatcher


@pytest.fixture
def config(model_server: ScriptedModelServer, tmp_path: Path) -> AgentConfig:
    model_server.responder = behaviour("echo")
    return AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))


def delayed_echo(delay: float) -> Any:
    echo = behaviour("echo")

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        answer = echo(body)
        assert isinstance(answer, ScriptedResponse)
        return text(answer.text, delay=delay)

    return respond


@on_both_brokers
def test_a_job_runs_on_a_worker(dispatcher: Dispatcher, config: AgentConfig) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.records: list[dict[str, Any]] = []

        def on_event(self, event: dict[str, Any]) -> None:
            self.records.append(event)

    recorder = Recorder()
    assert dispatcher.mode == "fleet"
    job = dispatcher.submit("hello fleet", config, observers=[recorder])
    result = job.result(timeout=20)
    assert (result.status, result.text) == ("completed", "Echo: hello fleet")
    assert list(job.events()) == result.events
    info = job.info()
    assert info.worker in ("wa", "wb") and info.turns == 1 and info.cost_usd > 0
    state = job.state()
    assert state.get_user_messages() == ["hello fleet"] and state.run_count == 1
    wait_until(lambda: len(recorder.records) == len(state.records), 5, "observer records")
    assert recorder.records == state.records


@on_amqp_broker
def test_on_rabbitmq_every_job_queue_is_a_quorum_queue(
    fleet: Fleet, dispatcher: Dispatcher, config: AgentConfig
) -> None:
    job = dispatcher.submit("which queue?", config, queue=fleet.queue_of("wb"))
    assert job.result(timeout=20).status == "completed"
    assert fleet.vhost is not None
    queues = rabbitmq_queues(fleet.vhost)
    job_queues = [fleet.queue, fleet.queue_of("wa"), fleet.queue_of("wb")]
    assert {name: queues.get(name) for name in job_queues} == dict.fromkeys(job_queues, "quorum")
    assert not fleet.redis().exists(fleet.queue), "no job went through Redis"
    waiting = [dispatcher.submit(f"wait {n}", config, queue="unconsumed-amqp") for n in range(2)]
    status = read_status(dataclasses.replace(fleet.settings, queue="unconsumed-amqp"))
    assert status.queued == 2 and "guest:***@" in status.broker, "fleet status reads RabbitMQ"
    assert [job.cancel() for job in waiting] == ["cancelled", "cancelled"]


@on_both_brokers
def test_fan_out_of_1000_jobs_comes_back_in_order(
    broker: Broker, dispatcher: Dispatcher, config: AgentConfig
) -> None:
    count = 1000 if broker == "redis" else 300  # the same path; kept short on the second run
    prompts = [f"job number {index}" for index in range(count)]
    started = time.monotonic()
    jobs = dispatcher.map(prompts, config)
    results = dispatcher.gather(jobs, timeout=120)
    elapsed = time.monotonic() - started
    assert [result.text for result in results] == [f"Echo: {prompt}" for prompt in prompts]
    assert {result.status for result in results} == {"completed"}
    workers = {info.worker for info in dispatcher.infos([job.id for job in jobs]) if info}
    print(f"\n{count} one-turn jobs via {broker}: {elapsed:.1f} s ({count / elapsed:.0f}/s)")
    assert workers == {"wa", "wb"}


@on_redis_broker
def test_one_worker_holds_500_jobs_in_flight(
    fleet: Fleet, dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = delayed_echo(6.0)
    jobs = dispatcher.map([f"wait {i}" for i in range(520)], config, queue=fleet.queue_of("wa"))
    ids = [job.id for job in jobs]
    peak, deadline = 0, time.monotonic() + 60
    while time.monotonic() < deadline:
        infos = dispatcher.infos(ids)
        peak = max(peak, sum(info is not None and info.status == "running" for info in infos))
        if all(info is not None and info.finished for info in infos):
            break
        time.sleep(0.1)
    results = dispatcher.gather(jobs, timeout=30)
    print(f"\npeak jobs running at once in worker wa: {peak}")
    assert {result.status for result in results} == {"completed"}
    assert peak >= 500
    assert {info.worker for info in dispatcher.infos(ids) if info} == {"wa"}


@on_both_brokers
def test_cancel_stops_a_running_job_within_a_second(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = delayed_echo(30)
    job = dispatcher.submit("never answered", config)
    wait_until(lambda: job.status() == "running", 10, "job start")
    started = time.monotonic()
    assert job.cancel() == "requested"
    result = job.result(timeout=5)
    elapsed = time.monotonic() - started
    print(f"\nrunning job cancelled in {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0
    assert result.status == "cancelled" and job.state().status == "cancelled"


@on_both_brokers
def test_cancel_revokes_a_queued_job(dispatcher: Dispatcher, config: AgentConfig) -> None:
    job = dispatcher.submit("nobody consumes this queue", config, queue="unconsumed")
    assert job.status() == "queued"
    assert job.cancel() == "cancelled"
    assert job.result(timeout=1).status == "cancelled"
    assert job.cancel() == "finished"


@on_both_brokers
def test_a_job_continues_a_session_on_another_worker(
    fleet: Fleet, dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    first = dispatcher.submit("my number is 7", config, queue=fleet.queue_of("wa"))
    first.result(timeout=20)
    second = dispatcher.submit(
        "what is my number?", config, session_id=first.session_id, queue=fleet.queue_of("wb")
    )
    assert second.result(timeout=20).text == "Echo: what is my number?"
    assert (first.info().worker, second.info().worker) == ("wa", "wb")
    sent = model_server.requests[-1].body["messages"]
    assert [m["content"] for m in sent if m["role"] != "system"] == [
        "my number is 7", "Echo: my number is 7", "what is my number?"
    ]  # fmt: skip
    state = second.state()
    assert state.run_count == 2 and state.get_user_messages()[-1] == "what is my number?"


@on_redis_broker
def test_a_profile_above_the_ceiling_is_refused(
    dispatcher: Dispatcher, config: AgentConfig
) -> None:
    config.profile = "unrestricted"
    job = dispatcher.submit("do anything", config)
    assert job.result(timeout=20).status == "error"
    error = job.info().error or ""
    assert "more than this worker's ceiling 'developer'" in error
    assert "RHO_AGENT_MAX_PROFILE" in error


@on_both_brokers
def test_malformed_payloads_are_rejected_and_workers_go_on(
    fleet: Fleet, dispatcher: Dispatcher, config: AgentConfig
) -> None:
    spec = build_spec("fine", config, reply_to=dispatcher.id)

    async def record_queued() -> None:
        bus = RedisBus.from_settings(fleet.settings)
        await bus.submit([spec], fleet.queue)
        await bus.close()

    asyncio.run(record_queued())
    broken = {**spec.encode(), "prompts": []}
    broker = CeleryBroker(fleet.settings)
    broker.app.send_task(RUN_JOB_TASK, kwargs={"spec": broken}, queue=fleet.queue)
    broker.app.send_task(RUN_JOB_TASK, kwargs={"spec": "not a job at all"}, queue=fleet.queue)
    broker.close()
    job = dispatcher.job(spec.job_id)
    assert job.result(timeout=20).status == "error"
    assert "field 'prompts'" in (job.info().error or "")
    wait_until(
        lambda: sum("rejected job payload" in w.log() for w in fleet.workers.values()) >= 1,
        10,
        "a rejection logged",
    )
    assert dispatcher.submit("still alive?", config).result(timeout=20).status == "completed"


@on_redis_broker
def test_secrets_never_reach_redis(
    fleet: Fleet, dispatcher: Dispatcher, config: AgentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    dispatcher.submit("anything secret?", config).result(timeout=20)
    dispatcher.submit("queued forever", config, queue="unconsumed-2")
    client = fleet.redis()
    dumped = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            dumped.append(client.get(key))
        elif kind == "hash":
            dumped.append(json.dumps(client.hgetall(key)))
        elif kind == "list":
            dumped.append(json.dumps(client.lrange(key, 0, -1)))
        elif kind == "stream":
            dumped.append(json.dumps(client.xrange(key)))
        elif kind == "zset":
            dumped.append(json.dumps(client.zrange(key, 0, -1)))
    assert len(dumped) > 10
    assert not any(CANARY_KEY in value for value in dumped if value)


@pytest.fixture(scope="module")
def flower(fleet: Fleet, _shared_model_server: ScriptedModelServer) -> Iterator[str]:
    port = free_port()
    env = fleet.env(FLOWER_UNAUTHENTICATED_API="true")
    code = f"from workers.ops.launch import run_flower; run_flower(port={port})"
    log = (fleet.tmp / "flower.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=REPO_ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{url}/healthcheck") == "OK", 30, "Flower start")
        _wait_until_flower_listens(fleet, url, _shared_model_server.base_url)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
        log.close()


def _wait_until_flower_listens(fleet: Fleet, url: str, model_url: str) -> None:
    """Flower answers before it follows task events: send jobs until it names one."""
    config = AgentConfig(base_url=model_url, system_prompt="warm up")
    with fleet.dispatcher() as dispatcher:
        for _ in range(20):
            job = dispatcher.submit("warm up", config)
            job.result(timeout=20)
            time.sleep(0.3)
            if json.loads(_get(f"{url}/api/tasks") or "{}").get(job.id, {}).get("name"):
                return
    raise AssertionError("Flower never showed a task")


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


@on_both_brokers
def test_flower_shows_readable_jobs_and_live_progress(
    flower: str,
    dispatcher: Dispatcher,
    config: AgentConfig,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    model_server.responder = lambda body: (
        text("done", delay=3.0) if body["messages"][-1]["role"] == "tool"
        else tool_call("list", {"path": "."}, delay=0.1)
    )  # fmt: skip
    job = dispatcher.submit("a job for Flower " * 10, config, labels={"team": "docs"})

    def task() -> dict[str, Any]:
        listing = json.loads(_get(f"{flower}/api/tasks") or "{}")
        return dict(listing.get(job.id) or {})

    progress = "'turns': 1, 'input_tokens'"
    wait_until(lambda: progress in str(task().get("result")), 15, "a progress event in Flower")
    assert task()["state"] == "PROGRESS"
    job.result(timeout=20)
    wait_until(lambda: task().get("state") == "SUCCESS", 10, "the final event in Flower")
    shown = task()
    assert shown["name"] == "rho_agent.run_job"
    assert "'prompt': 'a job for Flower a job for Flower" in shown["kwargs"]
    assert "'labels': {'team': 'docs'}" in shown["kwargs"]
    assert "'profile': 'readonly'" in shown["kwargs"] and "'session_id'" in shown["kwargs"]
    assert "'status': 'completed'" in shown["result"] and "'turns': 2" in shown["result"]
    assert CANARY_KEY not in (_get(f"{flower}/api/tasks") or "")
