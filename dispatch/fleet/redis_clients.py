"""Redis clients for the fleet's URLs: ``redis://``-style ones directly, ``sentinel://`` ones
through the Sentinels, which name the current master at each (re)connection.

Every place that opens the job bus (the dispatcher, the workers' bus and heartbeat, the session
store, ``fleet status``) comes here, so a Sentinel URL works wherever a Redis URL does, and a
failover is followed: a connection to a demoted master is dropped and the next one asks the
Sentinels again. ``dispatch.urls`` describes the URL forms.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as async_sentinel
import redis.sentinel as sync_sentinel

from dispatch.settings import REDIS_URL
from dispatch.urls import SentinelUrl, parse_sentinel_url, scheme_of


class _BlockingSentinelPool(async_sentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel-managed pool that waits for a free connection instead of failing, like the
    bus's ``BlockingConnectionPool`` on a plain Redis URL."""


def _sentinel_parts(url: str, setting: str) -> tuple[SentinelUrl, dict[str, Any]]:
    """The parsed URL and the keyword arguments for the master's connections."""
    parsed = parse_sentinel_url(url, setting)
    login: dict[str, Any] = {"db": parsed.db}
    if parsed.username:
        login["username"] = parsed.username
    if parsed.password:
        login["password"] = parsed.password
    return parsed, login


def sync_client(
    url: str, *, master_name: str, setting: str = REDIS_URL.name, **kwargs: Any
) -> redis.Redis:
    """A blocking client of the Redis ``url`` names (the Sentinels' master for sentinel://)."""
    if scheme_of(url) != "sentinel":
        return redis.Redis.from_url(url, **kwargs)
    parsed, login = _sentinel_parts(url, setting)
    timeouts = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    sentinels = sync_sentinel.Sentinel(list(parsed.sentinels), sentinel_kwargs=timeouts)
    client: redis.Redis = sentinels.master_for(master_name, **login, **kwargs)
    return client


def async_client(
    url: str,
    *,
    master_name: str,
    max_connections: int,
    timeout: float,
    setting: str = REDIS_URL.name,
    **kwargs: Any,
) -> aioredis.Redis:
    """An asyncio client with a bounded pool that waits ``timeout`` s for a free connection."""
    if scheme_of(url) != "sentinel":
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, **kwargs
        )
        return aioredis.Redis(connection_pool=pool)
    parsed, login = _sentinel_parts(url, setting)
    sentinels = async_sentinel.Sentinel(list(parsed.sentinels))
    client: aioredis.Redis = sentinels.master_for(
        master_name,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections,
        timeout=timeout,
        **login,
        **kwargs,
    )
    return client


def sentinels_know_master(client: redis.Redis) -> bool:
    """Whether a Sentinel of ``client`` (a sentinel:// client) answers and monitors its master:
    no master while one does is a failover under way, not a wrong URL or master name. False for
    a plain Redis client."""
    pool = client.connection_pool
    manager = getattr(pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        try:
            masters = sentinel.sentinel_masters()
        except (redis.RedisError, OSError):
            continue
        if getattr(pool, "service_name", None) in masters:
            return True
    return False
