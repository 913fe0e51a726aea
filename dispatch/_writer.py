"""BatchWriter: group the Redis writes of many running jobs into one pipeline per round trip.

Sessions call ``xadd``/``hset`` from synchronous callbacks inside the event loop; those calls only
queue. One background task writes everything queued so far in a single non-transactional pipeline,
then the next batch: while a round trip is in flight, new writes pile up and go together, so the
event loop never waits on Redis and a thousand sessions cost a few round trips per tick.
Writes are retried until they succeed (a Redis restart loses nothing still queued); ``flush``
returns once everything queued before it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger("dispatch.writer")

_RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_EXPIRY_MEMORY = 100_000


@dataclass(frozen=True)
class _Write:
    kind: str  # "xadd", "hset" or "zadd"
    key: str
    fields: dict[str, Any]
    maxlen: int | None = None


class BatchWriter:
    """Queues stream appends and hash updates; one task writes them in order, batched."""

    def __init__(self, client: aioredis.Redis, *, retention_s: int) -> None:
        self._client = client
        self._retention_s = retention_s
        self._expired_at: dict[str, float] = {}
        self._queue: list[_Write] = []
        self._queued = 0
        self._written = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def xadd(self, key: str, data: dict[str, Any], maxlen: int | None = None) -> None:
        """Append ``data`` to the stream ``key``.

        Items queued for the same stream in one batch share one stream entry: field ``d`` holds
        a JSON list of them (``decode_entry`` reads both forms), so a session's burst of trace
        records costs one XADD.
        """
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        self._put(_Write("xadd", key, {"d": payload}, maxlen))

    def hset(self, key: str, fields: dict[str, str]) -> None:
        self._put(_Write("hset", key, dict(fields)))

    def zadd(self, key: str, scores: dict[str, float]) -> None:
        self._put(_Write("zadd", key, dict(scores)))

    async def flush(self) -> None:
        """Wait until every write queued before this call is stored in Redis."""
        if self._written >= self._queued:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._queued, future))
        self._ensure_task()
        await future

    async def close(self) -> None:
        """Write what is queued (best effort, a few seconds), then stop the task."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), 5.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def _put(self, write: _Write) -> None:
        self._queue.append(write)
        self._queued += 1
        self._ensure_task()
        self._wake.set()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rho-writer")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue, []
                upto = self._written + len(batch)
                await self._write_with_retry(batch)
                self._written = upto
                self._release_waiters()

    async def _write_with_retry(self, batch: list[_Write]) -> None:
        delay = 0.05
        while True:
            try:
                await self._write(batch)
                return
            except _RETRYABLE as exc:
                logger.warning("Redis write failed (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _write(self, batch: list[_Write]) -> None:
        pipe: Any = self._client.pipeline(transaction=False)
        touched: dict[str, None] = {}
        for write in _grouped(batch):
            if write.kind == "xadd":
                pipe.xadd(write.key, write.fields, maxlen=write.maxlen, approximate=True)
            elif write.kind == "zadd":
                pipe.zadd(write.key, write.fields)
            else:
                pipe.hset(write.key, mapping=write.fields)
            touched[write.key] = None
        for key in self._due_for_expiry(touched):
            pipe.expire(key, self._retention_s)
        await pipe.execute()

    def _due_for_expiry(self, keys: dict[str, None]) -> list[str]:
        """Keys whose expiry was not pushed back in the last minute (one EXPIRE a minute is
        enough when the retention is at least a minute; it saves most of the commands)."""
        now = time.monotonic()
        if len(self._expired_at) > _EXPIRY_MEMORY:
            self._expired_at = {k: t for k, t in self._expired_at.items() if now - t < 60}
        due = [key for key in keys if now - self._expired_at.get(key, -1e9) >= 60]
        for key in due:
            self._expired_at[key] = now
        return due

    def _release_waiters(self) -> None:
        still_waiting = []
        for upto, future in self._waiters:
            if upto <= self._written:
                if not future.done():
                    future.set_result(None)
            else:
                still_waiting.append((upto, future))
        self._waiters = still_waiting


def _grouped(batch: list[_Write]) -> list[_Write]:
    """The batch with every stream's appends merged into one entry (a JSON list), in order."""
    appends: dict[str, list[_Write]] = {}
    merged: list[_Write] = []
    for write in batch:
        if write.kind != "xadd":
            merged.append(write)
            continue
        if write.key not in appends:
            appends[write.key] = []
            merged.append(write)  # the stream's place in the batch; filled in below
        appends[write.key].append(write)
    for index, write in enumerate(merged):
        group = appends.get(write.key) if write.kind == "xadd" else None
        if group and len(group) > 1:
            items = ",".join(item.fields["d"] for item in group)
            merged[index] = _Write("xadd", write.key, {"d": f"[{items}]"}, write.maxlen)
    return merged
