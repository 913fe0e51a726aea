"""A worker Celery app (``celery -A tests.chaos.slow_claim worker``) that waits before claiming.

It is the normal worker app, except that its runner waits ``RHO_TEST_CLAIM_DELAY`` seconds
between receiving a job and claiming it (``RedisBus.start``), after touching the file
``RHO_TEST_RECEIVED_FILE``: the window in which the chaos tests kill a worker. Test-only: the
patch is applied in the worker process that imports this module, never in the package.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from dispatch.engine.bus import StartDecision
from dispatch.fleet.redis_bus import RedisBus
from dispatch.spec import JobSpec
from workers import get_app

_claim = RedisBus.start


async def _start_after_a_delay(
    self: RedisBus, spec: JobSpec, worker: str, lease_ms: int
) -> StartDecision:
    Path(os.environ["RHO_TEST_RECEIVED_FILE"]).write_text(spec.job_id)  # noqa: ASYNC240
    await asyncio.sleep(float(os.environ["RHO_TEST_CLAIM_DELAY"]))
    return await _claim(self, spec, worker, lease_ms)


RedisBus.start = _start_after_a_delay  # type: ignore[method-assign]
app = get_app()
