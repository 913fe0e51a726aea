"""Interpreter settings for a worker process, applied once it is ready to take jobs.

A worker is one Python process with two busy threads: Celery's consumer, which takes messages
with blocking Redis round trips, and the session host's event loop, which runs every job.
CPython's defaults for the garbage collector and the GIL switch interval suit neither.
"""

from __future__ import annotations

import gc
import sys

GC_THRESHOLDS = (10_000, 20, 20)
"""Young collections every 10,000 allocations instead of 700: a worker allocates constantly
(requests, events, records) and the default collects thousands of times a second."""

SWITCH_INTERVAL_S = 0.0002
"""How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).

Every Redis reply the consumer waits for (BRPOP, kombu's unacked bookkeeping, the ack) hands the
GIL to the busy loop thread, and the consumer then waits up to the full interval to get it back:
the convoy effect. Given 1,000 jobs whose model calls take 1 s, a worker had 220-320 of them
running at once at 5 ms and 590-1,000 at 0.2 ms, and without model delays it finished about
30 % more jobs per second (docs/benchmarks.md, benchmark 5)."""


def tune_interpreter() -> None:
    """Freeze what start-up allocated, collect less often, and shorten the GIL switch interval.

    Full collections otherwise walk every module and class object of Celery, openai and the
    SDK, taking tens of milliseconds while every job on the loop waits (event delivery's tail).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
