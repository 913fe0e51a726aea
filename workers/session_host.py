"""SessionHost: the worker process's one asyncio loop, running every job of the process.

The worker's pool (``workers.parked_pool``) hands each delivered job's payload to this host and
runs Celery's tracer once the job's future is done, so Celery acknowledges the message only then
(late acks); ``run`` is the blocking form, for a job taken on a thread. The sessions themselves
all share one event loop in one thread, where they spend their time waiting on the model; lease
renewal, the sweeper and cancel requests run there too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from dispatch.engine.fan_out import FanOutLimits
from dispatch.engine.host import JobHost
from dispatch.engine.loop import LoopThread, stop_tasks
from dispatch.engine.run import JobOutcome, RunnerOptions
from dispatch.spec import JobSpec
from workers.fleet_io import Connect, Sender, WorkerIO, connect_fleet
from workers.progress import FlowerProgress, TaskIds
from workers.worker_settings import WorkerSettings

logger = logging.getLogger("workers.session_host")

_CHATTY_LOGGERS = ("httpx", "httpx2", "openai")


class SessionHost:
    """Starts on first use; ``run`` may be called from any number of threads at once.

    ``connect`` builds its I/O on its loop (``workers.fleet_io``): Redis and Celery unless a
    test gives its own.
    """

    def __init__(
        self, settings: WorkerSettings, app: Any = None, *, connect: Connect = connect_fleet
    ) -> None:
        self.settings = settings
        self._app = app
        self.task_ids = TaskIds()
        self.task_events_on: Callable[[], bool] = lambda: False
        """Set by the worker when it is ready: whether task events are being sent."""
        self.node_name: str | None = None
        """Set by the worker when it is ready: its Celery node name (``rho@host``)."""
        self.closing = False
        """Set when the graceful shutdown begins: a job delivered from then on is not run here
        (the consumer may still hold one it fetched, even the job this worker just handed back)
        but given back to the queue for another worker."""
        self.handing_back = False
        """Set by the graceful shutdown before it cancels the jobs it hands back to the queue."""
        self._thread = LoopThread(f"rho-session-host-{settings.worker_name}")
        self._lock = threading.Lock()
        self._host: JobHost | None = None
        self._connect = connect
        self._io: WorkerIO | None = None
        self._broker: Sender | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> JobHost:
        """Connect and start the background tasks (idempotent, thread-safe)."""
        with self._lock:
            if self._host is None:
                self._host = self._thread.call(self._start(), timeout=30)
            return self._host

    def park(self, payload: Any, task_id: str) -> concurrent.futures.Future[JobOutcome]:
        """Start one job payload without waiting for it (``workers.parked_pool``); the future
        holds its outcome, or the error ``run`` would raise."""
        host = self.start()
        job_id = payload.get("job_id") if isinstance(payload, dict) else None
        if isinstance(job_id, str):
            self.task_ids.set(job_id, task_id)
        future = self._thread.submit(host.run(payload))
        if isinstance(job_id, str):
            future.add_done_callback(lambda _: self.task_ids.pop(job_id, task_id))
        return future

    def run(self, payload: Any, task_id: str | None = None) -> JobOutcome:
        """Run one job payload to its end (blocking the calling thread, not the loop)."""
        host = self.start()
        job_id = payload.get("job_id") if isinstance(payload, dict) else None
        if task_id and isinstance(job_id, str):
            self.task_ids.set(job_id, task_id)
        try:
            return self._thread.call(host.run(payload))
        finally:
            if task_id and isinstance(job_id, str):
                self.task_ids.pop(job_id, task_id)

    def stop(self) -> None:
        """Stop background tasks and the loop; running jobs stay resumable elsewhere."""
        with self._lock:
            if self._host is not None:
                with contextlib.suppress(Exception):
                    self._thread.call(self._stop(), timeout=10)
                self._host = None
            self._thread.stop()
            if self._broker is not None:
                self._broker.close()
                self._broker = None

    @property
    def loop(self) -> LoopThread:
        """The loop every job of this process runs on (for the lifecycle and shutdown hooks)."""
        return self._thread

    @property
    def io(self) -> WorkerIO:
        """The started host's I/O (the graceful shutdown hands jobs back through it)."""
        if self._io is None:
            raise RuntimeError("the session host is not started: call start() first")
        return self._io

    @property
    def running_count(self) -> int:
        return 0 if self._host is None else self._host.running_count

    async def _start(self) -> JobHost:
        settings = self.settings
        for name in _CHATTY_LOGGERS:  # one INFO line per model request drowns the worker log
            logging.getLogger(name).setLevel(logging.WARNING)
        io = await self._connect(settings)
        options = RunnerOptions(
            worker=settings.worker_name,
            lease_ms=settings.lease_ms,
            max_profile=settings.ceiling(),
            default_timeout_s=settings.job_time_limit_s,
            max_attempts=settings.max_attempts,
            agent_factory=settings.build_agent(),
            approval_ttl_s=settings.fleet.approval_ttl_s,
            allowed_base_urls=settings.allowed_base_urls,
            spend=io.spend,
            rate_limiter=io.rate_limiter,
            publish=self._publish,
            fan_out=FanOutLimits(
                max_depth=settings.fleet.fan_out_max_depth,
                max_children=settings.fleet.fan_out_max_children,
            ),
        )
        host = JobHost(io.bus, options)
        await host.start()
        self._io = io
        self._broker = io.open_broker()
        loops = io.loops(host, self._resend) if io.loops is not None else []
        self._tasks = [asyncio.create_task(loop, name=name) for name, loop in loops]
        if self._app is not None:
            progress = FlowerProgress(
                self._app,
                host,
                self.task_ids,
                lambda: self.node_name,
                lambda: self.task_events_on(),
            )
            self._tasks.append(asyncio.create_task(progress.run(), name="rho-progress"))
        logger.info(
            "session host %s ready (ceiling %s, lease %.0f s)",
            settings.worker_name,
            settings.max_profile,
            settings.lease_ttl_s,
        )
        return host

    async def _publish(self, specs: list[JobSpec]) -> None:
        """Send a ``fan_out`` call's children to the queue (any worker may run them)."""
        assert self._broker is not None
        if specs:
            await asyncio.to_thread(self._broker.send, specs)

    def _resend(self, spec: JobSpec, lost_attempt: int) -> None:
        assert self._broker is not None
        self._broker.send([spec], attempt_suffix=f"-r{lost_attempt}")

    async def _stop(self) -> None:
        await stop_tasks(self._tasks)
        self._tasks = []
        if self._host is not None:
            await self._host.stop()
        if self._io is not None:
            await self._io.bus.close()
            self._io = None
