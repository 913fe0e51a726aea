"""CeleryBroker: sends jobs to the fleet's Celery queue by task name (never importing workers).

``celery_config`` is the one place the Celery settings both sides must agree on live (JSON only,
queue, transport options); the worker app builds on it. Celery is imported lazily so the SDK and
embedded mode work without the ``fleet`` extra.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dispatch.errors import FleetUnavailable
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec
from dispatch.urls import redact_url, scheme_of
from rho_agent.errors import first_line

RUN_JOB_TASK = "rho_agent.run_job"
"""The name of the Celery task that runs a JobSpec (registered by ``workers``)."""

_REPR_PROMPT = 80
_ARGS_PROMPT = 60
_KEY_IN_TEXT = re.compile(r"\b(sk-|dtn_)[A-Za-z0-9_-]{16,}")
"""An API key pasted into a prompt: masked in what Flower shows (and stores in Redis)."""
_CHUNK = 100
_SEND_THREADS = 8


def require_fleet_extra() -> None:
    """Fail with the fix when celery or redis is not installed."""
    missing = [name for name in ("celery", "redis") if importlib.util.find_spec(name) is None]
    if missing:
        raise FleetUnavailable(
            f"the fleet needs {' and '.join(missing)}, which are not installed; "
            "install them with: pip install 'rho-agent[fleet]'"
        )


def celery_config(settings: FleetSettings) -> dict[str, Any]:
    """Celery settings shared by dispatchers and workers (``broker_transport_options`` included:
    a worker adds its own with ``transport_options``)."""
    return {
        "broker_url": settings.broker_url,
        **_transport_for(settings.broker_url),
        **_queues_for(settings),
        "broker_transport_options": transport_options(settings),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_default_queue": settings.queue,
        "task_ignore_result": True,
        "result_backend": None,
        "broker_connection_retry_on_startup": True,
        "enable_utc": True,
    }


def _transport_for(broker_url: str | None) -> dict[str, str]:
    """Our leaner subclass of kombu's Redis transport for plain ``redis://`` URLs; Celery's
    default for anything else (TLS, sentinel, amqp)."""
    if broker_url and scheme_of(broker_url) == "redis":
        from dispatch.fleet.transport import TRANSPORT_PATH

        return {"broker_transport": TRANSPORT_PATH}
    return {}


def _queues_for(settings: FleetSettings) -> dict[str, Any]:
    """On RabbitMQ, job queues are quorum queues: replicated, and durable across a broker restart.

    Celery then declares the default queue and every queue it creates on demand (the per-worker
    ones, a job's own ``queue``) as quorum, and its workers use per-consumer prefetch (quorum
    queues have no global QoS). RabbitMQ 3.x quorum queues ignore message priorities; 4.x has
    two levels (above 4 is high).
    """
    if settings.broker_kind != "amqp":
        return {}
    return {
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        "worker_detect_quorum_queues": True,
        # With quorum queues Celery also declares its native delayed-delivery queues (for
        # countdown/ETA tasks, which the fleet never sends): classic ones cost RabbitMQ less.
        "broker_native_delayed_delivery_queue_type": "classic",
    }


def transport_options(
    settings: FleetSettings, *, visibility_timeout_s: int | None = None
) -> dict[str, Any]:
    """kombu's transport options for the broker's kind.

    - amqp: publisher confirms, so a ``submit`` returns only once RabbitMQ has taken the job;
    - sentinel: the master's name;
    - Redis kinds: the visibility timeout (a worker's setting: the unacked-message redelivery
      time), which RabbitMQ does not need: it redelivers when the consumer's connection closes.
    """
    kind = settings.broker_kind
    if kind == "amqp":
        return {"confirm_publish": True}
    options: dict[str, Any] = {}
    if kind == "sentinel":
        options["master_name"] = settings.sentinel_master
    if visibility_timeout_s is not None:
        options["visibility_timeout"] = visibility_timeout_s
    return options


def task_argsrepr(spec: JobSpec) -> str:
    """Flower's args column, to scan the task list by: the prompt's start and the labels.

    ``'Summarise README.md' team=docs``; the task name stays ``rho_agent.run_job``.
    """
    shown = repr(_excerpt(" ".join(spec.prompts[0].split()), _ARGS_PROMPT))
    labels = " ".join(f"{key}={_excerpt(value, 40)}" for key, value in sorted(spec.labels.items()))
    return f"{shown} {labels}" if labels else shown


def task_kwargsrepr(spec: JobSpec) -> str:
    """What Flower shows as the job's arguments: readable, short, never a secret."""
    shown: dict[str, Any] = {
        "prompt": _excerpt(spec.prompts[0], _REPR_PROMPT),
        "model": spec.model,
        "profile": spec.profile_label,
        "session_id": spec.session_id,
    }
    if len(spec.prompts) > 1:
        shown["runs"] = len(spec.prompts)
    if spec.labels:
        shown["labels"] = {key: _excerpt(value, 40) for key, value in spec.labels.items()}
    return repr(shown)


def _excerpt(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with API-key-shaped words masked."""
    text = _KEY_IN_TEXT.sub(r"\1***", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class CeleryBroker:
    """Publishes JobSpecs as Celery tasks (blocking I/O: call it from a worker thread)."""

    def __init__(self, settings: FleetSettings) -> None:
        require_fleet_extra()
        from celery import Celery

        self.settings = settings
        self._pool: ThreadPoolExecutor | None = None
        self.app = Celery("rho-agent-dispatch", set_as_current=False)
        self.app.conf.update(celery_config(settings))

    def connect(self) -> None:
        """Connect to the job broker now (kombu's ``connect``: two tries, 2 s apart; the
        connection stays in the producer pool for the sends); FleetUnavailable if it does not
        answer: a broker never reached is a wrong URL or a server not started, not an outage
        to ride out."""
        from kombu.exceptions import OperationalError

        with self.app.producer_or_acquire() as producer:
            connection = producer.connection
            failed = (OperationalError, OSError, *connection.connection_errors)
            try:
                connection.connect()
                return
            except failed as exc:
                error = exc
        raise FleetUnavailable(
            f"cannot reach the job broker at {redact_url(self.settings.broker_url or '')} "
            f"({first_line(error)}); check that it runs there and that --broker / "
            "RHO_AGENT_BROKER_URL points at it"
        ) from error

    def send(self, specs: Sequence[JobSpec], *, attempt_suffix: str = "") -> None:
        """Publish every spec (task id = job id + suffix).

        A publish waits for Redis to answer, so a large fan-out is split over a few threads,
        each with its own producer connection: the round trips overlap instead of adding up.
        """
        chunks = [specs[start : start + _CHUNK] for start in range(0, len(specs), _CHUNK)]
        if len(chunks) <= 1:
            self._send_chunk(specs, attempt_suffix)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_SEND_THREADS, thread_name_prefix="rho-send")
        futures = [self._pool.submit(self._send_chunk, chunk, attempt_suffix) for chunk in chunks]
        for future in futures:
            future.result()

    def _send_chunk(self, specs: Sequence[JobSpec], attempt_suffix: str) -> None:
        with self.app.producer_or_acquire() as producer:
            for spec in specs:
                self.app.send_task(
                    RUN_JOB_TASK,
                    kwargs={"spec": spec.encode()},
                    task_id=spec.job_id + attempt_suffix,
                    queue=spec.queue or self.settings.queue,
                    priority=spec.priority,
                    producer=producer,
                    argsrepr=task_argsrepr(spec),
                    kwargsrepr=task_kwargsrepr(spec),
                )

    def revoke(self, task_id: str) -> None:
        """Tell every worker to drop this task if it arrives (Flower then shows it revoked)."""
        self.app.control.revoke(task_id)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.app.close()
