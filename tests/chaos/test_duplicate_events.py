"""Chaos: events a writer resent are stored once, and copies that reach the stream anyway (a
writer without the fence, an older worker) are seen once by ``Job.events()``."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import pytest
import redis
from redis.asyncio.connection import Connection

from dispatch import Dispatcher
from dispatch.engine.bus import Claim, event_entry
from dispatch.fleet.redis_bus import RedisBus
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec, build_spec
from rho_agent import AgentConfig, AgentEvent, RunResult
from tests.chaos.counts import ChaosCounts, count_job
from tests.integration.fleet import REDIS_HOST, claimed_db

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(60)]

EVENTS = 20


async def run_with_a_lost_reply(settings: FleetSettings, spec: JobSpec) -> None:
    """Attempt 1 emits EVENTS events; Redis applies one batch but its reply is lost."""
    bus = RedisBus.from_settings(settings)
    await bus.submit([spec], settings.queue)
    decision = await bus.start(spec, "w1", 60_000)
    claim = Claim(spec.job_id, decision.attempt)
    real_read = Connection.read_response
    lost: list[Any] = []

    async def read_then_drop(self: Connection, *args: Any, **kwargs: Any) -> Any:
        reply = await real_read(self, *args, **kwargs)
        if isinstance(reply, list) and not lost:  # the fenced-writes script's reply
            lost.append(reply)
            raise redis.ConnectionError("reply lost")
        return reply

    for seq in range(1, EVENTS + 1):
        entry = event_entry(AgentEvent("text", content=str(seq)), claim.attempt, seq)
        bus.emit_event(claim, entry)
        if seq == EVENTS // 2:
            Connection.read_response = read_then_drop  # type: ignore[method-assign]
            try:
                await bus.flush()
            finally:
                Connection.read_response = real_read  # type: ignore[method-assign]
    await bus.flush()
    assert lost, "a batch's reply was lost and the batch sent again"
    result = RunResult(text="done", events=[], status="completed")
    assert await bus.finish(spec, claim.attempt, result, None)
    await bus.close()


def test_resent_events_are_stored_once_and_copies_are_seen_once() -> None:
    counts = ChaosCounts()
    with claimed_db() as db:
        settings = FleetSettings(
            broker_url=f"{REDIS_HOST}/{db}", key_prefix=f"dup{secrets.token_hex(3)}:"
        )
        with Dispatcher(settings=settings) as dispatcher:
            spec = build_spec("hello", AgentConfig(), reply_to=dispatcher.id)
            asyncio.run(run_with_a_lost_reply(settings, spec))
            client = redis.Redis.from_url(str(settings.bus_url), decode_responses=True)
            key = settings.keys.events(spec.job_id)
            stored_once = ChaosCounts()
            count_job(stored_once, client, settings.keys, spec.job_id, None)
            # Copies as a writer without the fence would leave them: appended again, in order.
            entries = client.xrange(key)
            finished = entries.pop()
            client.delete(key)
            for _, fields in [*entries, *entries[1:], finished]:  # every event batch twice
                client.xadd(key, {"d": fields["d"]})
            job = dispatcher.job(spec.job_id)
            seen = list(job.events())
            late = list(dispatcher.job(spec.job_id).events(from_start=False))
            count_job(counts, client, settings.keys, spec.job_id, job.result(5), seen)
            client.close()
    counts.report("events resent after a lost reply, plus injected copies")
    assert stored_once.duplicate_events_stored == 0, "the fenced writer stored each event once"
    assert counts.duplicate_events_stored > 0, "the stream does hold copies"
    assert [event.content for event in seen] == [str(seq) for seq in range(1, EVENTS + 1)]
    assert counts.duplicate_events_seen == 0 and late == []
    assert json.loads(finished[1]["d"])["type"] == "finished"
