"""The ParkedPool with the worker's real Celery app and tracer, over a MemoryBus.

Jobs are delivered as Celery's consumer delivers them (``on_apply`` with the tracer and the
message's JSON body) and end through ``trace_task_ret``, Celery's task tracer, whose return value
the request's ``on_success`` would turn into an ack or a reject.
"""

from __future__ import annotations

import functools
import gc
import json
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery.app.trace import trace_task_ret
from celery.exceptions import Reject

from dispatch.fleet.celery_broker import RUN_JOB_TASK
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec, build_spec
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, text
from tests.workers.memory_io import NO_REDIS, MemoryIO, wait_for
from workers.celery_app import HANDED_BACK, NOT_TAKEN, create_app
from workers.parked_pool import TRACER_THREADS, ParkedPool
from workers.session_host import SessionHost
from workers.shutdown import GracefulShutdown
from workers.worker_settings import WorkerSettings

SLOTS = 60


@dataclass
class Delivered:
    """What Celery's request would see of one task: accepted, then its tracer's return value."""

    accepted: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    retval: Any = None
    traced_on: str = ""
    job: Callable[[], Any] = lambda: None
    """A weak reference to the pool's future for the job (None once it is freed)."""

    def on_success(self, retval: Any) -> None:
        self.retval, self.traced_on = retval, threading.current_thread().name
        self.ended.set()

    def summary(self) -> str:
        failed, value, _ = self.retval
        assert not failed, f"the task failed: {value!r}"
        return str(value)

    def rejection(self) -> Reject:
        """The tracer's Reject, unwrapped as ``Request.on_failure`` unwraps it."""
        failed, einfo, _ = self.retval
        exception = getattr(einfo.exception, "exc", einfo.exception)
        assert failed and isinstance(exception, Reject), self.retval
        return exception


class Worker:
    """The worker's Celery app and its ParkedPool, the session host on memory I/O."""

    def __init__(self) -> None:
        self.io = MemoryIO()
        settings = WorkerSettings(fleet=FleetSettings(broker_url=NO_REDIS), worker_name="w1")
        self.app = create_app(settings, connect=self.io)
        self.host: SessionHost = self.app.rho_session_host
        self.host.start()
        self.pool = ParkedPool(limit=SLOTS, app=self.app)
        self.pool.start()

    def submit(self, server: ScriptedModelServer, prompt: str = "a job") -> JobSpec:
        spec = build_spec(prompt, AgentConfig(base_url=server.base_url))
        self.io.specs[spec.job_id] = spec
        self.host.loop.call(self.io.bus.submit([spec], "q"))
        return spec

    def deliver(self, payload: Any, task: str = RUN_JOB_TASK, task_id: str = "") -> Delivered:
        """What Celery's consumer does with a message: hand it to the pool with the tracer."""
        delivered = Delivered()
        task_id = task_id or f"task-{payload.get('job_id', 'x')}"
        body = json.dumps([[], {"spec": payload}, {}])
        applied = self.pool.apply_async(
            functools.partial(trace_task_ret, app=self.app),
            args=(task, task_id, {"id": task_id}, body, "application/json", "utf-8"),
            callback=delivered.on_success,
            accept_callback=lambda *_: delivered.accepted.set(),
        )
        delivered.job = weakref.ref(applied.f)
        return delivered

    def start_job(
        self, server: ScriptedModelServer, answer: str, delay: float
    ) -> tuple[JobSpec, Delivered]:
        """Deliver one job whose model answers after ``delay``; return once it runs."""
        server.script(text(answer, delay=delay))
        spec = self.submit(server)
        delivered = self.deliver(spec.encode())
        wait_for(lambda: self.host.running_count == 1)
        return spec, delivered

    def status(self, spec: JobSpec) -> str:
        [info] = self.host.loop.call(self.io.bus.get_info([spec.job_id]))
        assert info is not None
        return info.status

    def close(self) -> None:
        self.pool.stop()
        self.host.stop()


@pytest.fixture
def worker() -> Iterator[Worker]:
    started = Worker()
    yield started
    started.close()


def _pool_threads() -> int:
    return sum(t.name.startswith("ThreadPoolExecutor") for t in threading.enumerate())


def test_running_jobs_hold_no_thread_and_end_through_celerys_tracer(
    worker: Worker, model_server: ScriptedModelServer
) -> None:
    jobs = 40
    model_server.script(*[text("done", delay=0.5) for _ in range(jobs)])
    threads_before = _pool_threads()
    specs = [worker.submit(model_server, f"job {index}") for index in range(jobs)]

    delivered = [worker.deliver(spec.encode()) for spec in specs]
    wait_for(lambda: worker.host.running_count == jobs)

    assert all(d.accepted.is_set() for d in delivered), "each job is accepted as it starts"
    assert not any(d.ended.is_set() for d in delivered)
    assert _pool_threads() == threads_before, "40 running jobs, no thread started for them"
    for d in delivered:
        assert d.ended.wait(10)
        assert "'status': 'completed'" in d.summary()
    assert {worker.status(spec) for spec in specs} == {"completed"}
    assert _pool_threads() - threads_before <= TRACER_THREADS
    assert len({d.traced_on for d in delivered}) <= TRACER_THREADS


def test_an_ended_job_is_freed_without_the_garbage_collector(
    worker: Worker, model_server: ScriptedModelServer
) -> None:
    """A reference cycle through the job's future would keep every outcome until a full
    collection, which a tuned worker seldom runs: its memory grew with each job."""
    model_server.script(text("done"))
    spec = worker.submit(model_server)
    gc.collect()
    gc.disable()
    try:
        delivered = worker.deliver(spec.encode())
        assert delivered.ended.wait(5)
        wait_for(lambda: worker.pool.info["parked-jobs"] == 0)
        wait_for(lambda: delivered.job() is None, within_s=1.0)
    finally:
        gc.enable()


def test_a_job_ending_during_the_shutdown_grace_is_acknowledged_not_given_back(
    worker: Worker, model_server: ScriptedModelServer
) -> None:
    spec, delivered = worker.start_job(model_server, "finished in the grace", delay=0.3)

    assert GracefulShutdown(worker.host, grace_s=5).drain() == []

    assert delivered.ended.wait(5)
    assert "'status': 'completed'" in delivered.summary()
    assert worker.status(spec) == "completed"


def test_a_job_handed_back_at_shutdown_is_rejected_not_failed(
    worker: Worker, model_server: ScriptedModelServer
) -> None:
    spec, delivered = worker.start_job(model_server, "never answered", delay=30)

    assert GracefulShutdown(worker.host, grace_s=0.1).drain() == [spec.job_id]

    assert delivered.ended.wait(5)
    rejection = delivered.rejection()
    assert (rejection.reason, rejection.requeue) == (HANDED_BACK, False)
    assert worker.status(spec) == "queued"


def test_a_job_delivered_while_the_worker_closes_goes_back_to_the_queue(
    worker: Worker, model_server: ScriptedModelServer
) -> None:
    spec = worker.submit(model_server)
    worker.host.closing = True

    delivered = worker.deliver(spec.encode())

    assert delivered.ended.wait(5)
    rejection = delivered.rejection()
    assert (rejection.reason, rejection.requeue) == (NOT_TAKEN, True)
    assert worker.host.running_count == 0 and worker.status(spec) == "queued"


def test_a_malformed_job_is_rejected_without_requeue(worker: Worker) -> None:
    delivered = worker.deliver({"job_id": "j-bad", "prompts": "not a list"})

    assert delivered.ended.wait(5)
    rejection = delivered.rejection()
    assert rejection.requeue is False and worker.host.task_ids.get("j-bad") is None


def test_stopping_the_pool_waits_for_running_jobs_and_their_tracers(
    worker: Worker, model_server: ScriptedModelServer
) -> None:
    _, delivered = worker.start_job(model_server, "late but whole", delay=0.4)

    worker.pool.stop()

    assert delivered.ended.is_set(), "the pool stopped before the job's tracer ran"
    assert "'status': 'completed'" in delivered.summary()


def test_other_tasks_run_on_a_pool_thread(worker: Worker) -> None:
    ran: list[str] = []
    done = threading.Event()

    worker.pool.apply_async(
        lambda *args: ran.append(threading.current_thread().name),
        args=("some.other_task", "t-9", {}, b"[]", "application/json", "utf-8"),
        callback=lambda _: done.set(),
    )

    assert done.wait(5)
    assert ran and ran[0].startswith("ThreadPoolExecutor")
