"""Riding out a Redis outage: retry a call with backoff until Redis answers or the limit passes.

Redis is allowed to blink (a restart, a failover, a few seconds unreachable). Workers, the
session host and the dispatcher call Redis through ``survive``/``survive_sync`` where a failed
call would otherwise lose work or end a wait: the call is retried with exponential backoff for up
to ``RHO_AGENT_REDIS_OUTAGE_LIMIT`` seconds (60 by default), and only then fails with
``RedisOutage``. The limit bounds how long anything waits on a Redis that is gone for good.

A retried call may have run once already when its reply was lost with the connection; the calls
wrapped here are reads, idempotent writes, or Lua scripts whose second run is refused (a finish
whose attempt is over, a start of a job already running).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dispatch.errors import FleetUnavailable

logger = logging.getLogger("dispatch.outage")

T = TypeVar("T")
RETRYABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors of an unreachable or restarting Redis (``BusyLoadingError`` is a ConnectionError)."""
FIRST_DELAY_S = 0.05
LAST_DELAY_S = 2.0
BUS_REDIS = "the job bus's Redis"
"""What an outage message calls the server that went away, unless told another."""


class RedisOutage(FleetUnavailable):
    """Redis stayed unreachable for longer than ``RHO_AGENT_REDIS_OUTAGE_LIMIT``."""


class Backoff:
    """Delays for one outage: 0.05 s doubling to 2 s, until ``limit_s`` has passed."""

    def __init__(self, limit_s: float, what: str, server: str = BUS_REDIS) -> None:
        self._deadline = time.monotonic() + limit_s
        self._limit_s = limit_s
        self._what = what
        self._server = server
        self._delay = FIRST_DELAY_S
        self._failures = 0

    def next_delay(self, exc: Exception) -> float:
        """The pause before the next try, or ``RedisOutage`` when the limit is used up."""
        self._failures += 1
        delay = self._delay
        if time.monotonic() + delay > self._deadline:
            raise RedisOutage(
                f"cannot reach {self._server} for more than {self._limit_s:g} s while "
                f"{self._what} ({exc}); check that it runs there, or raise "
                "RHO_AGENT_REDIS_OUTAGE_LIMIT"
            ) from exc
        if self._failures == 1:
            logger.warning("cannot reach %s while %s (%s); retrying", self._server, self._what, exc)
        self._delay = min(delay * 2, LAST_DELAY_S)
        return delay


async def survive(call: Callable[[], Awaitable[T]], *, limit_s: float, what: str) -> T:
    """``await call()``, retried through a Redis outage of up to ``limit_s`` seconds."""
    backoff = Backoff(limit_s, what)
    while True:
        try:
            return await call()
        except RETRYABLE as exc:
            await asyncio.sleep(backoff.next_delay(exc))


def survive_sync(
    call: Callable[[], T],
    *,
    limit_s: float,
    what: str,
    retry_on: tuple[type[Exception], ...] = RETRYABLE,
    server: str = BUS_REDIS,
) -> T:
    """``call()`` on the caller's thread, retried through an outage of up to ``limit_s``
    (on ``retry_on`` errors: kombu wraps Redis's, and RabbitMQ's, in its ``OperationalError``);
    ``server`` names what is unreachable in the messages."""
    backoff = Backoff(limit_s, what, server)
    while True:
        try:
            return call()
        except retry_on as exc:
            time.sleep(backoff.next_delay(exc))
