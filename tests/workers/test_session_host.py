"""SessionHost over a MemoryBus and a recording broker: no Redis, no Celery worker.

The host runs jobs on its own loop exactly as in a worker process; only its I/O (``WorkerIO``)
is the in-memory kind. The lease keeper, sweeper and janitor are Lua and Redis commands, so
they are not run here (tests/chaos/test_lease_keeper.py, tests/workers/test_janitor.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch.engine.run import JobOutcome
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec, build_spec
from rho_agent import AgentConfig
from rho_agent.events import RunResult
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, text, tool_call
from tests.workers.memory_io import NO_REDIS, MemoryIO, wait_for
from workers.fleet_io import WorkerIO
from workers.progress import FlowerProgress
from workers.session_host import SessionHost
from workers.shutdown import GracefulShutdown
from workers.worker_settings import WorkerSettings


class Worker:
    """One session host with its memory I/O, and helpers that run on the host's loop."""

    def __init__(self, io: MemoryIO) -> None:
        settings = WorkerSettings(fleet=FleetSettings(broker_url=NO_REDIS), worker_name="w1")
        self.io = io
        self.host = SessionHost(settings, connect=io)
        self.host.start()
        self._pool = concurrent.futures.ThreadPoolExecutor(2)

    def submit(self, prompt: str, config: AgentConfig) -> JobSpec:
        spec = build_spec(prompt, config)
        self.io.specs[spec.job_id] = spec
        self.host.loop.call(self.io.bus.submit([spec], "q"))
        return spec

    def run_in_thread(
        self, spec: JobSpec, task_id: str = "t1"
    ) -> concurrent.futures.Future[JobOutcome]:
        """What Celery's task thread does: block on the host until the job ends."""
        return self._pool.submit(self.host.run, spec.encode(), task_id)

    def start_job(
        self,
        server: ScriptedModelServer,
        tmp_path: Path,
        *responses: ScriptedResponse,
        task_id: str = "t1",
    ) -> tuple[JobSpec, concurrent.futures.Future[JobOutcome]]:
        """Script ``responses``, submit a job and run it in a task thread; return once its
        last model call is in flight."""
        server.script(*responses)
        spec = self.submit(
            "a job", AgentConfig(base_url=server.base_url, working_dir=str(tmp_path))
        )
        running = self.run_in_thread(spec, task_id)
        wait_for(lambda: len(server.requests) == len(responses))
        return spec, running

    def result(self, spec: JobSpec) -> RunResult | None:
        [result] = self.host.loop.call(self.io.bus.get_results([spec.job_id]))
        return result

    def status(self, spec: JobSpec) -> str:
        [info] = self.host.loop.call(self.io.bus.get_info([spec.job_id]))
        assert info is not None
        return info.status

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.host.stop()


@pytest.fixture
def worker() -> Iterator[Worker]:
    started = Worker(MemoryIO())
    yield started
    started.close()


def test_a_job_runs_to_completion_and_its_result_is_on_the_bus(
    worker: Worker, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("hello from the host"))
    spec = worker.submit("say hello", AgentConfig(base_url=model_server.base_url))

    outcome = worker.host.run(spec.encode(), "t1")

    assert (outcome.status, outcome.worker, outcome.attempt) == ("completed", "w1", 1)
    result = worker.result(spec)
    assert result is not None and (result.status, result.text) == (
        "completed",
        "hello from the host",
    )
    assert worker.status(spec) == "completed"
    assert worker.host.running_count == 0


def test_a_job_cancelled_on_the_bus_ends_cancelled(
    worker: Worker, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    spec, running = worker.start_job(model_server, tmp_path, text("too late", delay=30))

    outcome = worker.host.loop.call(worker.io.bus.request_cancel(spec.job_id))

    assert outcome == "requested"  # the host's cancel watcher routes it to the run
    assert running.result(timeout=3).status == "cancelled"
    result = worker.result(spec)
    assert result is not None and result.status == "cancelled"
    assert worker.status(spec) == "cancelled"


def test_progress_is_reported_per_task_once_its_numbers_move(
    worker: Worker, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    spec, running = worker.start_job(
        model_server,
        tmp_path,
        tool_call("list", {"path": "."}),
        text("done", delay=30),
        task_id="celery-task-7",
    )  # one turn done, the second in flight
    progress = FlowerProgress(
        None, worker.host.start(), worker.host.task_ids, lambda: "rho@test", lambda: True
    )

    [(task_id, numbers)] = worker.host.loop.call(_changed(progress))
    unchanged = worker.host.loop.call(_changed(progress))

    assert task_id == "celery-task-7" and numbers["turns"] == 1
    assert numbers["input_tokens"] > 0
    assert unchanged == []
    worker.host.loop.call(worker.io.bus.request_cancel(spec.job_id))
    running.result(timeout=3)
    assert worker.host.task_ids.get(spec.job_id) is None, "the task's id is forgotten at its end"


async def _changed(progress: FlowerProgress) -> list[tuple[str, dict[str, object]]]:
    return progress.changed()  # on the loop, where the host's runs live


def test_the_shutdown_grace_lets_a_running_job_finish(
    worker: Worker, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    spec, running = worker.start_job(model_server, tmp_path, text("finished in time", delay=0.3))

    handed_back = GracefulShutdown(worker.host, grace_s=5).drain()

    assert handed_back == []
    assert worker.host.closing and not worker.host.handing_back
    assert running.result(timeout=1).status == "completed"
    assert worker.status(spec) == "completed" and worker.io.broker.sent == []


def test_the_shutdown_hands_a_running_job_back_and_it_resumes(
    worker: Worker, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    spec, running = worker.start_job(model_server, tmp_path, text("never answered", delay=30))
    model_server.script(text("answered after the restart"))

    handed_back = GracefulShutdown(worker.host, grace_s=0.1).drain()

    assert handed_back == [spec.job_id]
    assert worker.io.handed == [([(spec.job_id, 1)], "w1")]
    assert worker.io.broker.sent == [(spec.job_id, "-h1")]
    assert (worker.io.broker.opened, worker.io.broker.closed) == (2, 1)  # the host's, and one
    assert worker.host.handing_back
    with pytest.raises(concurrent.futures.CancelledError):
        running.result(timeout=1)  # the task sees its job cancelled, not failed
    assert worker.status(spec) == "queued" and worker.result(spec) is None

    # The next delivery (here on the same host) resumes it from its trace as attempt 2.
    outcome = worker.host.run(spec.encode(), "t2")
    assert (outcome.status, outcome.attempt) == ("completed", 2)
    result = worker.result(spec)
    assert result is not None and result.text == "answered after the restart"
    assert "job_restarted" in [event.type for event in result.events]


def test_the_host_stops_its_loops_and_closes_its_broker() -> None:
    io = MemoryIO()
    started = threading.Event()
    stopped = threading.Event()

    async def loop_until_stopped() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    async def connect(settings: WorkerSettings) -> WorkerIO:
        base = await io(settings)
        return WorkerIO(
            bus=base.bus,
            open_broker=base.open_broker,
            loops=lambda host, resend: [("test-loop", loop_until_stopped())],
        )

    settings = WorkerSettings(fleet=FleetSettings(broker_url=NO_REDIS), worker_name="w2")
    host = SessionHost(settings, connect=connect)
    host.start()
    assert started.wait(2)

    host.stop()

    assert stopped.is_set()
    assert (io.broker.opened, io.broker.closed) == (1, 1)
