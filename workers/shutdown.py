"""Graceful shutdown: on SIGTERM a worker takes no new jobs, lets running ones finish for up to
``RHO_AGENT_SHUTDOWN_GRACE`` seconds, then hands the rest back to the queue with their state saved.

Celery's warm shutdown alone would wait for every running job, however long (and Kubernetes or
systemd would then kill the worker, leaving its jobs to the lease sweeper). Here the receiver of
Celery's ``worker_shutting_down`` signal, which runs in the main thread before Celery stops its
consumer, blocks that thread (so no new job is fetched) while the jobs run on in the session
host's loop. Jobs still running when the grace ends are handed back:

1. their asyncio tasks are cancelled from outside, which leaves each session's run unfinished and
   resumable (``Session`` records nothing on such a cancellation; local tool processes are
   killed);
2. every trace record and event they emitted is flushed to Redis;
3. a Lua script marks each job the worker still owns ``queued`` (with a requeue lease, as the
   sweeper does) and appends a ``handed_back`` lifecycle entry to its events;
4. each job is sent again; the next worker's attempt resumes the session from its trace.

Only then does the receiver return and Celery finish its own shutdown, so nothing is lost in a
rolling restart. A second signal (or a cold shutdown) skips the rest of the grace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dispatch.engine.host import JobHost
from dispatch.fleet import lua
from dispatch.fleet.redis_bus import RedisBus
from dispatch.spec import JobSpec
from workers.lease import Requeued, requeued_jobs

if TYPE_CHECKING:
    from workers.fleet_io import HandBack
    from workers.session_host import SessionHost

logger = logging.getLogger("workers.shutdown")

_CANCEL_WAIT_S = 10.0
_POLL_S = 0.1


class GracefulShutdown:
    """Drains one worker's session host; ``drain`` blocks until the host holds no job."""

    def __init__(
        self,
        host: SessionHost,
        grace_s: float,
        *,
        hurry: Callable[[], bool] = lambda: False,
        on_begin: Callable[[], None] = lambda: None,
    ) -> None:
        self.host = host
        self.grace_s = grace_s
        self._hurry = hurry
        self._on_begin = on_begin
        self._started = False
        self.handed_back: list[str] = []

    def drain(self, *, cold: bool = False) -> list[str]:
        """Wait up to the grace for running jobs, then hand back the rest; their ids."""
        if self._started:
            return []
        self._started = True
        self.host.closing = True
        self._on_begin()
        running = self.host.running_count
        if running and not cold:
            logger.warning(
                "shutting down: taking no new jobs; %d running get up to %g s to finish",
                running,
                self.grace_s,
            )
            self._wait()
        if not self.host.running_count:
            return []
        try:
            self.handed_back = self._hand_back()
        except Exception:
            logger.exception("handing running jobs back failed; their leases will lapse instead")
            return []
        logger.warning("handed %d job(s) back to the queue", len(self.handed_back))
        return self.handed_back

    def _wait(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while self.host.running_count and time.monotonic() < deadline and not self._hurry():
            time.sleep(_POLL_S)

    def _hand_back(self) -> list[str]:
        job_host = self.host.start()  # already started: it runs jobs
        io = self.host.io
        self.host.handing_back = True
        loop = self.host.loop
        requeued, unclaimed = loop.call(
            _stop_and_release(job_host, io.hand_back), timeout=_CANCEL_WAIT_S + 30
        )
        broker = io.open_broker()
        sent = []
        try:
            for job in requeued:
                broker.send([job.spec], attempt_suffix=f"-h{job.attempt}")
                sent.append(job.job_id)
            # Still queued: a second message is harmless (a delivery of a job another worker
            # has claimed meanwhile is skipped), a missing one would strand the job.
            if unclaimed:
                broker.send(unclaimed, attempt_suffix="-u")
                sent += [spec.job_id for spec in unclaimed]
        finally:
            broker.close()
        return sent


async def _stop_and_release(
    job_host: JobHost, hand_back: HandBack | None
) -> tuple[list[Requeued], list[JobSpec]]:
    """In the session loop: stop every job (resumably), flush, mark the owned ones queued.

    Returns the owned jobs ``hand_back`` marked queued, and the specs of the jobs that were
    delivered but not yet claimed (their tasks end with their messages: they must be sent again).
    """
    owned = job_host.active()
    unclaimed = job_host.unclaimed()
    tasks = [task for task in asyncio.all_tasks() if _runs_a_job(task)]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=_CANCEL_WAIT_S)
    await job_host.bus.flush()
    if hand_back is None:
        return [], []
    if not owned:
        return [], unclaimed
    return await hand_back(owned, job_host.options.worker), unclaimed


async def hand_back(bus: RedisBus, owned: list[tuple[str, int]], worker: str) -> list[Requeued]:
    """``HAND_BACK`` on Redis: each ``(job id, attempt)`` ``worker`` still owns is queued again
    (with a requeue lease, as the sweeper does); returns those, to be sent again."""
    args: list[Any] = [
        bus.keys.job_prefix(),
        bus.settings.queued_lease_s * 1000,
        bus.settings.events_maxlen,
        worker,
    ]
    for job_id, attempt in owned:
        args += [job_id, attempt]
    script = bus.client.register_script(lua.HAND_BACK)
    flat: list[str] = await script(keys=[bus.keys.leases()], args=args)
    return list(requeued_jobs(flat, "handed back"))


def _runs_a_job(task: asyncio.Task[Any]) -> bool:
    """True for the tasks ``SessionHost.run`` creates: one ``JobHost.run`` per job."""
    return getattr(task.get_coro(), "cr_code", None) is JobHost.run.__code__
