"""The bare Celery baseline: no-op and sleeping tasks on the same Redis and the same pool.

Worker processes load ``app`` (``celery -A tests.bench.bare_celery:app worker -P threads``) with
the broker from ``RHO_BENCH_BROKER_URL``; the benchmark process builds its own client with
``client_app(url)``. Tasks are sent by name, as the fleet's dispatcher does.
"""

from __future__ import annotations

import os
import time

from celery import Celery

BROKER_ENV = "RHO_BENCH_BROKER_URL"
QUEUE = "bench-bare"
NOOP = "bench.noop"
SLEEP = "bench.sleep"


def client_app(url: str | None) -> Celery:
    """A Celery app on ``url`` configured like the fleet's (JSON, late acks, prefetch 1)."""
    app = Celery("rho-bench-bare", broker=url, backend=url, set_as_current=False)
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


def noop(index: int) -> int:
    return index


def sleep(seconds: float) -> list[float]:
    """Occupy a pool slot the way a job waiting on its model does; returns the wall-clock times
    it started and finished (benchmark 5 counts tasks in flight from them)."""
    started = time.time()
    time.sleep(seconds)
    return [started, time.time()]


# The worker entry point: `celery -A` needs an app object at module level.
app = client_app(os.environ.get(BROKER_ENV))
