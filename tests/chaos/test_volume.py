"""Hygiene under volume: after 1,000 small jobs, Redis memory and the worker's RSS are within
10 % of their level after the first 100.

One real worker and the test's own redis-server, a scripted model that answers at once. Every key
a job writes expires after the retention; the test cannot wait a retention (at least 60 s), so
at each measurement it fast-forwards it: it deletes every fleet key that has a TTL, except the
indexes that a busy fleet refreshes forever (which must be kept small by the janitor instead),
lets the janitor tidy, and then reads ``used_memory_dataset`` (the data, without the
clients' buffers). A key without a TTL, or an index that only
grows, shows up as growth.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from dispatch.settings import FleetSettings
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, behaviour
from tests.chaos.redis_server import redis_server
from tests.chaos.support import PortFleet, chaos_fleet
from workers.janitor import Janitor

pytestmark = [
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.chaos_full,
    pytest.mark.timeout(60),
]

TOTAL = 1000
FIRST = 100
BATCH = 100


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def settled_redis_memory(fleet: PortFleet) -> tuple[int, int, list[str]]:
    """``used_memory_dataset`` once every key with a TTL has expired (see the module docstring),
    the members left in the session and job indexes, and the fleet keys that have no TTL and
    are not a documented index."""
    settings: FleetSettings = fleet.settings
    keys = settings.keys
    indexes = {keys.sessions(), keys.jobs(), keys.leases(), keys.workers()}
    client = fleet.redis()
    deadline = time.monotonic() + 5  # the last acks follow the results
    while client.hlen("unacked") and time.monotonic() < deadline:
        time.sleep(0.05)
    no_ttl = []
    for key in client.scan_iter(match=keys.pattern(), count=1000):
        if key in indexes:
            continue
        ttl = client.ttl(key)
        if ttl > 0:
            client.delete(key)
        elif ttl == -1:
            no_ttl.append(key)

    async def tidy() -> None:
        connection = aioredis.Redis.from_url(fleet.url, decode_responses=True)
        await connection.delete(keys.janitor_lock())
        await Janitor(connection, settings).tidy_once()
        await connection.aclose()

    asyncio.run(tidy())
    client.memory_purge()
    memory = int(client.info("memory")["used_memory_dataset"])
    members = int(client.zcard(keys.sessions())) + int(client.zcard(keys.jobs()))
    client.close()
    return memory, members, no_ttl


def test_1000_jobs_leave_redis_memory_and_worker_rss_flat(tmp_path: Path) -> None:
    with (
        ScriptedModelServer(behaviour("echo"), record=False) as model,
        redis_server(tmp_path / "redis") as server,
        chaos_fleet(
            tmp_path,
            server,
            {
                "w1": {
                    "RHO_AGENT_WORKER_CONCURRENCY": "100",
                    "RHO_AGENT_ALLOWED_BASE_URLS": model.base_url,
                }
            },
        ) as fleet,
        fleet.dispatcher() as dispatcher,
    ):
        config = AgentConfig(base_url=model.base_url, working_dir=str(tmp_path))
        worker: Any = fleet.workers["w1"].process
        started = time.monotonic()
        measured: dict[int, tuple[int, int, int, list[str]]] = {}
        for done in range(BATCH, TOTAL + 1, BATCH):
            jobs = dispatcher.map([f"job {done}-{n}" for n in range(BATCH)], config)
            results = dispatcher.gather(jobs, timeout=60)
            assert {result.status for result in results} == {"completed"}
            if done in (FIRST, TOTAL):
                memory, members, no_ttl = settled_redis_memory(fleet)
                measured[done] = (memory, members, rss_kib(worker.pid), no_ttl)
        took = time.monotonic() - started
        memory_100, members_100, rss_100, _ = measured[FIRST]
        memory_1000, members_1000, rss_1000, no_ttl = measured[TOTAL]
        print(
            f"\n{TOTAL} jobs in {took:.0f} s: Redis used_memory_dataset "
            f"{memory_100 / 1024:.0f} KiB after {FIRST}, "
            f"{memory_1000 / 1024:.0f} KiB after {TOTAL} "
            f"({(memory_1000 / memory_100 - 1) * 100:+.1f} %); worker RSS {rss_100 / 1024:.0f} MiB"
            f" -> {rss_1000 / 1024:.0f} MiB ({(rss_1000 / rss_100 - 1) * 100:+.1f} %); "
            f"index members left: {members_100} -> {members_1000}; "
            f"fleet keys without a TTL: {no_ttl}"
        )
        assert members_1000 <= max(members_100 * 1.10, 10)
        assert no_ttl == []
        assert memory_1000 <= memory_100 * 1.10
        assert rss_1000 <= rss_100 * 1.10
