"""Start every thread of Celery's threads pool when the worker is ready, not at its first jobs.

``ThreadPoolExecutor`` starts a thread the first time it has more work than idle threads, and
``Thread.start()`` blocks the caller until the new thread runs. In a worker the caller is Celery's
consumer (or, with the ParkedPool, the session host's loop, which hands each ended job's
tracer to the pool), so the first burst of jobs after a start paid one thread start each on the
intake path, under a GIL shared with the busy session loop: a fresh worker given 1,000 jobs ran
them about 15 % slower and held about 30 % fewer at once (docs/benchmarks.md, benchmark 5).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

logger = logging.getLogger("workers")

START_TIMEOUT_S = 60.0


def start_pool_threads(pool: Any) -> int:
    """Make ``pool`` (a Celery threads pool, or the ParkedPool with its ``threads``) start all
    its threads now; returns how many.

    Each thread runs one task that waits at a barrier, so the executor must start a new thread
    for every one of them; once all have arrived they go back to idle. Other pools are left alone.
    """
    executor = getattr(pool, "executor", None)
    count = int(getattr(pool, "threads", None) or getattr(pool, "limit", 0) or 0)
    if executor is None or count < 1:
        return 0
    started = time.monotonic()
    barrier = threading.Barrier(count + 1)
    for _ in range(count):
        executor.submit(barrier.wait, START_TIMEOUT_S)
    try:
        barrier.wait(START_TIMEOUT_S)
    except threading.BrokenBarrierError:
        logger.warning("the pool did not start %d threads in %.0f s", count, START_TIMEOUT_S)
        return 0
    logger.info("started %d pool threads in %.2f s", count, time.monotonic() - started)
    return count
