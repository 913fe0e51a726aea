"""The bare Celery baseline: no-op and sleeping tasks on the same broker and the same pool.

Worker processes load ``app`` (``celery -A tests.bench.bare_celery:app worker -P threads``) with
the broker from ``RHO_BENCH_BROKER_URL`` and the result backend from ``RHO_BENCH_RESULT_URL``
(by default the broker); the benchmark process builds its own client with ``client_app(url)``.
Tasks are sent by name, as the fleet's dispatcher does. On RabbitMQ the queue is declared as the
fleet declares its own (quorum, publisher confirms) and results go to Redis, as the fleet's do.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from dispatch import FleetSettings
from dispatch.fleet.celery_broker import celery_config
from dispatch.urls import url_kind

BROKER_ENV = "RHO_BENCH_BROKER_URL"
RESULT_ENV = "RHO_BENCH_RESULT_URL"
QUEUE = "bench-bare"
NOOP = "bench.noop"
SLEEP = "bench.sleep"
AS_THE_FLEET_ON_AMQP = (
    "task_default_queue_type",
    "task_create_missing_queue_type",
    "worker_detect_quorum_queues",
    "broker_native_delayed_delivery_queue_type",
    "broker_transport_options",
)
"""The fleet's RabbitMQ settings the baseline takes too: a bare task on a classic queue without
confirms would be a cheaper path than the one the fleet's jobs travel."""


def client_app(url: str | None, results: str | None = None) -> Celery:
    """A Celery app on broker ``url`` with results in ``results`` (default: ``url``), configured
    like the fleet's (JSON, late acks, prefetch 1; on RabbitMQ, quorum queues and confirms)."""
    app = Celery("rho-bench-bare", broker=url, backend=results or url, set_as_current=False)
    app.conf.update(_as_the_fleet(url, results))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.task(name=NOOP)(noop)
    app.task(name=SLEEP)(sleep)
    return app


def _as_the_fleet(url: str | None, results: str | None) -> dict[str, Any]:
    if not url or url_kind(url, BROKER_ENV) != "amqp":
        return {}
    fleet = celery_config(FleetSettings(broker_url=url, redis_url=results))
    return {key: fleet[key] for key in AS_THE_FLEET_ON_AMQP}


def noop(index: int) -> int:
    return index


def sleep(seconds: float) -> list[float]:
    """Occupy a pool slot the way a job waiting on its model does; returns the wall-clock times
    it started and finished (benchmark 5 counts tasks in flight from them)."""
    started = time.time()
    time.sleep(seconds)
    return [started, time.time()]


# The worker entry point: `celery -A` needs an app object at module level.
app = client_app(os.environ.get(BROKER_ENV), os.environ.get(RESULT_ENV))
