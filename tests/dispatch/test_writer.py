"""BatchWriter against the real Redis: order, batching, pipelining, and nothing lost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from dispatch.fleet.redis_bus import decode_entry
from dispatch.fleet.writer import WRITER_CLIENT_NAME, BatchWriter, Fence
from tests.integration.fleet import REDIS_HOST, claimed_db

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with claimed_db() as db:
        yield f"{REDIS_HOST}/{db}"


@pytest.fixture
def inspector(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
async def writer(url: str) -> AsyncIterator[BatchWriter]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    batch_writer = BatchWriter(client, retention_s=3600)
    yield batch_writer
    await batch_writer.close()
    await client.aclose()


def items(inspector: redis.Redis, key: str) -> list[object]:
    return [item for _, fields in inspector.xrange(key) for item in decode_entry(fields["d"])]


def landed_while_blocked(inspector: redis.Redis, key: str, within_s: float = 2.0) -> list[object]:
    """``key``'s items once they land, polled while blocking the event loop's thread: only a
    write already on the socket can land meanwhile (no task of the writer gets to run)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and not inspector.exists(key):
        time.sleep(0.005)
    return items(inspector, key)


def writer_client(inspector: redis.Redis) -> dict[str, object]:
    """The writer's newest connection (one it dropped may linger in the list for a moment)."""
    clients = [c for c in inspector.client_list() if c["name"] == WRITER_CLIENT_NAME]
    return max(clients, key=lambda client: int(client["id"]))


async def test_writes_land_in_order_with_a_burst_in_one_entry_and_an_expiry(
    writer: BatchWriter, inspector: redis.Redis
) -> None:
    for index in range(50):
        writer.xadd("s", {"i": index})
    writer.hset("h", {"a": "1"})
    writer.zadd("z", {"m": 2.5})
    await writer.flush()
    assert items(inspector, "s") == [{"i": index} for index in range(50)]
    assert inspector.xlen("s") == 1  # queued in one loop step: one XADD
    assert inspector.hgetall("h") == {"a": "1"} and inspector.zscore("z", "m") == 2.5
    assert all(0 < inspector.ttl(key) <= 3600 for key in ("s", "h", "z"))


async def test_a_batch_goes_out_without_waiting_for_the_previous_reply(
    writer: BatchWriter, inspector: redis.Redis
) -> None:
    writer.xadd("s", {"i": 0})
    await writer.flush()  # connected
    inspector.execute_command("CLIENT", "PAUSE", 400, "WRITE")  # Redis holds the next write
    writer.xadd("s", {"i": 1})
    await asyncio.sleep(0.1)
    writer.xadd("s", {"i": 2})
    await asyncio.sleep(0.1)
    # The second batch is already in Redis's input buffer, behind the first (held) one.
    assert int(writer_client(inspector)["qbuf"]) > 0
    await writer.flush()
    assert items(inspector, "s") == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_a_dropped_connection_loses_nothing(
    writer: BatchWriter, inspector: redis.Redis
) -> None:
    writer.xadd("s", {"i": 0})
    await writer.flush()
    for round_number in range(3):
        inspector.client_kill_filter(_id=writer_client(inspector)["id"])
        for index in range(10):
            writer.xadd("s", {"i": 1 + round_number * 10 + index})
        await asyncio.wait_for(writer.flush(), 10)
    # Writes sent into the dying connection are sent again, so an item may land twice.
    assert sorted(set(item["i"] for item in items(inspector, "s"))) == list(range(31))  # type: ignore[index]


async def test_a_refused_write_is_logged_and_the_rest_still_land(
    writer: BatchWriter, inspector: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    inspector.set("not-a-stream", "x")
    writer.xadd("not-a-stream", {"i": 0})
    writer.xadd("s", {"i": 1})
    with caplog.at_level(logging.ERROR, logger="dispatch.writer"):
        await asyncio.wait_for(writer.flush(), 10)
    assert "WRONGTYPE" in caplog.text
    assert items(inspector, "s") == [{"i": 1}]


async def test_replies_that_never_come_get_the_batch_resent(
    writer: BatchWriter, inspector: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dispatch.fleet.writer.REPLY_TIMEOUT_S", 0.2)
    writer.xadd("s", {"i": 0})
    await writer.flush()
    first_connection = writer_client(inspector)["id"]
    inspector.execute_command("CLIENT", "PAUSE", 1000, "WRITE")
    writer.xadd("s", {"i": 1})
    await asyncio.wait_for(writer.flush(), 10)
    assert writer_client(inspector)["id"] != first_connection  # presumed dead, replaced
    assert {item["i"] for item in items(inspector, "s")} == {0, 1}  # type: ignore[index]


async def test_a_write_redis_cannot_encode_is_dropped_and_the_rest_still_land(
    writer: BatchWriter, inspector: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    writer.xadd("s", {"i": 0})
    writer.hset("h", {"field": None})  # type: ignore[dict-item]
    writer.xadd("s2", {"i": 1})
    with caplog.at_level(logging.ERROR, logger="dispatch.writer"):
        await asyncio.wait_for(writer.flush(), 10)
    assert "dropped a HSET to h" in caplog.text
    assert items(inspector, "s") == [{"i": 0}] and items(inspector, "s2") == [{"i": 1}]
    assert not inspector.exists("h")


def running_job(inspector: redis.Redis, attempt: int) -> Fence:
    inspector.hset("job", mapping={"status": "running", "attempt": str(attempt)})
    return Fence("job", attempt)


async def test_fenced_writes_land_once_even_when_their_batch_is_resent(
    writer: BatchWriter, inspector: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    fence = running_job(inspector, 1)
    writer.xadd("s", {"i": 0}, fence=fence)
    await writer.flush()
    # Redis applies the next batch, then its reply is lost: the writer must send it again.
    real_read = Connection.read_response
    lost = []

    async def read_then_drop(self: Connection, *args: Any, **kwargs: Any) -> Any:
        reply = await real_read(self, *args, **kwargs)
        if not lost:
            lost.append(reply)
            raise redis.ConnectionError("reply lost")
        return reply

    monkeypatch.setattr(Connection, "read_response", read_then_drop)
    writer.xadd("s", {"i": 1}, fence=fence)
    writer.hset("job", {"turns": "1"}, fence=fence)
    await asyncio.wait_for(writer.flush(), 10)
    writer.xadd("s", {"i": 2}, fence=fence)
    await asyncio.wait_for(writer.flush(), 10)
    assert lost, "a reply was dropped"
    assert items(inspector, "s") == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert inspector.hget("job", "turns") == "1"


async def test_a_stale_fence_is_refused_whole_and_reported(
    url: str, inspector: redis.Redis
) -> None:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    refused: list[Fence] = []
    writer = BatchWriter(client, retention_s=3600, on_refused=refused.append)
    current = running_job(inspector, 2)
    stale = Fence("job", 1)
    inspector.hset("other", mapping={"status": "queued", "attempt": "1"})
    writer.xadd("s", {"i": "stale"}, fence=stale)
    writer.hset("job", {"turns": "99"}, fence=stale)
    writer.xadd("s", {"i": "queued"}, fence=Fence("other", 1))
    writer.xadd("s", {"i": "current"}, fence=current)
    await asyncio.wait_for(writer.flush(), 10)
    await writer.close()
    await client.aclose()
    assert items(inspector, "s") == [{"i": "current"}]
    assert inspector.hget("job", "turns") is None
    assert refused == [stale, Fence("other", 1)]


async def test_fenced_writes_survive_a_flushed_script_cache(
    writer: BatchWriter, inspector: redis.Redis
) -> None:
    fence = running_job(inspector, 1)
    writer.xadd("s", {"i": 0}, fence=fence)
    await writer.flush()
    inspector.script_flush()
    writer.xadd("s", {"i": 1}, fence=fence)
    await asyncio.wait_for(writer.flush(), 10)
    assert items(inspector, "s") == [{"i": 0}, {"i": 1}]


async def test_a_write_sent_now_is_in_redis_before_the_loop_runs_anything_else(
    writer: BatchWriter, inspector: redis.Redis
) -> None:
    fence = running_job(inspector, 1)
    writer.xadd("warm", {"i": 0})
    await writer.flush()  # connected
    ran: list[int] = []
    loop = asyncio.get_running_loop()
    for index in range(500):  # a busy worker's queue of session steps, ahead of the writer
        loop.call_soon(ran.append, index)
    writer.xadd("trace", {"record": 1}, fence=fence)  # queued before it: goes with it
    writer.xadd("events", {"type": "tool_end"}, fence=fence, now=True)
    assert landed_while_blocked(inspector, "events") == [{"type": "tool_end"}]
    assert items(inspector, "trace") == [{"record": 1}]
    assert ran == []
    await writer.flush()
    assert len(ran) == 500


async def test_writes_sent_now_keep_their_order_with_queued_ones(
    writer: BatchWriter, inspector: redis.Redis
) -> None:
    writer.xadd("s", {"i": 0})
    await writer.flush()
    writer.xadd("s", {"i": 1})
    writer.xadd("s", {"i": 2}, now=True)
    writer.hset("h", {"after": "3"})
    writer.xadd("s", {"i": 4}, now=True)
    writer.xadd("s", {"i": 5})
    assert landed_while_blocked(inspector, "s") != []
    await writer.flush()
    assert items(inspector, "s") == [{"i": index} for index in (0, 1, 2, 4, 5)]
    assert inspector.xlen("s") == 4  # 1 and 2 went as one entry; 5 waited for the sender
    assert inspector.hget("h", "after") == "3"


async def test_writes_sent_now_into_a_dropped_connection_are_resent(
    writer: BatchWriter, inspector: redis.Redis
) -> None:
    fence = running_job(inspector, 1)
    writer.xadd("s", {"i": 0}, fence=fence, now=True)
    await writer.flush()
    for round_number in range(3):
        inspector.client_kill_filter(_id=writer_client(inspector)["id"])
        for index in range(10):
            writer.xadd("s", {"i": 1 + round_number * 10 + index}, fence=fence, now=True)
        await asyncio.wait_for(writer.flush(), 10)
    assert items(inspector, "s") == [{"i": index} for index in range(31)]  # fenced: once each


async def test_remembering_expired_keys_stays_cheap_when_more_keys_come_a_minute(
    writer: BatchWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More distinct keys a minute than it remembers (a busy worker: five per job) once made
    every batch rebuild the whole memory, all of it younger than a minute: a worker slowed from
    about 250 to about 80 jobs a second. Now a prune is followed by at least half the memory's
    size of new keys."""
    monkeypatch.setattr("dispatch.fleet.writer._EXPIRY_MEMORY", 1000)
    memories: set[int] = set()
    for batch in range(4000):
        keys = {f"rho:job:{batch}-{index}": None for index in range(5)}
        assert writer._due_for_expiry(keys) == list(keys)
        memories.add(id(writer._expired_at))
        assert len(writer._expired_at) <= 1005
    assert len(memories) <= 4000 * 5 // 500 + 1, "rebuilt on almost every batch"
