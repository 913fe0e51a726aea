"""Rate limits on Redis: every worker of the fleet admits model calls through the same buckets.

Admission is one Lua step (``lua.RATE_ACQUIRE``) across every limit a call falls under; a 429
pauses those buckets for everyone (``lua.RATE_PAUSE``). Times come from the Redis server.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from dispatch.fleet import lua
from dispatch.fleet.script_batch import ScriptBatcher
from dispatch.keys import Keys
from rho_agent.ratelimits import Admission, RateLimit


class RedisRateLimiter:
    """A RateLimiter shared through Redis. ``with_limits`` adds a batch's own limits."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        limits: Sequence[RateLimit] = (),
        batcher: ScriptBatcher | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self.limits = tuple(limits)
        self._batcher = batcher or ScriptBatcher(client)
        self._acquire = client.register_script(lua.RATE_ACQUIRE)
        self._pause = client.register_script(lua.RATE_PAUSE)

    def with_limits(self, extra: Sequence[RateLimit], namespace: str) -> RedisRateLimiter:
        """This limiter plus ``extra`` limits counted apart under ``namespace`` (a batch)."""
        scoped = [replace(limit, namespace=namespace) for limit in extra]
        return RedisRateLimiter(self._client, self._keys, [*self.limits, *scoped], self._batcher)

    def limits_for(self, endpoint: str, model: str) -> Sequence[RateLimit]:
        return [limit for limit in self.limits if limit.matches(endpoint, model)]

    async def try_acquire(self, endpoint: str, model: str, tokens: int) -> Admission:
        keys: list[str] = []
        args: list[str] = [str(tokens), secrets.token_hex(6)]
        for limit in self.limits_for(endpoint, model):
            bucket = limit.bucket(endpoint, model)
            keys += [self._keys.rate_log(bucket), self._keys.rate_state(bucket)]
            args += [
                "" if limit.requests is None else str(limit.requests),
                "" if limit.tokens is None else str(limit.tokens),
                str(int((limit.window_s + limit.guard) * 1000)),
            ]
        if not keys:
            return Admission(0.0)
        wait_ms, paused = await self._batcher.call(self._acquire, keys, args)
        return Admission(int(wait_ms) / 1000, paused=bool(int(paused)))

    async def pause(self, endpoint: str, model: str, seconds: float) -> None:
        buckets = [limit.bucket(endpoint, model) for limit in self.limits_for(endpoint, model)]
        if buckets:
            keys = [self._keys.rate_state(bucket) for bucket in buckets]
            await self._pause(keys=keys, args=[str(max(int(seconds * 1000), 1))])
