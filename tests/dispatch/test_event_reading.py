"""``for event in job.events()`` in fleet mode reads Redis on the caller's own thread."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest
import redis

from dispatch import Dispatcher
from dispatch.engine.bus import event_entry, lifecycle_entry
from dispatch.fleet.redis_bus import queue_submit
from dispatch.settings import FleetSettings
from dispatch.spec import build_spec
from rho_agent import AgentConfig, AgentEvent
from tests.integration.fleet import REDIS_HOST, claimed_db

pytestmark = pytest.mark.integration

LOOP_BUSY_S = 1.5


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with claimed_db() as db:
        yield f"{REDIS_HOST}/{db}"


@pytest.fixture
def dispatcher(url: str) -> Iterator[Dispatcher]:
    settings = FleetSettings(broker_url=url, key_prefix=f"ev{secrets.token_hex(3)}:")
    with Dispatcher(settings=settings) as fleet_dispatcher:
        yield fleet_dispatcher


def recorded_job(dispatcher: Dispatcher, texts: list[str]) -> str:
    """A job recorded as queued whose events stream holds ``texts`` and then its end."""
    settings = dispatcher.settings
    spec = build_spec("hello", AgentConfig(), reply_to=dispatcher.id)
    client = redis.Redis.from_url(str(settings.bus_url), decode_responses=True)
    pipe = client.pipeline(transaction=False)
    queue_submit(pipe, [spec], settings, settings.queue)
    entries = [event_entry(AgentEvent("text_delta", content=text)) for text in texts]
    for entry in [*entries, lifecycle_entry("finished", attempt=1)]:
        pipe.xadd(settings.keys.events(spec.job_id), {"d": json.dumps(entry)})
    pipe.execute()
    client.close()
    return spec.job_id


async def _hold_the_loop() -> None:
    time.sleep(LOOP_BUSY_S)  # noqa: ASYNC251 (blocking on purpose: a loop busy with other jobs)


def test_events_arrive_while_the_dispatchers_loop_is_busy(dispatcher: Dispatcher) -> None:
    job = dispatcher.job(recorded_job(dispatcher, ["a", "b", "c"]))
    dispatcher._core.loop.submit(_hold_the_loop())
    started = time.monotonic()
    texts = [event.content for event in job.events()]
    assert texts == ["a", "b", "c"]
    assert time.monotonic() - started < LOOP_BUSY_S / 2


def test_iterating_events_inside_the_loop_is_refused(dispatcher: Dispatcher) -> None:
    job = dispatcher.job(recorded_job(dispatcher, ["a"]))

    async def iterate_on_the_loop() -> None:
        list(job.events())

    with pytest.raises(RuntimeError, match="async form"):
        dispatcher._core.loop.call(iterate_on_the_loop())
