"""BatchWriter: the Redis writes of every running job, batched and pipelined on one connection.

Sessions call ``xadd``/``hset``/``zadd`` from synchronous callbacks inside the event loop; those
calls only queue. A sender task writes everything queued so far as one batch of commands straight
onto the writer's own connection and goes back to waiting, without waiting for Redis to answer;
a receiver task reads the replies in order and marks the writes stored. While Redis is busy new
writes still pile up into the next batch.

A write someone is waiting to read (a job's event, ``xadd(..., now=True)``) does not wait for the
sender: it goes onto the socket at once, in the caller's own step, with everything queued before
it. Waking the sender costs a pass through the loop's ready queue, and on a worker running
hundreds of jobs that queue holds their whole burst of session steps (hundreds of milliseconds).

Writes are resent until Redis confirms them (a dropped connection or a Redis restart loses
nothing still queued or unconfirmed; a write may land twice). ``flush`` returns once everything
queued before it is confirmed.

Writes made for a running job carry a ``Fence`` (the job hash and the attempt): a batch's fenced
writes go as one Lua script (``lua.FENCED_WRITES``) that applies each job's writes only while
that attempt still owns the job, and skips writes it already applied (so a fenced write never
lands twice). A refused fence is reported to ``on_refused``; its writes are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dispatch.fleet import lua
from rho_agent import jsoncodec
from rho_agent.redact import redact_data

logger = logging.getLogger("dispatch.writer")

_RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_EXPIRY_MEMORY = 100_000
"""Keys remembered as recently expired. Past it, those older than a minute are forgotten, and if
more than half remain (more keys written a minute than remembered) all are: each prune then
follows at least half this many new keys, never one per batch."""
_MAX_IN_FLIGHT = 1024
"""Batches sent and not yet confirmed; beyond this writes wait (Redis is falling behind). Replies
are read once per loop turn, and in one turn hundreds of jobs may each send an event at once."""
WRITER_CLIENT_NAME = "rho-agent-writer"
"""The writer connection's name in Redis's CLIENT LIST."""
_FIRST_RETRY_S = 0.05
_LAST_RETRY_S = 2.0
REPLY_TIMEOUT_S = 30.0
"""How long a batch's replies may take before the connection is presumed dead and the batch
resent."""


_FENCED_SHA = hashlib.sha1(lua.FENCED_WRITES.encode()).hexdigest()


@dataclass(frozen=True)
class Fence:
    """A fencing token: write only while hash ``job_key`` says ``running`` under ``attempt``."""

    job_key: str
    attempt: int


@dataclass(frozen=True)
class _Write:
    kind: str  # "xadd", "hset" or "zadd"
    key: str
    fields: dict[str, Any]
    maxlen: int | None = None
    fence: Fence | None = None
    seq: int = 0


@dataclass(frozen=True)
class _Sent:
    writes: list[_Write]
    replies: int
    script_reply: int = -1
    """Which reply is the fenced-writes script's (-1: the batch has no fenced writes)."""
    fences: tuple[Fence, ...] = ()
    """The script's groups, in order (its reply numbers the refused ones from 1)."""


class BatchWriter:
    """Queues stream appends and hash updates; writes them in order, batched and pipelined."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        retention_s: int,
        on_refused: Callable[[Fence], None] = lambda fence: None,
        before_resend: Callable[[list[Fence]], Awaitable[None]] | None = None,
    ) -> None:
        self._pool = client.connection_pool
        self._on_refused = on_refused
        self._before_resend = before_resend
        self._reconnecting = False
        """A connection failed: the next one runs ``before_resend`` before sending anything."""
        self._retention_s = retention_s
        self._expired_at: dict[str, float] = {}
        self._queue: list[_Write] = []
        self._queued = 0
        self._written = 0
        self._in_flight: deque[_Sent] = deque()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._sent = asyncio.Event()
        self._connection: Any = None
        self._live: Any = None
        """The connection while its sender and receiver run: writes may go straight onto it."""
        self._script_loaded = False
        """Whether the fenced-writes script was loaded on the live connection (a restarted Redis
        has forgotten it)."""
        self._retry_delay = _FIRST_RETRY_S
        self._task: asyncio.Task[None] | None = None

    def xadd(
        self,
        key: str,
        data: dict[str, Any],
        maxlen: int | None = None,
        fence: Fence | None = None,
        *,
        now: bool = False,
    ) -> None:
        """Append ``data`` to the stream ``key``.

        Items queued for the same stream in one batch share one stream entry: field ``d`` holds
        a JSON list of them (``decode_entry`` reads both forms), so a session's burst of trace
        records costs one XADD. Secrets are redacted here, the one door to Redis for running jobs.
        ``now`` writes it (and everything queued before it) to the socket before returning,
        unless the connection is down or Redis is behind; then it waits for the sender.
        """
        payload = jsoncodec.dumps(redact_data(data))
        self._put(_Write("xadd", key, {"d": payload}, maxlen, fence, self._queued + 1), now=now)

    def hset(self, key: str, fields: dict[str, str], fence: Fence | None = None) -> None:
        self._put(_Write("hset", key, redact_data(dict(fields)), None, fence, self._queued + 1))

    def zadd(self, key: str, scores: dict[str, float], fence: Fence | None = None) -> None:
        self._put(_Write("zadd", key, dict(scores), None, fence, self._queued + 1))

    async def flush(self) -> None:
        """Wait until every write queued before this call is stored in Redis."""
        if self._written >= self._queued:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._queued, future))
        self._ensure_task()
        await future

    async def close(self) -> None:
        """Write what is queued (best effort, a few seconds), then stop and disconnect."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), 5.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._disconnect()
        self._connection = None

    def expire_again(self) -> None:
        """Send ``EXPIRE`` again for every key written from now on: Redis lost keys (a restart
        without persistence), so keys this writer expired a moment ago may be new ones."""
        self._expired_at.clear()

    def _put(self, write: _Write, *, now: bool = False) -> None:
        self._queue.append(write)
        self._queued += 1
        if now and self._writable():
            self._send_queued(self._live)
            return
        self._ensure_task()
        self._wake.set()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rho-writer")

    async def _run(self) -> None:
        """Send and receive on the writer's connection; after a failure, reconnect and resend."""
        while True:
            try:
                connection = await self._connect()
                if self._reconnecting and self._before_resend is not None:
                    # Redis may have restarted without its data: the fenced writes about to be
                    # resent would be refused, and dropped, for want of their jobs' records.
                    fences = {write.fence for write in self._queue if write.fence is not None}
                    await self._before_resend(list(fences))
                self._reconnecting = False
                receiver = asyncio.create_task(self._receive(connection), name="rho-writer-acks")
                receiver.add_done_callback(lambda _: self._lost())
                self._script_loaded = False
                self._live = connection
                try:
                    await self._send(connection, receiver)
                finally:
                    self._live = None
                    receiver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await receiver
            except Exception as exc:
                self._requeue_unconfirmed()
                self._reconnecting = True
                await self._disconnect()  # unread replies must not be taken for the resent ones
                delay = self._retry_delay
                if isinstance(exc, _RETRYABLE):
                    logger.warning("Redis write failed (%s); retrying in %.2f s", exc, delay)
                else:
                    logger.exception("the Redis writer failed; resending in %.2f s", delay)
                await asyncio.sleep(delay)
                self._retry_delay = min(delay * 2, _LAST_RETRY_S)

    async def _connect(self) -> Any:
        """The writer's own connection, outside the pool: nothing else reads its replies.

        It has no send timeout: redis-py wraps a timed send in ``asyncio.wait_for``, which on
        this Python runs the write in a new task, behind whatever the loop has queued (a
        session's whole next step), instead of now. Replies have REPLY_TIMEOUT_S.
        """
        if self._connection is None:
            self._connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
            self._connection.socket_timeout = None
            self._connection.client_name = WRITER_CLIENT_NAME
        await self._connection.connect()
        return self._connection

    async def _disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.disconnect()

    def _lost(self) -> None:
        """The receiver stopped (the connection failed): no more direct writes; the sender sees
        it, raises and reconnects."""
        self._live = None
        self._wake.set()

    def _writable(self) -> bool:
        """Whether a write may go onto the socket now: connected, Redis keeping up (nothing
        waiting in the transport's buffer, few batches unconfirmed)."""
        if self._live is None or len(self._in_flight) >= _MAX_IN_FLIGHT:
            return False
        stream = _stream(self._live)
        return (
            stream is not None
            and not stream.transport.is_closing()
            and stream.transport.get_write_buffer_size() == 0
        )

    async def _send(self, connection: Any, receiver: asyncio.Task[None]) -> None:
        """Send each batch as soon as it is queued; returns only by raising."""
        while True:
            while not self._queue or len(self._in_flight) >= _MAX_IN_FLIGHT:
                if receiver.done():
                    receiver.result()  # raises the receiver's connection error
                self._wake.clear()
                await self._wake.wait()
            packed = self._pack_queued(connection)
            # No send timeout: the bytes go onto the socket before this awaits anything.
            await connection.send_packed_command(packed, check_health=False)

    def _send_queued(self, connection: Any) -> None:
        """Write everything queued onto ``connection`` now (non-blocking: the transport buffers
        what the socket does not take; a failure reaches the receiver, which resends)."""
        stream = _stream(connection)
        assert stream is not None  # _writable() checked it
        stream.writelines(self._pack_queued(connection))

    def _pack_queued(self, connection: Any) -> list[bytes]:
        """Everything queued as one batch of packed commands, recorded as in flight."""
        batch, self._queue = self._queue, []
        commands, fences = self._commands(batch)
        if fences and not self._script_loaded:
            commands.insert(0, ["SCRIPT", "LOAD", lua.FENCED_WRITES])
            self._script_loaded = True
        packed: list[bytes] = []
        replies = 0
        script_reply = -1
        for command in commands:
            try:
                packed.extend(connection.pack_command(*command))
            except DataError as exc:  # a caller's bug; dropping it keeps the rest going
                logger.error("dropped a %s to %s: %s", command[0], command[1], exc)
                continue
            if command[0] == "EVALSHA":
                script_reply = replies
            replies += 1
        self._in_flight.append(_Sent(batch, replies, script_reply, tuple(fences)))
        self._sent.set()
        return packed

    async def _receive(self, connection: Any) -> None:
        while True:
            while not self._in_flight:
                self._sent.clear()
                await self._sent.wait()
            sent = self._in_flight[0]
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                for index in range(sent.replies):
                    try:
                        reply = await connection.read_response()
                    except ResponseError as exc:  # a bad command, not a bad connection
                        if isinstance(exc, NoScriptError):  # flushed: load it again, resend
                            raise RedisConnectionError(str(exc)) from exc
                        logger.error("Redis refused a write (%s); it is dropped", exc)
                        continue
                    if index == sent.script_reply:
                        for group in reply:
                            self._on_refused(sent.fences[int(group) - 1])
            self._in_flight.popleft()
            self._retry_delay = _FIRST_RETRY_S  # Redis answers again
            self._written += len(sent.writes)
            self._release_waiters()
            self._wake.set()  # room for another batch, if the sender was waiting

    def _requeue_unconfirmed(self) -> None:
        """Put sent-but-unconfirmed writes back at the head of the queue, in order."""
        resend = [write for sent in self._in_flight for write in sent.writes]
        self._in_flight.clear()
        # Their EXPIREs may not have landed, and Redis may have restarted without its data:
        # every key written from now on may be new and needs its EXPIRE again.
        self._expired_at.clear()
        self._queue = resend + self._queue

    def _commands(self, batch: list[_Write]) -> tuple[list[list[Any]], list[Fence]]:
        """The batch as commands: plain ones, then one script for the fenced writes, then the
        EXPIREs; and the script's fences in its group order."""
        commands: list[list[Any]] = []
        touched: dict[str, None] = {}
        fenced = [write for write in batch if write.fence is not None]
        for write in _grouped([write for write in batch if write.fence is None]):
            command: list[Any]
            if write.kind == "xadd":
                command = ["XADD", write.key]
                if write.maxlen is not None:
                    command += ["MAXLEN", "~", write.maxlen]
                command += ["*", "d", write.fields["d"]]
            elif write.kind == "zadd":
                command = ["ZADD", write.key]
                for member, score in write.fields.items():
                    command += [score, member]
            else:
                command = ["HSET", write.key]
                for field, value in write.fields.items():
                    command += [field, value]
            commands.append(command)
            touched[write.key] = None
        fences: list[Fence] = []
        if fenced:
            script, fences = _fenced_script(fenced)
            if fences:
                commands.append(script)
                touched.update((write.key, None) for write in fenced)
        commands.extend(["EXPIRE", key, self._retention_s] for key in self._due_for_expiry(touched))
        return commands, fences

    def _due_for_expiry(self, keys: dict[str, None]) -> list[str]:
        """Keys whose expiry was not pushed back in the last minute (one EXPIRE a minute is
        enough when the retention is at least a minute; it saves most of the commands)."""
        now = time.monotonic()
        if len(self._expired_at) > _EXPIRY_MEMORY:
            self._expired_at = {k: t for k, t in self._expired_at.items() if now - t < 60}
            if len(self._expired_at) > _EXPIRY_MEMORY // 2:
                self._expired_at = {}  # forgotten keys get one EXPIRE more, no harm
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


def _stream(connection: Any) -> asyncio.StreamWriter | None:
    """The asyncio stream under a redis-py connection (None once disconnected): redis-py only
    sends from a coroutine, and a write that must leave in the caller's step cannot await."""
    stream: asyncio.StreamWriter | None = connection._writer  # noqa: SLF001
    return stream


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


def _fenced_script(writes: list[_Write]) -> tuple[list[Any], list[Fence]]:
    """One ``EVALSHA`` of ``lua.FENCED_WRITES`` for ``writes``, grouped by fence in order."""
    groups: dict[Fence, list[list[Any]]] = {}
    keys: dict[str, int] = {}
    for write in writes:
        assert write.fence is not None
        values: list[Any]
        if write.kind == "xadd":
            values = ["" if write.maxlen is None else write.maxlen, write.fields["d"]]
        elif write.kind == "zadd":
            values = [part for member, score in write.fields.items() for part in (score, member)]
        else:
            values = [part for item in write.fields.items() for part in item]
        if not all(isinstance(value, str | int | float | bytes) for value in values):
            logger.error(
                "dropped a %s to %s: a value is not a string or number", write.kind, write.key
            )
            continue
        key = keys.setdefault(write.key, len(keys) + 1)
        groups.setdefault(write.fence, []).append(
            [write.kind[0], key, write.seq, len(values), *values]
        )
    args: list[Any] = []
    for fence, ops in groups.items():
        args += [keys.setdefault(fence.job_key, len(keys) + 1), fence.attempt, len(ops)]
        args += [part for op in ops for part in op]
    return ["EVALSHA", _FENCED_SHA, len(keys), *keys, *args], list(groups)
