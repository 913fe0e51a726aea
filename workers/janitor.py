"""Janitor: keeps the fleet's two indexes from growing without bound.

Every key a job writes expires after the retention (``RHO_AGENT_RETENTION``), but the indexes
that list them, ``{p}sessions`` and ``{p}jobs`` (sorted sets), are refreshed by every new entry
and so never expire on a busy fleet: their members outlive the records they point to (after a
busy week, or after a Redis restart without persistence, ``RedisSessionStore.list`` walked
thousands of ids of which a handful still existed). Every ``interval_s`` one worker (a Redis
lock) drops members older than the retention and members whose record is gone, and gives both
indexes an expiry.
"""

from __future__ import annotations

import logging
from typing import Any

from dispatch.engine.loop import every
from dispatch.settings import FleetSettings

logger = logging.getLogger("workers.janitor")

INTERVAL_S = 60.0
_PAGE = 1000


class Janitor:
    """Tidies ``{p}sessions`` and ``{p}jobs``; ``tidy_once`` returns how many members it dropped."""

    def __init__(self, client: Any, settings: FleetSettings, interval_s: float = INTERVAL_S):
        self._client = client
        self._settings = settings
        self._interval_s = interval_s

    async def run(self) -> None:
        await every(
            self._interval_s,
            self.tidy_once,
            failing="tidying the job and session indexes",
            log=logger,
            at_once=True,
        )

    async def tidy_once(self) -> int:
        keys = self._settings.keys
        lock_ms = max(1, int(self._interval_s * 900))
        if not await self._client.set(keys.janitor_lock(), "1", nx=True, px=lock_ms):
            return 0
        retention = self._settings.retention_s
        seconds, _ = await self._client.time()
        dropped = 0
        for index, record in ((keys.sessions(), keys.session), (keys.jobs(), keys.job)):
            dropped += await self._client.zremrangebyscore(index, "-inf", seconds - retention)
            dropped += await self._drop_orphans(index, record)
            await self._client.expire(index, retention)
        if dropped:
            logger.info("dropped %d index entries whose job or session expired", dropped)
        return dropped

    async def _drop_orphans(self, index: str, record: Any) -> int:
        """Members of ``index`` whose record (``record(member)``) no longer exists."""
        dropped = 0
        cursor = 0
        while True:
            cursor, page = await self._client.zscan(index, cursor, count=_PAGE)
            members = [member for member, _ in page]
            if members:
                pipe = self._client.pipeline(transaction=False)
                for member in members:
                    pipe.exists(record(member))
                present = await pipe.execute()
                gone = [m for m, exists in zip(members, present, strict=True) if not exists]
                if gone:
                    dropped += await self._client.zrem(index, *gone)
            if cursor == 0:
                return dropped
