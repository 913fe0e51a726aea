"""ScriptBatcher: concurrent Lua calls share round trips, each keeps its own reply and errors,
and a Redis that lost its script cache (a restart) loads the script again."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from dispatch.fleet.script_batch import ScriptBatcher
from tests.integration.fleet import free_port

pytestmark = pytest.mark.integration

ECHO_OR_FAIL = """
if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end
return redis.call('INCR', KEYS[1])
"""


@pytest.fixture(scope="module")
def own_redis() -> Iterator[str]:
    """A redis-server of this test's own: SCRIPT FLUSH must not touch the shared one."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, check=False
            ).stdout.strip()
            != b"PONG"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the test's redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
async def client(own_redis: str) -> AsyncIterator[Any]:
    connection = aioredis.Redis.from_url(own_redis, decode_responses=True)
    yield connection
    await connection.aclose()


async def test_concurrent_calls_share_round_trips_and_keep_their_replies(client: Any) -> None:
    script = client.register_script(ECHO_OR_FAIL)
    batcher = ScriptBatcher(client)
    await script(keys=["n"], args=["ok"])  # loaded
    sent: list[int] = []
    original = client.pipeline

    def counting_pipeline(**options: Any) -> Any:
        sent.append(1)
        return original(**options)

    client.pipeline = counting_pipeline
    calls = [batcher.call(script, ["n"], ["fail" if i == 3 else "ok"]) for i in range(50)]
    replies = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(replies[3], Exception) and "asked to fail" in str(replies[3])
    numbers = [int(reply) for reply in replies if not isinstance(reply, BaseException)]
    assert sorted(numbers) == list(range(2, 51)), "each call got its own reply"
    assert len(sent) <= 2, f"50 calls made in one loop turn took {len(sent)} round trips"


async def test_a_flushed_script_cache_loads_the_script_again(client: Any) -> None:
    script = client.register_script(ECHO_OR_FAIL)
    batcher = ScriptBatcher(client)
    first = await batcher.call(script, ["m"], ["ok"])
    await client.script_flush()
    assert await batcher.call(script, ["m"], ["ok"]) == first + 1


async def test_a_paused_redis_is_ridden_out_with_an_outage_limit(own_redis: str) -> None:
    """Found by tests/chaos/test_redis_pause.py: a 5 s pause failed 3 of 20 jobs with
    ``TimeoutError`` from the budget reservation before their next model call."""
    client = aioredis.Redis.from_url(own_redis, decode_responses=True, socket_timeout=0.3)
    script = client.register_script(ECHO_OR_FAIL)
    await script(keys=["p"], args=["ok"])
    pauser = aioredis.Redis.from_url(own_redis)
    try:
        await pauser.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        with pytest.raises(redis.TimeoutError):
            await ScriptBatcher(client).call(script, ["p"], ["ok"])
        await pauser.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        reply = await ScriptBatcher(client, outage_limit_s=10).call(script, ["p"], ["ok"])
    finally:
        await pauser.execute_command("CLIENT", "UNPAUSE")
        await pauser.aclose()
        await client.aclose()
    # Once: a client that gave up on a paused Redis closed its connection, and Redis drops the
    # commands of a closed connection instead of running them when it wakes.
    assert reply == 2, "the call went through once Redis answered"
