"""ParkedPool: Celery's threads pool, except that a running fleet job holds no thread.

In the threads pool every task keeps a thread until it returns. A fleet job lives on the session
host's event loop, so that thread only waited on a future, and a worker with 1,000 slots kept
1,000 threads that woke twice per job and fought the loop for the GIL. Here the pool hands the
job to the host as it is delivered and runs Celery's task tracer (the task body, its signals,
the late ack or the reject) on one of a few threads only once the job has ended, when the task
body finds the outcome waiting. Celery's accounting is the threads pool's: the job is accepted
(Flower's task-started) as it starts, and ends through the same tracer and callbacks. Measured
in docs/benchmarks.md ("One thread per job, or none"). Other tasks, and jobs delivered while the
host is closing, run on a thread as before.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery.concurrency.base import apply_target
from celery.concurrency.thread import ApplyResult, TaskPool
from kombu.serialization import loads, prepare_accept_content

from dispatch.fleet.celery_broker import RUN_JOB_TASK

if TYPE_CHECKING:
    from workers.session_host import SessionHost

logger = logging.getLogger("workers.pool")

POOL_PATH = "workers.parked_pool:ParkedPool"
"""What the worker's ``worker_pool`` setting names."""
PARKED_JOB = "rho_parked_job"
"""The key under which the tracer's request carries the job's future (``task.request``)."""
TRACER_THREADS = 16
"""Threads that run ended jobs' tracers and any other task: each holds one for a millisecond or
two (the ack), not for the job's life."""


class ParkedPool(TaskPool):  # type: ignore[misc]  # Celery is untyped
    """A threads pool whose fleet jobs wait on the session host, not on a thread each."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads = min(self.limit, TRACER_THREADS)
        """How many threads the pool runs (``limit`` stays the number of jobs it may hold)."""
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.threads)
        self._parked: dict[concurrent.futures.Future[Any], tuple[Any, ...]] = {}
        """Each running job's future, and the tracer's arguments for when it ends."""
        self._idle = threading.Condition()
        accepted = self.app.conf.accept_content if self.app is not None else ()
        self._accept = prepare_accept_content(accepted)  # type: ignore[no-untyped-call]
        """The content types a job message may have (the app's), computed once, not per job."""

    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **options: Any,
    ) -> Any:
        host: SessionHost | None = getattr(self.app, "rho_session_host", None)
        decoded = self._decoded_job(args) if host is not None and not host.closing else None
        if host is None or decoded is None:
            return super().on_apply(target, args, kwargs, callback, accept_callback, **options)
        name, task_id, request, body, _, _ = decoded
        # Accepted before the job starts, as the threads pool accepts before the task body runs.
        if accept_callback is not None:
            accept_callback(os.getpid(), time.monotonic())
        try:
            future = host.park(body[1]["spec"], str(task_id))
        except Exception:  # the host did not start: the task body meets the same error
            logger.exception("could not hand job task %s to the session host", task_id)
            return super().on_apply(target, args, kwargs, callback, None, **options)
        traced = (name, task_id, {**request, PARKED_JOB: future}, body, None, None)
        with self._idle:
            self._parked[future] = (target, traced, kwargs, callback)
        future.add_done_callback(self._on_done)
        return ApplyResult(future)

    def _decoded_job(self, args: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        """The tracer's arguments with the body decoded, for a well-formed job task; else None
        (the tracer then decodes, and rejects, it as usual)."""
        if not args or len(args) != 6 or args[0] != RUN_JOB_TASK:
            return None
        name, task_id, request, body, content_type, encoding = args
        if content_type:
            try:
                body = loads(body, content_type, encoding, accept=self._accept)  # type: ignore[no-untyped-call]
            except Exception:
                return None
        well_formed = isinstance(body, (list, tuple)) and len(body) == 3
        if not (well_formed and isinstance(body[1], dict) and "spec" in body[1]):
            return None
        if not isinstance(request, dict):
            return None
        return (name, task_id, request, tuple(body), None, None)

    def _on_done(self, done: concurrent.futures.Future[Any]) -> None:
        """The job ended: run its tracer on a pool thread. (The tracer's arguments hold the
        future, so they live in ``_parked``, not in this callback: a closure would make a
        reference cycle that only the garbage collector's rare full passes free, and a worker's
        memory grew with every job's outcome until one ran.)"""
        self.executor.submit(self._trace, done)

    def _trace(self, done: concurrent.futures.Future[Any]) -> None:
        with self._idle:
            target, traced, kwargs, callback = self._parked[done]
        try:
            apply_target(target, traced, kwargs, callback)
        finally:
            with self._idle:
                del self._parked[done]
                self._idle.notify_all()

    def on_stop(self) -> None:
        """Celery's warm stop waits for running tasks: here, for parked jobs and their tracers
        (the graceful shutdown has ended or handed back every job by now)."""
        with self._idle:
            if self._parked:
                logger.info("waiting for %d job(s) to end before the pool stops", len(self._parked))
            self._idle.wait_for(lambda: not self._parked)
        super().on_stop()

    def _get_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super()._get_info()
        info["parked-jobs"] = len(self._parked)
        return info
