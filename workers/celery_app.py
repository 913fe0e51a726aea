"""The Celery app of a fleet worker: configuration and the one thin task.

``celery -A workers worker`` and ``rho-agent worker`` both run it. The task decodes nothing
itself: it hands the JSON payload to the process's SessionHost and returns the job's compact
summary (what Flower shows as the result). Settings come from ``WorkerSettings.from_env()``.
"""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import after_setup_logger, worker_ready, worker_shutdown

from dispatch.errors import JobSpecError
from dispatch.fleet.celery_broker import (
    RUN_JOB_TASK,
    celery_config,
    require_fleet_extra,
    transport_options,
)
from rho_agent.redact import install_log_redaction
from workers.fleet_io import Connect, connect_fleet
from workers.lifecycle import install_lifecycle
from workers.parked_pool import PARKED_JOB, POOL_PATH
from workers.pool_threads import start_pool_threads
from workers.session_host import SessionHost
from workers.tuning import tune_interpreter
from workers.worker_settings import WorkerSettings

logger = logging.getLogger("workers")

HANDED_BACK = "handed back to the queue at shutdown; another worker resumes the job"
NOT_TAKEN = "delivered to a worker that is shutting down; back on the queue for another worker"


def worker_config(settings: WorkerSettings) -> dict[str, Any]:
    """Celery settings for a worker: the shared ones plus how jobs are consumed."""
    return {
        **celery_config(settings.fleet),
        # A job is acknowledged when it ends; a worker that dies leaves it unacknowledged.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        # Jobs wait on the session host, not on a thread each; prefetch 1 per slot (jobs are long).
        "worker_pool": POOL_PATH,
        "worker_concurrency": settings.concurrency,
        "worker_prefetch_multiplier": 1,
        # Task events cost three publishes per job: off unless -E, or until Flower (which asks
        # every worker to send them) is running.
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
        "broker_transport_options": transport_options(
            settings.fleet, visibility_timeout_s=settings.visibility_timeout_s
        ),
    }


def _task_events_on(consumer: Any) -> bool:
    """Whether this worker sends task events now (``-E``, or enabled remotely by Flower)."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    return dispatcher is not None and "task" in (dispatcher.groups or ())


def create_app(
    settings: WorkerSettings | None = None, *, connect: Connect = connect_fleet
) -> Celery:
    """A worker Celery app (settings from the environment unless given; its session host's I/O
    from ``connect``: Redis and Celery unless a test gives its own)."""
    require_fleet_extra()
    install_log_redaction()
    settings = settings or WorkerSettings.from_env()
    app = Celery("rho-agent", set_as_current=False)
    app.conf.update(worker_config(settings))
    host = SessionHost(settings, app, connect=connect)

    def run_job(task: Task, spec: Any) -> dict[str, Any]:
        """Run one rho-agent job (a JobSpec as JSON) and return its summary."""
        parked = getattr(task.request, PARKED_JOB, None)  # already run by the ParkedPool
        if parked is None and host.closing:
            raise Reject(NOT_TAKEN, requeue=True)
        try:
            outcome = parked.result() if parked is not None else host.run(spec, task.request.id)
        except JobSpecError as exc:
            logger.error("rejected job payload (task %s): %s", task.request.id, exc)
            raise Reject(str(exc), requeue=False) from None
        except concurrent.futures.CancelledError:
            if not host.handing_back:
                raise
            # Not a failure: the job was sent again and resumes on another worker, so Flower
            # shows this delivery as rejected rather than failed.
            raise Reject(HANDED_BACK, requeue=False) from None
        return outcome.compact()

    app.task(name=RUN_JOB_TASK, bind=True, shared=False)(run_job)

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            install_log_redaction()  # Celery's handlers exist by now
            host.task_events_on = lambda: _task_events_on(sender)
            host.node_name = str(sender.hostname)
            host.start()
            start_pool_threads(getattr(sender, "pool", None))
            tune_interpreter()

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            host.stop()

    # Heartbeat, health file and graceful drain first: their receivers still use the host's loop.
    install_lifecycle(app, host, settings)
    after_setup_logger.connect(lambda **_: install_log_redaction(), weak=False)
    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
    app.rho_session_host = host
    return app
