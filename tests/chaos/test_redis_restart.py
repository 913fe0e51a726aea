"""Redis restarted, or down for a while, while jobs run on one real worker.

Each test has its own redis-server (tests/chaos/redis_server.py), restarts it by pid, and prints
the counts and the recovery time it measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from dispatch import Dispatcher, Job
from dispatch.batch_run import BatchOutcome, BatchRun
from dispatch.errors import JobLost
from dispatch.settings import FleetSettings
from dispatch.spec import build_spec
from rho_agent import AgentConfig
from rho_agent.events import AgentEvent
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, text, tool_call
from tests.chaos.redis_server import RedisServer, redis_server
from tests.chaos.support import PortFleet, Stopwatch, chaos_fleet, lost_lease_lines, stepping
from tests.integration.fleet import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(60)]

WORKER_ENV = {"RHO_AGENT_LEASE_TTL": "3", "RHO_AGENT_SWEEP_INTERVAL": "0.5"}


class Forgetful(NamedTuple):
    server: RedisServer
    fleet: PortFleet
    settings: FleetSettings
    config: AgentConfig


@contextlib.contextmanager
def forgetful_setup(model_server: ScriptedModelServer, tmp_path: Path) -> Iterator[Forgetful]:
    """A worker ``w1`` on a Redis without persistence (to restart), a model answering after
    0.1 s, and dispatcher settings whose outage limit is 3 s."""
    model_server.responder = stepping(1, delay=0.1)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    with (
        redis_server(tmp_path / "redis") as server,
        chaos_fleet(tmp_path, server, {"w1": WORKER_ENV}) as fleet,
    ):
        settings = dataclasses.replace(fleet.settings, redis_outage_s=3.0)
        yield Forgetful(server, fleet, settings, config)


class EventReader(threading.Thread):
    """Iterates ``job.events()`` on its own thread and records what happened."""

    def __init__(self, job: Job) -> None:
        super().__init__(daemon=True)
        self.job = job
        self.events: list[AgentEvent] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for event in self.job.events():
                self.events.append(event)
        except BaseException as exc:
            self.error = exc


def settled(count: Callable[[], int], within_s: float = 5.0) -> int:
    """``count()`` once it is 0, or its value after ``within_s``."""
    deadline = time.monotonic() + within_s
    while (value := count()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def run_through(
    server: RedisServer, fleet: PortFleet, config: AgentConfig, *, down_s: float, label: str
) -> None:
    """20 jobs mid-way, Redis stopped for ``down_s`` and started again: all 20 complete."""
    with fleet.dispatcher() as dispatcher:
        jobs = dispatcher.map([f"job {n}" for n in range(20)], config)
        reader = EventReader(jobs[0])
        reader.start()
        time.sleep(1.5)  # every job is mid-way
        server.stop()
        time.sleep(down_s)
        clock = Stopwatch()
        server.start()
        results = dispatcher.gather(jobs, timeout=45)
        recovered = clock()
        after = dispatcher.submit("after the restart", config).result(timeout=30)
        reader.join(10)
        statuses = [result.status for result in results]
        lost = lost_lease_lines(fleet)
        unacked = settled(lambda: fleet.redis().hlen("unacked"))  # acks follow the results
        print(
            f"\n{label}: {statuses.count('completed')}/20 completed, {lost} 'lost its lease', "
            f"all done {recovered:.1f} s after Redis was back; new job after it: {after.status}; "
            f"live events() read {len(reader.events)} events, error: {reader.error!r}; "
            f"{unacked} messages left unacknowledged"
        )
        assert statuses == ["completed"] * 20
        assert lost == 0
        assert after.status == "completed"
        assert reader.error is None and not reader.is_alive()
        assert [e.type for e in reader.events][-3:] == [e.type for e in results[0].events][-3:]
        assert unacked == 0
        worker = fleet.workers["w1"].process
        assert worker is not None and worker.poll() is None


def test_aof_restart_with_20_jobs_running_loses_nothing(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = stepping(4, delay=0.5)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    with (
        redis_server(tmp_path / "redis", aof=True) as server,
        chaos_fleet(tmp_path, server, {"w1": WORKER_ENV}) as fleet,
    ):
        run_through(server, fleet, config, down_s=0.0, label="AOF restart")


@pytest.mark.chaos_full
def test_redis_down_10s_everything_resumes(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = stepping(4, delay=0.5)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    with (
        redis_server(tmp_path / "redis", aof=True) as server,
        chaos_fleet(tmp_path, server, {"w1": WORKER_ENV}) as fleet,
    ):
        run_through(server, fleet, config, down_s=10.0, label="Redis down 10 s (AOF)")


@pytest.mark.chaos_full
def test_restart_without_persistence_running_jobs_complete(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = stepping(4, delay=0.5)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    with (
        redis_server(tmp_path / "redis") as server,
        chaos_fleet(tmp_path, server, {"w1": WORKER_ENV}) as fleet,
    ):
        run_through(server, fleet, config, down_s=0.0, label="restart without persistence")
        restored = fleet.workers["w1"].log().count("re-created it from here")
        print(f"records re-created by the worker: {restored}")
        keys = fleet.redis().keys(f"{fleet.prefix}*")
        no_ttl = [key for key in keys if fleet.redis().ttl(key) == -1]
        print(f"{len(keys)} fleet keys after the run, {len(no_ttl)} without a TTL: {no_ttl[:5]}")
        assert restored > 0
        assert no_ttl == []


def test_restart_without_persistence_queued_jobs_rerun_or_lost(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """Jobs Redis forgot before any worker took them: the submitter sends them again; another
    dispatcher waiting on one of them gets JobLost. Both within the outage limit (3 s here)."""
    with forgetful_setup(model_server, tmp_path) as (server, fleet, settings, config):
        idle_queue = fleet.queue_of("w2")  # nobody consumes it until w2 starts
        with Dispatcher(settings=settings) as submitter, Dispatcher(settings=settings) as other:
            jobs = submitter.map([f"job {n}" for n in range(5)], config, queue=idle_queue)
            outcome: dict[str, object] = {}

            def wait_elsewhere() -> None:
                try:
                    other.job(jobs[0].id).result(timeout=30)
                    outcome["other"] = "result"
                except JobLost as exc:
                    outcome["other"] = exc

            waiter = threading.Thread(target=wait_elsewhere, daemon=True)
            waiter.start()
            time.sleep(1.0)
            clock = Stopwatch()
            server.restart()
            fleet.add_worker("w2", **WORKER_ENV).wait_ready()
            results = submitter.gather(jobs, timeout=40)
            rerun_s = clock()
            waiter.join(30)
            resent = submitter._core.fan_in.resent
            lost_at = clock()
            print(
                f"\nqueued jobs forgotten by Redis: {resent}/5 sent again, "
                f"{[r.status for r in results].count('completed')}/5 completed "
                f"{rerun_s:.1f} s after the restart; the other dispatcher got "
                f"{type(outcome.get('other')).__name__} (within {lost_at:.1f} s)"
            )
            assert [result.status for result in results] == ["completed"] * 5
            assert resent == 5
            assert isinstance(outcome.get("other"), JobLost)


def test_live_events_ride_out_a_restart_without_persistence(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """A live ``job.events()`` whose job waits on a slow model while Redis forgets it: the
    reader waits for the worker to re-create the record and reads on (it raised JobNotFound),
    and sees every event the job wrote after the restart."""

    def slow_answer(body: dict[str, Any]) -> ScriptedResponse:
        if not any(message["role"] == "tool" for message in body["messages"]):
            return tool_call("mark", {"path": "/dev/null", "n": 1}, delay=0.3)
        return text("done", delay=4.0)

    model_server.responder = slow_answer
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    # Renewed every 10 s: the record is most likely re-created by the answer's write, 4 s in.
    env = {"RHO_AGENT_LEASE_TTL": "30", "RHO_AGENT_SWEEP_INTERVAL": "0.5"}
    with (
        redis_server(tmp_path / "redis") as server,
        chaos_fleet(tmp_path, server, {"w1": env}) as fleet,
        fleet.dispatcher() as dispatcher,
    ):
        job = dispatcher.submit("slow", config)
        reader = EventReader(job)
        reader.start()
        time.sleep(1.5)  # the tool ran; the last answer is 4 s away
        server.restart()
        result = job.result(timeout=30)
        reader.join(10)
        print(f"\nlive events() read {len(reader.events)} events, error: {reader.error!r}")
        assert result.status == "completed"
        assert reader.error is None and not reader.is_alive()
        # What the job wrote after the restart: refused for want of its record, it was dropped.
        assert [event.type for event in reader.events] == [event.type for event in result.events]
        after_restart = job.state().records
        assert [record["type"] for record in after_restart][:2] == ["model_call", "message"]


def test_a_batch_whose_queued_jobs_redis_forgot_sends_them_again(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """A batch run follows its jobs by polling their records: jobs still queued when Redis
    restarted without persistence are sent again from the batch's copies (it polled forever)."""
    with forgetful_setup(model_server, tmp_path) as (server, fleet, settings, config):
        idle_queue = fleet.queue_of("w2")  # nobody consumes it until w2 starts
        specs = [build_spec(f"job {n}", config, queue=idle_queue) for n in range(3)]
        with Dispatcher(settings=settings) as dispatcher:
            batch = BatchRun(dispatcher, len(specs), poll_s=0.2)
            batch.start(specs)
            server.restart()
            fleet.add_worker("w2", **WORKER_ENV).wait_ready()
            outcome: list[BatchOutcome] = []
            follower = threading.Thread(target=lambda: outcome.append(batch.wait()), daemon=True)
            clock = Stopwatch()
            follower.start()
            follower.join(30)
            statuses = [result.status for result in outcome[0].results] if outcome else []
            print(
                f"\nbatch after a restart without persistence: {statuses} in {clock():.1f} s, "
                f"{dispatcher._core.fan_in.resent} job(s) sent again"
            )
            assert outcome, "the batch still waits on jobs Redis forgot"
            assert statuses == ["completed"] * 3


class Collector:
    """A StateObserver that keeps every trace record it is sent."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_event(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def test_an_observer_follows_a_job_across_a_restart_without_persistence(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """An observer finds the job's record gone after the restart: it waits for the worker to
    re-create it and delivers what the job writes after (it stopped without a word)."""

    def two_tools(body: dict[str, Any]) -> ScriptedResponse:
        done = sum(message["role"] == "tool" for message in body["messages"])
        if done < 2:
            return tool_call("mark", {"path": "/dev/null", "n": done + 1}, delay=0.3 + 2.7 * done)
        return text("done", delay=1.0)

    model_server.responder = two_tools
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    env = {"RHO_AGENT_LEASE_TTL": "30", "RHO_AGENT_SWEEP_INTERVAL": "0.5"}  # renewed every 10 s
    observer = Collector()
    with (
        redis_server(tmp_path / "redis") as server,
        chaos_fleet(tmp_path, server, {"w1": env}) as fleet,
        fleet.dispatcher() as dispatcher,
    ):
        job = dispatcher.submit("two tools", config, observers=[observer])
        time.sleep(1.5)  # the first tool ran; the second call is 1.5 s away
        server.restart()
        assert job.result(timeout=30).status == "completed"
        after_restart = [record["type"] for record in job.state().records]
        wait_until(lambda: observer.records[-1]["type"] == "run_end", 5, "the observer's run_end")
        seen = [record["type"] for record in observer.records]
        print(f"\nobserver: {seen}; the trace after the restart: {after_restart}")
        assert seen[-len(after_restart) :] == after_restart


def test_live_events_of_a_queued_job_redis_forgot_go_on_once_it_is_sent_again(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """Only ``job.events()`` follows a queued job Redis forgot: the dispatcher that sent it
    sends it again, as ``result()`` would, and the reader reads it to its end."""
    with (
        forgetful_setup(model_server, tmp_path) as setup,
        Dispatcher(settings=setup.settings) as dispatcher,
    ):
        idle_queue = setup.fleet.queue_of("w2")  # nobody consumes it until w2 starts
        job = dispatcher.submit("queued", setup.config, queue=idle_queue)
        setup.server.restart()
        reader = EventReader(job)
        reader.start()
        setup.fleet.add_worker("w2", **WORKER_ENV).wait_ready()
        reader.join(30)
        types = [event.type for event in reader.events]
        print(f"\nevents() of a forgotten queued job: {types}, error: {reader.error!r}")
        assert reader.error is None and not reader.is_alive()
        assert dispatcher._core.fan_in.resent == 1
        assert types == [event.type for event in job.result(timeout=5).events]
