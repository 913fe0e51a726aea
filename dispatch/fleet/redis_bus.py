"""RedisBus: the job bus on Redis (hash per job, streams for events and traces).

Writes from running jobs go through a BatchWriter (never blocking the event loop, never lost),
fenced by the job attempt that made them (a stale worker's writes are refused atomically);
state changes that must be atomic (start, finish, cancel) are Lua scripts. One instance belongs to
one event loop (redis.asyncio connections are bound to the loop that made them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio as aioredis

from dispatch.engine.approval import DecideOutcome, encode_pending, refused
from dispatch.engine.bus import (
    EVENT_PAGE,
    START,
    CancelOutcome,
    Claim,
    JobBus,
    Refused,
    StartAction,
    StartDecision,
    StreamEntry,
    cancelled_before_start,
    event_entry,
    rejected,
    result_dict,
)
from dispatch.fleet import lua
from dispatch.fleet.outage import RedisOutage, survive
from dispatch.fleet.records import VanishedRecords
from dispatch.fleet.redis_clients import async_client
from dispatch.fleet.writer import BatchWriter, Fence
from dispatch.info import Decision, JobInfo, PendingCall, job_fields
from dispatch.keys import Keys
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec
from rho_agent import jsoncodec
from rho_agent.events import RunResult
from rho_agent.redact import redact, redact_data

T = TypeVar("T")
logger = logging.getLogger("dispatch.redis_bus")
_INFO_FIELDS = [*JobInfo.model_fields, "approval_decisions"]
_MAX_CONNECTIONS = 64


def decode_entry(raw: str) -> list[dict[str, Any]]:
    """The items of one stream entry: one JSON object, or a list of them written together."""
    data = jsoncodec.loads(raw)
    return data if isinstance(data, list) else [data]


def stream_entries(reply: Any) -> list[StreamEntry]:
    """The entries of an XREAD reply on one stream (sync or async client), decoded."""
    if not reply:
        return []
    return [
        StreamEntry(entry_id, item)
        for entry_id, fields in reply[0][1]
        for item in decode_entry(fields["d"])
    ]


def queue_submit(pipe: Any, specs: Sequence[JobSpec], settings: FleetSettings, queue: str) -> None:
    """Queue on ``pipe`` (sync or async) the writes that record ``specs`` as queued jobs.

    Each job gets a lease of ``queued_lease_s`` at once: a message the broker lost, or one whose
    worker died before claiming it, is re-sent by the sweeper instead of waiting forever. (The
    deadline is this machine's clock, where running leases use Redis's: a skew of seconds does
    not matter against minutes.)
    """
    keys = settings.keys
    for spec in specs:
        key = keys.job(spec.job_id)
        pipe.hset(key, mapping=job_fields(spec, queue=queue))
        pipe.expire(key, settings.retention_s)
    if specs:
        pipe.zadd(keys.jobs(), {spec.job_id: spec.submitted_at for spec in specs})
        pipe.zremrangebyscore(keys.jobs(), "-inf", specs[-1].submitted_at - settings.retention_s)
        pipe.expire(keys.jobs(), settings.retention_s)
        deadline_ms = int((time.time() + settings.queued_lease_s) * 1000)
        pipe.zadd(keys.leases(), {spec.job_id: deadline_ms for spec in specs})


class RedisBus:
    """A JobBus on one Redis database."""

    def __init__(self, client: aioredis.Redis, settings: FleetSettings) -> None:
        self.client = client
        # redis-py's annotations cannot express decode_responses=True (every reply is str here).
        self._r: Any = client
        self.settings = settings
        self.keys: Keys = settings.keys
        self._retention = settings.retention_s
        self._maxlen = settings.events_maxlen
        self._writer = BatchWriter(
            client,
            retention_s=settings.retention_s,
            on_refused=self._writes_refused,
            before_resend=self._restore_writers,
        )
        self._refused_callbacks: list[Refused] = []
        self._checking: set[asyncio.Task[None]] = set()
        self.records = VanishedRecords(client, settings)
        self._start = client.register_script(lua.START)
        self._finish = client.register_script(lua.FINISH)
        self._cancel = client.register_script(lua.CANCEL)
        self._await_approval = client.register_script(lua.AWAIT_APPROVAL)
        self._decide = client.register_script(lua.DECIDE)
        self._expire_approvals = client.register_script(lua.EXPIRE_APPROVALS)
        self._submit_children = client.register_script(lua.SUBMIT_CHILDREN)

    @classmethod
    def from_settings(cls, settings: FleetSettings) -> RedisBus:
        """Connect to ``settings.bus_url`` (the broker's Redis unless set apart).

        The pool is bounded and blocking: a thousand sessions share a few dozen connections
        (their writes are batched anyway) and wait for one rather than fail.
        """
        if not settings.bus_url:
            raise ValueError("RedisBus needs a Redis URL (RHO_AGENT_BROKER_URL or REDIS_URL)")
        client = async_client(
            settings.bus_url,
            master_name=settings.sentinel_master,
            decode_responses=True,
            max_connections=_MAX_CONNECTIONS,
            timeout=60,
            health_check_interval=30,
        )
        return cls(client, settings)

    # -- dispatcher side ----------------------------------------------------------------------

    async def submit(self, specs: Sequence[JobSpec], queue: str) -> None:
        pipe: Any = self.client.pipeline(transaction=False)
        queue_submit(pipe, specs, self.settings, queue)
        await pipe.execute()

    async def get_info(self, job_ids: Sequence[str]) -> list[JobInfo | None]:
        async def read() -> list[list[str | None]]:
            pipe: Any = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hmget(self.keys.job(job_id), _INFO_FIELDS)
            rows: list[list[str | None]] = await pipe.execute()
            return rows

        rows = await self._survive(read, "reading job metadata")
        infos: list[JobInfo | None] = []
        for job_id, row in zip(job_ids, rows, strict=True):
            fields = {name: value for name, value in zip(_INFO_FIELDS, row, strict=True) if value}
            infos.append(JobInfo.from_fields(job_id, fields) if "status" in fields else None)
        return infos

    async def get_results(self, job_ids: Sequence[str]) -> list[RunResult | None]:
        async def read() -> list[str | None]:
            pipe: Any = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "result")
            raws: list[str | None] = await pipe.execute()
            return raws

        raws = await self._survive(read, "reading job results")
        return [RunResult.from_dict(jsoncodec.loads(raw)) if raw else None for raw in raws]

    async def recent_jobs(self, limit: int) -> list[str]:
        return list(await self._r.zrevrange(self.keys.jobs(), 0, limit - 1))

    async def request_cancel(self, job_id: str) -> CancelOutcome:
        outcome = await self._end_queued(job_id, cancelled_before_start(), "cancel", "")
        return "cancelled" if outcome == "cancelled" else outcome  # type: ignore[return-value]

    async def reject(self, job_id: str, error: str) -> bool:
        return await self._end_queued(job_id, rejected(error), "reject", error) == "error"

    async def _end_queued(self, job_id: str, result: RunResult, mode: str, error: str) -> str:
        outcome: str = await self._cancel(
            keys=[
                self.keys.job(job_id),
                self.keys.events(job_id),
                self.keys.cancel(job_id),
                self.keys.cancels(),
                self.keys.leases(),
            ],
            args=[
                job_id,
                self._retention,
                self._maxlen,
                jsoncodec.dumps(redact_data(result_dict(result))),
                jsoncodec.dumps(redact_data(event_entry(result.events[0]))),
                self.keys.dispatcher_prefix(),
                self.keys.session_prefix(),
                mode,
                redact(error),
                self.keys.approvals(),
            ],
        )
        return outcome

    async def decide(
        self, job_id: str, decision: Decision, call_ids: Sequence[str] | None, reason: str
    ) -> DecideOutcome:
        reply = await self._decide(
            keys=[self.keys.job(job_id), self.keys.leases(), self.keys.approvals()],
            args=[
                job_id,
                decision,
                "*" if call_ids is None else jsoncodec.dumps(list(call_ids)),
                reason,
                self.settings.queued_lease_s * 1000,
                self._retention,
                self._maxlen,
            ],
        )
        action = str(reply[0])
        if action == "waiting":
            return DecideOutcome("waiting", undecided=int(reply[1]))
        if action == "queued":
            return DecideOutcome("queued", JobSpec.decode(reply[2]), int(reply[3]))
        raise refused(job_id, action, str(reply[1]))

    async def awaiting(self, limit: int) -> list[JobInfo]:
        job_ids = await self._r.zrange(self.keys.approvals(), 0, limit - 1)
        return [
            info
            for info in await self.get_info(job_ids)
            if info is not None and info.status == "awaiting_approval"
        ]

    async def expire_approvals(self, reason: str) -> list[tuple[JobSpec, int]]:
        flat: list[str] = await self._expire_approvals(
            keys=[self.keys.approvals(), self.keys.leases()],
            args=[
                self.keys.job_prefix(),
                self.settings.queued_lease_s * 1000,
                self._retention,
                self._maxlen,
                reason,
                500,
            ],
        )
        return [
            (JobSpec.decode(flat[index + 1]), int(flat[index + 2]))
            for index in range(0, len(flat), 3)
        ]

    async def read_done(self, dispatcher_id: str, after: str, block_s: float) -> list[StreamEntry]:
        return await self._read(self.keys.done(dispatcher_id), after, block_s, 10_000)

    async def read_events(
        self, job_id: str, after: str = START, block_s: float = 0.0, count: int = EVENT_PAGE
    ) -> list[StreamEntry]:
        return await self._read(self.keys.events(job_id), after, block_s, count)

    async def read_trace(
        self, session_id: str, after: str = START, block_s: float = 0.0
    ) -> list[StreamEntry]:
        key = self.keys.trace(session_id)
        if block_s > 0:
            return await self._read(key, after, block_s, 10_000)
        entries: list[StreamEntry] = []
        while True:  # page through a long trace without one huge reply
            page = await self._read(key, after, 0.0, 10_000)
            entries.extend(page)
            if len(page) < 10_000:
                return entries
            after = page[-1].id

    async def close(self) -> None:
        await self._writer.close()
        await self.client.aclose()

    # -- runner side --------------------------------------------------------------------------

    async def start(self, spec: JobSpec, worker: str, lease_ms: int) -> StartDecision:
        action, attempt, detail, handbacks = await self._survive(
            lambda: self._start(
                keys=[
                    self.keys.job(spec.job_id),
                    self.keys.events(spec.job_id),
                    self.keys.cancel(spec.job_id),
                    self.keys.session_owner(spec.session_id),
                    self.keys.leases(),
                    self.keys.trace(spec.session_id),
                    self.keys.session(spec.session_id),
                ],
                args=[
                    spec.job_id,
                    worker,
                    lease_ms,
                    self._retention,
                    self._maxlen,
                    self.keys.job_prefix(),
                    "0" if spec.continue_session else "1",
                ],
            ),
            f"claiming job {spec.job_id}",
        )
        decided: StartAction = action
        if decided != "skip":
            self.records.claimed(spec, int(attempt), worker, lease_ms)
        return StartDecision(decided, int(attempt), str(detail), int(handbacks))

    async def get_fields(self, job_id: str) -> dict[str, str]:
        key = self.keys.job(job_id)
        return dict(await self._survive(lambda: self._r.hgetall(key), f"reading job {job_id}"))

    async def set_fields(self, job_id: str, fields: Mapping[str, str]) -> None:
        key, mapping = self.keys.job(job_id), dict(fields)
        await self._survive(lambda: self._r.hset(key, mapping=mapping), f"updating job {job_id}")

    def emit_event(self, claim: Claim, entry: dict[str, Any]) -> None:
        self._writer.xadd(
            self.keys.events(claim.job_id), entry, self._maxlen, self._fence(claim), now=True
        )

    def emit_trace(self, claim: Claim, session_id: str, record: dict[str, Any]) -> None:
        entry = {"job_id": claim.job_id, "record": record}
        self._writer.xadd(self.keys.trace(session_id), entry, None, self._fence(claim))

    def emit_progress(self, claim: Claim, fields: Mapping[str, str]) -> None:
        self._writer.hset(self.keys.job(claim.job_id), dict(fields), self._fence(claim))

    def emit_session(
        self, claim: Claim, session_id: str, fields: Mapping[str, str], *, new: bool
    ) -> None:
        fence = self._fence(claim)
        self._writer.hset(self.keys.session(session_id), dict(fields), fence)
        if new:
            self._writer.zadd(self.keys.sessions(), {session_id: time.time()}, fence)

    def on_refused(self, callback: Refused) -> None:
        self._refused_callbacks.append(callback)

    def _fence(self, claim: Claim) -> Fence:
        return Fence(self.keys.job(claim.job_id), claim.attempt)

    def _writes_refused(self, fence: Fence) -> None:
        """A refused write stops its run, unless the refusal only means Redis lost the job's
        record (a restart without persistence): then the record is re-created instead."""
        claim = Claim(fence.job_key.removeprefix(self.keys.job_prefix()), fence.attempt)
        task = asyncio.get_running_loop().create_task(self._refused(claim))
        self._checking.add(task)
        task.add_done_callback(self._checking.discard)

    async def _flushed(self) -> None:
        await self._writer.flush()
        if self._checking:
            await asyncio.gather(*self._checking, return_exceptions=True)

    async def _restore_writers(self, fences: list[Fence]) -> None:
        """Before the writer resends after a reconnect: re-create the records Redis lost of the
        jobs whose writes it holds, so a restart without persistence drops none of them."""
        for fence in fences:
            await self.records.restore(
                fence.job_key.removeprefix(self.keys.job_prefix()), fence.attempt
            )

    async def restore_missing(self, running: set[str]) -> list[str]:
        """Re-create the records Redis lost of the jobs this worker runs (``running``)."""
        restored = await self.records.restore_missing(running)
        if restored:
            self._writer.expire_again()
        return restored

    async def _refused(self, claim: Claim) -> None:
        try:  # Redis just came back from a restart: its pooled connections may be stale
            restored = await self._survive(
                lambda: self.records.restore(claim.job_id, claim.attempt),
                f"checking job {claim.job_id}",
            )
            if restored:
                self._writer.expire_again()
                return
            status, attempt = await self._r.hmget(self.keys.job(claim.job_id), "status", "attempt")
            logger.warning(
                "job %s: a write of attempt %s was refused; the job is %s under attempt %s",
                claim.job_id,
                claim.attempt,
                status,
                attempt,
            )
        except Exception as exc:
            logger.warning("checking job %s's record failed (%s)", claim.job_id, exc)
        for callback in self._refused_callbacks:
            callback(claim)

    async def flush(self) -> None:
        """Wait until Redis stored every queued write and every refusal among them is reported;
        ``RedisOutage`` past the outage limit."""
        try:
            await asyncio.wait_for(self._flushed(), self.settings.redis_outage_s)
        except TimeoutError:
            raise RedisOutage(
                f"Redis did not store this worker's writes within {self.settings.redis_outage_s:g}"
                " s (RHO_AGENT_REDIS_OUTAGE_LIMIT); they stay queued and are resent when it is back"
            ) from None

    async def finish(
        self, spec: JobSpec, attempt: int, result: RunResult, error: str | None
    ) -> bool:
        await self.flush()
        status = result.status
        done = await self._survive(
            lambda: self._finish(
                keys=[
                    self.keys.job(spec.job_id),
                    self.keys.events(spec.job_id),
                    self.keys.leases(),
                    self.keys.session_owner(spec.session_id),
                    self.keys.cancel(spec.job_id),
                ],
                args=[
                    spec.job_id,
                    attempt,
                    status,
                    jsoncodec.dumps(redact_data(result_dict(result))),
                    redact(error or ""),
                    self._retention,
                    self._maxlen,
                    self.keys.dispatcher_prefix(),
                ],
            ),
            f"finishing job {spec.job_id}",
        )
        self.records.released(spec.job_id)
        return bool(done)

    async def await_approval(
        self,
        spec: JobSpec,
        attempt: int,
        result: RunResult,
        error: str | None,
        pending: list[PendingCall],
        ttl_s: float,
    ) -> bool:
        await self._writer.flush()
        done = await self._await_approval(
            keys=[
                self.keys.job(spec.job_id),
                self.keys.events(spec.job_id),
                self.keys.leases(),
                self.keys.approvals(),
                self.keys.cancel(spec.job_id),
            ],
            args=[
                spec.job_id,
                attempt,
                jsoncodec.dumps(redact_data(result_dict(result))),
                redact(error or ""),
                self._retention,
                self._maxlen,
                self.keys.dispatcher_prefix(),
                redact(encode_pending(pending)),
                ttl_s,
            ],
        )
        return bool(done)

    async def submit_children(self, parent_id: str, specs: Sequence[JobSpec]) -> list[str]:
        args: list[Any] = [
            self.keys.job_prefix(),
            self._retention,
            self.settings.queued_lease_s * 1000,
        ]
        for spec in specs:
            fields = job_fields(spec, queue=spec.queue or self.settings.queue)
            args += [spec.job_id, repr(spec.submitted_at), jsoncodec.dumps(fields)]
        keys = [self.keys.jobs(), self.keys.leases(), self.keys.children(parent_id)]
        return list(await self._submit_children(keys=keys, args=args))

    async def children(self, job_id: str) -> list[str]:
        return sorted(await self._r.smembers(self.keys.children(job_id)))

    async def next_cancels(self, after: str, block_s: float) -> tuple[str, list[str]]:
        key = self.keys.cancels()
        if after == "$":
            last = await self._r.xrevrange(key, count=1)
            after = last[0][0] if last else "0-0"
        entries = await self._read(key, after, block_s, 1000)
        position = entries[-1].id if entries else after
        return position, [str(entry.data.get("job_id")) for entry in entries]

    # -- helpers ------------------------------------------------------------------------------

    async def _read(self, key: str, after: str, block_s: float, count: int) -> list[StreamEntry]:
        block = int(block_s * 1000) if block_s > 0 else None
        reply = await self._survive(
            lambda: self._r.xread({key: after}, count=count, block=block), f"reading {key}"
        )
        return stream_entries(reply)

    async def _survive(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        return await survive(call, limit_s=self.settings.redis_outage_s, what=what)


if TYPE_CHECKING:
    _ROLES: type[JobBus] = RedisBus
    """mypy checks here that RedisBus implements every role of the bus (both sides)."""
