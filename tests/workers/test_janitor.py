"""The janitor trims the session and job indexes (real Redis, a prefix of the test's own)."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from dispatch.settings import FleetSettings
from workers.janitor import Janitor

pytestmark = pytest.mark.integration


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    yield connection
    await connection.aclose()


async def test_tidy_drops_old_and_orphaned_members_and_sets_expiry(client: aioredis.Redis) -> None:
    settings = FleetSettings(key_prefix=f"tj{secrets.token_hex(3)}:", retention_s=3600)
    keys = settings.keys
    now = time.time()
    try:
        await client.hset(keys.session("live"), "status", "idle")
        await client.hset(keys.session("too-old"), "status", "idle")
        await client.zadd(keys.sessions(), {"live": now, "orphan": now, "too-old": now - 7200})
        await client.hset(keys.job("j-live"), "status", "queued")
        await client.zadd(keys.jobs(), {"j-live": now, "j-gone": now})

        dropped = await Janitor(client, settings).tidy_once()

        assert dropped == 3
        assert await client.zrange(keys.sessions(), 0, -1) == ["live"]
        assert await client.zrange(keys.jobs(), 0, -1) == ["j-live"]
        assert 0 < await client.ttl(keys.sessions()) <= 3600
        assert 0 < await client.ttl(keys.jobs()) <= 3600
        assert await Janitor(client, settings).tidy_once() == 0  # another worker holds the lock
    finally:
        found = [key async for key in client.scan_iter(match=keys.pattern())]
        if found:
            await client.delete(*found)
