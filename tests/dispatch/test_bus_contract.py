"""One contract for both job buses: MemoryBus (embedded) and RedisBus (real Redis).

The Redis case uses the real server on 127.0.0.1:6379 (its Lua scripts need it), in a database of
its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from dispatch.engine.bus import Claim, JobBus, entry_event, event_entry, is_finished
from dispatch.engine.fan_out import cancel_children
from dispatch.engine.memory_bus import MemoryBus
from dispatch.errors import ApprovalRefused, JobNotFound
from dispatch.fleet.redis_bus import RedisBus
from dispatch.info import PendingCall
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec, build_spec
from rho_agent import AgentConfig, AgentEvent, RunResult
from tests.integration.fleet import REDIS_HOST, claimed_db


@pytest.fixture(scope="module")
def redis_db() -> Iterator[int]:
    with claimed_db() as db:
        yield db


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[JobBus]:
    if request.param == "memory":
        yield MemoryBus()
        return
    db = request.getfixturevalue("redis_db")
    settings = FleetSettings(broker_url=f"{REDIS_HOST}/{db}", key_prefix=f"c{id(request)}:")
    redis_bus = RedisBus.from_settings(settings)
    yield redis_bus
    await redis_bus.close()


def spec(session_id: str | None = None, **options: Any) -> JobSpec:
    return build_spec("hello", AgentConfig(), session_id=session_id, reply_to="d1", **options)


async def test_a_submitted_job_is_queued_and_listed(bus: JobBus) -> None:
    job = spec(labels={"k": "v"})
    await bus.submit([job], "q")
    [info] = await bus.get_info([job.job_id])
    assert info is not None
    assert (info.status, info.session_id, info.prompt, info.labels) == (
        "queued",
        job.session_id,
        "hello",
        {"k": "v"},
    )
    assert job.job_id in await bus.recent_jobs(10)
    assert await bus.get_info(["nope"]) == [None]


async def test_start_claims_once_and_records_it(bus: JobBus) -> None:
    job = spec()
    await bus.submit([job], "q")
    decision = await bus.start(job, "w1", 60_000)
    assert (decision.action, decision.attempt) == ("run", 1)
    again = await bus.start(job, "w2", 60_000)
    assert again.action == "skip"
    [info] = await bus.get_info([job.job_id])
    assert info is not None and (info.status, info.worker, info.attempt) == ("running", "w1", 1)
    [started] = await bus.read_events(job.job_id)
    assert started.data == {"kind": "job", "type": "started", "attempt": 1, "worker": "w1"}


async def test_writes_arrive_in_order_and_finish_ends_the_stream(bus: JobBus) -> None:
    job = spec()
    await bus.submit([job], "q")
    await bus.start(job, "w1", 60_000)
    bus.emit_event(Claim(job.job_id, 1), event_entry(AgentEvent("text", content="a")))
    bus.emit_trace(
        Claim(job.job_id, 1), job.session_id, {"type": "message", "ts": "t", "role": "user"}
    )
    bus.emit_event(Claim(job.job_id, 1), event_entry(AgentEvent("text", content="b")))
    bus.emit_progress(Claim(job.job_id, 1), {"turns": "1", "input_tokens": "7", "cost_usd": "0.5"})
    result = RunResult(text="ab", events=[AgentEvent("text", content="ab")], status="completed")
    assert await bus.finish(job, 1, result, None)
    entries = await bus.read_events(job.job_id)
    texts = [event.content for e in entries if (event := entry_event(e)) is not None]
    assert texts == ["a", "b"]
    assert is_finished(entries[-1])
    [trace] = await bus.read_trace(job.session_id)
    assert trace.data == {
        "job_id": job.job_id,
        "record": {"type": "message", "ts": "t", "role": "user"},
    }
    [info] = await bus.get_info([job.job_id])
    assert info is not None and (info.status, info.turns, info.input_tokens, info.cost_usd) == (
        "completed",
        1,
        7,
        0.5,
    )
    assert info.finished_at is not None and info.started_at is not None
    assert await bus.get_results([job.job_id]) == [result]
    done = await bus.read_done("d1", "0", 0.0)
    assert [entry.data["job_id"] for entry in done] == [job.job_id]
    assert not await bus.finish(job, 1, result, None), "a job finishes once"


async def test_a_stale_attempt_cannot_finish(bus: JobBus) -> None:
    job = spec()
    await bus.submit([job], "q")
    await bus.start(job, "w1", 60_000)
    await bus.set_fields(job.job_id, {"status": "queued"})  # what the sweeper does
    decision = await bus.start(job, "w2", 60_000)
    assert (decision.action, decision.attempt) == ("run", 2)
    assert not await bus.finish(job, 1, RunResult(text="old"), None)
    assert await bus.finish(job, 2, RunResult(text="new"), None)
    restarted = [e.data for e in await bus.read_events(job.job_id) if e.data["kind"] == "job"]
    assert [entry["type"] for entry in restarted] == ["started", "restarted", "finished"]
    assert restarted[1]["worker"] == "w2"


async def test_cancelling_a_queued_job_ends_it_at_once(bus: JobBus) -> None:
    job = spec()
    await bus.submit([job], "q")
    assert await bus.request_cancel(job.job_id) == "cancelled"
    [result] = await bus.get_results([job.job_id])
    assert result is not None and result.status == "cancelled"
    entries = await bus.read_events(job.job_id)
    assert entry_event(entries[0]) == AgentEvent("cancelled", content="cancelled before it started")
    assert is_finished(entries[-1])
    assert [e.data["job_id"] for e in await bus.read_done("d1", "0", 0.0)] == [job.job_id]
    assert (await bus.start(job, "w1", 60_000)).action == "skip"
    assert await bus.request_cancel(job.job_id) == "finished"
    assert await bus.request_cancel("unknown-job") == "unknown"


async def test_cancelling_a_running_job_asks_its_worker(bus: JobBus) -> None:
    job = spec()
    await bus.submit([job], "q")
    await bus.start(job, "w1", 60_000)
    position, _ = await bus.next_cancels("$", 0.0)
    assert await bus.request_cancel(job.job_id) == "requested"
    _, job_ids = await bus.next_cancels(position, 1.0)
    assert job_ids == [job.job_id]


async def test_one_live_job_per_session(bus: JobBus) -> None:
    first, second = spec("shared-session"), spec("shared-session")
    await bus.submit([first, second], "q")
    assert (await bus.start(first, "w1", 60_000)).action == "run"
    busy = await bus.start(second, "w2", 60_000)
    assert (busy.action, busy.detail) == ("busy", first.job_id)
    await bus.finish(first, 1, RunResult(text=""), None)
    third = spec("shared-session")
    await bus.submit([third], "q")
    assert (await bus.start(third, "w1", 60_000)).action == "run"


async def test_reject_fails_a_queued_job_with_its_reason(bus: JobBus) -> None:
    job = spec()
    await bus.submit([job], "q")
    assert await bus.reject(job.job_id, "bad payload: prompts")
    [info] = await bus.get_info([job.job_id])
    assert info is not None and (info.status, info.error) == ("error", "bad payload: prompts")
    assert not await bus.reject(job.job_id, "again")


async def test_a_rejected_jobs_result_says_why(bus: JobBus) -> None:
    job = spec()
    await bus.submit([job], "q")
    assert await bus.reject(job.job_id, "bad payload: prompts")
    [result] = await bus.get_results([job.job_id])
    assert result is not None and result.status == "error"
    assert result.error is not None and result.error.message == "bad payload: prompts"


async def test_a_blocked_reader_wakes_on_a_new_event(bus: JobBus) -> None:
    job = spec()
    await bus.submit([job], "q")
    await bus.start(job, "w1", 60_000)
    [started] = await bus.read_events(job.job_id)
    reader = asyncio.create_task(bus.read_events(job.job_id, started.id, block_s=5.0))
    await asyncio.sleep(0.05)
    bus.emit_event(Claim(job.job_id, 1), event_entry(AgentEvent("text", content="late")))
    await bus.flush()
    entries = await asyncio.wait_for(reader, 2.0)
    assert [entry_event(e) for e in entries] == [AgentEvent("text", content="late")]
    assert await bus.read_events(job.job_id, entries[-1].id, block_s=0.0) == []


def length_while_blocked(inspector: redis.Redis, stream: str, length: int) -> int:
    """``stream``'s length once it reaches ``length`` (at most 2 s), polled while blocking the
    event loop's thread: only a write already on the socket can land meanwhile."""
    deadline = time.monotonic() + 2.0
    while inspector.xlen(stream) < length and time.monotonic() < deadline:
        time.sleep(0.005)
    return int(inspector.xlen(stream))


@pytest.mark.integration
async def test_redis_bus_sends_an_event_in_the_step_that_emits_it(redis_db: int) -> None:
    """On a busy worker the loop's ready queue holds hundreds of session steps; an event that
    waited for the writer's task to be scheduled would wait behind all of them."""
    settings = FleetSettings(broker_url=f"{REDIS_HOST}/{redis_db}", key_prefix="now:")
    bus = RedisBus.from_settings(settings)
    inspector = redis.Redis.from_url(f"{REDIS_HOST}/{redis_db}")
    try:
        job = spec()
        await bus.submit([job], "q")
        await bus.start(job, "w1", 60_000)
        claim = Claim(job.job_id, 1)
        bus.emit_event(claim, event_entry(AgentEvent("text", content="first")))
        await bus.flush()  # the writer is connected
        ran: list[int] = []
        for index in range(100):
            asyncio.get_running_loop().call_soon(ran.append, index)
        bus.emit_event(claim, event_entry(AgentEvent("tool_end", tool_result="t")))
        assert length_while_blocked(inspector, settings.keys.events(job.job_id), 3) == 3
        assert ran == []
    finally:
        inspector.close()
        await bus.close()


async def test_a_stale_attempts_writes_are_refused_and_reported(bus: JobBus) -> None:
    job = spec()
    await bus.submit([job], "q")
    refused: list[Claim] = []
    bus.on_refused(refused.append)
    await bus.start(job, "w1", 60_000)
    await bus.set_fields(job.job_id, {"status": "queued"})  # as the sweeper marks a lapsed lease
    second = await bus.start(job, "w2", 60_000)
    stale, current = Claim(job.job_id, 1), Claim(job.job_id, second.attempt)
    bus.emit_event(stale, event_entry(AgentEvent("text", content="stale")))
    bus.emit_trace(stale, job.session_id, {"type": "cancelled", "ts": "t"})
    bus.emit_progress(stale, {"turns": "99"})
    bus.emit_session(stale, job.session_id, {"status": "cancelled"}, new=False)
    bus.emit_event(current, event_entry(AgentEvent("text", content="current")))
    await bus.flush()
    events = [e for entry in await bus.read_events(job.job_id) if (e := entry_event(entry))]
    assert [e.content for e in events if e.type == "text"] == ["current"]
    assert await bus.read_trace(job.session_id) == []
    assert (await bus.get_fields(job.job_id)).get("turns") != "99"
    assert set(refused) == {stale}
    result = RunResult(text="", events=[], status="cancelled")
    assert not await bus.finish(job, 1, result, None), "the stale attempt cannot finish the job"


async def test_writes_after_the_job_finished_are_refused(bus: JobBus) -> None:
    job = spec()
    await bus.submit([job], "q")
    refused: list[Claim] = []
    bus.on_refused(refused.append)
    await bus.start(job, "w1", 60_000)
    assert await bus.finish(job, 1, RunResult(text="ok", events=[]), None)
    bus.emit_event(Claim(job.job_id, 1), event_entry(AgentEvent("text", content="late")))
    await bus.flush()
    assert not any(entry_event(entry) for entry in await bus.read_events(job.job_id))
    assert refused == [Claim(job.job_id, 1)]


async def test_a_new_session_job_cannot_take_an_existing_sessions_id(bus: JobBus) -> None:
    first = spec()
    await bus.submit([first], "q")
    assert (await bus.start(first, "w1", 60_000)).action == "run"
    bus.emit_trace(Claim(first.job_id, 1), first.session_id, {"type": "session_start"})
    bus.emit_session(Claim(first.job_id, 1), first.session_id, {"created_at": "now"}, new=True)
    await bus.finish(first, 1, RunResult(text="ok"), None)
    taker = spec(session_id=first.session_id)
    await bus.submit([taker], "q")
    decision = await bus.start(taker, "w1", 60_000)
    assert (decision.action, decision.attempt) == ("exists", 1)
    continuing = spec(session_id=first.session_id, continue_session=True)
    await bus.submit([continuing], "q")
    assert (await bus.start(continuing, "w1", 60_000)).action == "run"


async def test_a_new_session_redelivered_after_a_crash_is_not_refused(bus: JobBus) -> None:
    job = spec()
    await bus.submit([job], "q")
    assert (await bus.start(job, "w1", 1)).action == "run"
    bus.emit_trace(Claim(job.job_id, 1), job.session_id, {"type": "session_start"})
    bus.emit_session(Claim(job.job_id, 1), job.session_id, {"created_at": "now"}, new=True)
    await bus.flush()
    await asyncio.sleep(0.01)  # the 1 ms lease has lapsed: the job may be claimed again
    if isinstance(bus, MemoryBus):
        await bus.set_fields(job.job_id, {"status": "queued"})  # what its sweeper does
    decision = await bus.start(job, "w2", 60_000)
    assert (decision.action, decision.attempt) == ("run", 2)


# -- approvals --------------------------------------------------------------------------------


async def parked_job(bus: JobBus, ttl_s: float = 60.0, session_id: str | None = None) -> JobSpec:
    """A started job parked with two pending calls, ``c1`` and ``c2``."""
    job = spec(session_id)
    await bus.submit([job], "q")
    await bus.start(job, "w1", 60_000)
    pending = [
        PendingCall(call_id="c1", tool_name="bash", arguments={"command": "ls", "list": []}),
        PendingCall(call_id="c2", tool_name="write", arguments={}),
    ]
    paused = RunResult(text="", events=[], status="awaiting_approval", usage={})
    assert await bus.await_approval(job, 1, paused, "approval required", pending, ttl_s)
    return job


async def test_a_parked_job_lists_its_calls_and_ends_waiters(bus: JobBus) -> None:
    job = await parked_job(bus)
    [info] = await bus.get_info([job.job_id])
    assert info is not None and info.status == "awaiting_approval" and info.finished
    assert [(c.call_id, c.arguments, c.decision) for c in info.pending_approvals] == [
        ("c1", {"command": "ls", "list": []}, None),
        ("c2", {}, None),
    ]
    assert [i.job_id for i in await bus.awaiting(10)] == [job.job_id]
    [done] = await bus.read_done("d1", "0", 0.0)
    assert done.data["result"]["status"] == "awaiting_approval", "gather returns the pause"
    entries = await bus.read_events(job.job_id)
    assert not any(is_finished(entry) for entry in entries), "events() may go on after it"
    assert not await bus.await_approval(job, 1, RunResult(text=""), None, [], 60), "not running"


async def test_decisions_are_atomic_and_refused_whole(bus: JobBus) -> None:
    job = await parked_job(bus)
    with pytest.raises(ApprovalRefused) as refused:
        await bus.decide(job.job_id, "approved", ["c1", "nope"], "")
    assert refused.value.reason == "unknown_call"
    [info] = await bus.get_info([job.job_id])
    assert info is not None and [c.decision for c in info.pending_approvals] == [None, None]
    assert (await bus.decide(job.job_id, "denied", ["c2"], "no writes")).action == "waiting"
    with pytest.raises(ApprovalRefused, match="already denied") as refused:
        await bus.decide(job.job_id, "approved", ["c2"], "")
    assert refused.value.reason == "already_decided"
    decided = await bus.decide(job.job_id, "approved", None, "")
    assert (decided.action, decided.spec, decided.attempt) == ("queued", job, 1)
    [info] = await bus.get_info([job.job_id])
    assert info is not None and info.status == "queued" and not info.finished
    assert [(c.decision, c.reason) for c in info.pending_approvals] == [
        ("approved", None),
        ("denied", "no writes"),
    ]
    assert await bus.awaiting(10) == []
    with pytest.raises(ApprovalRefused, match="it is queued") as refused:
        await bus.decide(job.job_id, "approved", None, "")
    assert refused.value.reason == "not_awaiting"
    again = await bus.start(job, "w2", 60_000)
    assert (again.action, again.attempt, again.handbacks) == ("run", 2, 1), "not a failure"
    kinds = [e.data.get("type") for e in await bus.read_events(job.job_id)]
    assert kinds[-2:] == ["approval_decided", "continued"]
    with pytest.raises(JobNotFound):
        await bus.decide("j-nope", "approved", None, "")


async def test_concurrent_decisions_exactly_one_wins(bus: JobBus) -> None:
    job = await parked_job(bus)
    outcomes = await asyncio.gather(
        *(bus.decide(job.job_id, "approved", None, "") for _ in range(5)),
        return_exceptions=True,
    )
    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    assert [w.action for w in wins] == ["queued"]
    assert all(isinstance(o, ApprovalRefused) for o in outcomes if o not in wins)


async def test_expired_approvals_are_denied_and_queued(bus: JobBus) -> None:
    job = await parked_job(bus, ttl_s=0.3)
    await bus.decide(job.job_id, "approved", ["c1"], "")
    assert await bus.expire_approvals("too late") == []
    await asyncio.sleep(0.4)
    assert await bus.expire_approvals("too late") == [(job, 1)]
    [info] = await bus.get_info([job.job_id])
    assert info is not None and info.status == "queued"
    assert [(c.decision, c.reason) for c in info.pending_approvals] == [
        ("approved", None),
        ("denied", "too late"),
    ]
    assert await bus.expire_approvals("too late") == []


async def test_a_parked_job_keeps_its_session_until_cancelled(bus: JobBus) -> None:
    job = await parked_job(bus)
    other = spec(job.session_id)
    await bus.submit([other], "q")
    busy = await bus.start(other, "w2", 60_000)
    assert (busy.action, busy.detail) == ("busy", job.job_id)
    assert await bus.request_cancel(job.job_id) == "cancelled"
    [info] = await bus.get_info([job.job_id])
    assert info is not None and info.status == "cancelled" and await bus.awaiting(10) == []


async def test_children_are_recorded_once_and_a_resubmission_resets_none(bus: JobBus) -> None:
    first, second, third = spec(job_id="p1-c0"), spec(job_id="p1-c1"), spec(job_id="p1-c2")
    assert sorted(await bus.submit_children("p1", [first, second])) == ["p1-c0", "p1-c1"]
    assert await bus.children("p1") == ["p1-c0", "p1-c1"]
    await bus.start(first, "w1", 60_000)
    result = RunResult(text="done", status="completed")
    await bus.start(second, "w1", 60_000)
    assert await bus.finish(second, 1, result, None)
    # A resumed parent submits the same children again (and one more): only the new one, and
    # none that runs or ran, is recorded anew; the queued ones are the ones to send.
    again = [spec(job_id="p1-c0"), spec(job_id="p1-c1"), third]
    assert await bus.submit_children("p1", again) == ["p1-c2"]
    infos = await bus.get_info(["p1-c0", "p1-c1", "p1-c2"])
    assert [info.status if info else None for info in infos] == ["running", "completed", "queued"]
    assert [info.attempt if info else None for info in infos] == [1, 1, 0]
    assert await bus.children("p1") == ["p1-c0", "p1-c1", "p1-c2"]
    assert await bus.children("nobody") == []


async def test_cancel_children_stops_every_unfinished_descendant(bus: JobBus) -> None:
    running, queued, done = spec(job_id="t-run"), spec(job_id="t-queued"), spec(job_id="t-done")
    grandchild = spec(job_id="t-grand")
    await bus.submit_children("t-root", [running, queued, done])
    # t-queued ran once, started a child and crashed: it is queued again with a live child.
    await bus.submit_children("t-queued", [grandchild])
    await bus.start(running, "w1", 60_000)
    await bus.start(done, "w1", 60_000)
    assert await bus.finish(done, 1, RunResult(text="ok", status="completed"), None)
    assert await cancel_children(bus, "t-root") == 3
    infos = await bus.get_info(["t-run", "t-queued", "t-done", "t-grand"])
    statuses = [info.status if info else None for info in infos]
    assert statuses == ["running", "cancelled", "completed", "cancelled"]
    _, asked = await bus.next_cancels("0", 0.0)
    assert "t-run" in asked, "the running child's worker is asked to stop"
    assert await cancel_children(bus, "no-children") == 0
