"""Redis Sentinel: a fleet whose broker and bus are one ``sentinel://`` URL, before and after a
failover.

The test starts its own redis-server master and replica and one Sentinel on free ports (never
the shared Redis), runs a job end to end, kills the master so that the Sentinel fails over to the
replica, and runs another job: workers and dispatcher find the new master through the Sentinel.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatch.fleet.redis_clients import async_client, sync_client
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, behaviour
from tests.integration.fleet import Fleet, free_port, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH"),
]

MASTER = "rho-test-master"


@dataclass
class SentinelSet:
    """A master, a replica and a Sentinel watching them, each a redis-server process."""

    master_port: int
    replica_port: int
    sentinel_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def kill_master(self) -> None:
        self.processes["master"].kill()
        self.processes["master"].wait(10)

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.sentinel_port}/0"

    def sentinel(self) -> Any:
        return redis.Redis(port=self.sentinel_port, decode_responses=True)

    def master_port_now(self) -> int:
        _, port = self.sentinel().sentinel_get_master_addr_by_name(MASTER)
        return int(port)


@contextlib.contextmanager
def sentinel_set(tmp: Path) -> Iterator[SentinelSet]:
    ports = SentinelSet(free_port(), free_port(), free_port())
    base = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--repl-diskless-sync-delay", "0"]  # fmt: skip
    config = tmp / "sentinel.conf"
    config.write_text(
        f"port {ports.sentinel_port}\nbind 127.0.0.1\ndir {tmp}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {ports.master_port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 10000\n"
    )
    commands = {
        "master": [*base, "--port", str(ports.master_port)],
        "replica": [*base, "--port", str(ports.replica_port), "--replicaof", "127.0.0.1",
                    str(ports.master_port)],
        "sentinel": ["redis-server", str(config), "--sentinel"],
    }  # fmt: skip
    processes = ports.processes
    try:
        for name, command in commands.items():
            processes[name] = subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=tmp)
        sentinel = ports.sentinel()
        wait_until(lambda: _answers(sentinel), 10, "the Sentinel to start")
        wait_until(
            lambda: any(r.get("flags") == "slave" for r in sentinel.sentinel_slaves(MASTER)),
            15,
            "the Sentinel to discover the replica",
        )
        replica = redis.Redis(port=ports.replica_port, decode_responses=True)
        wait_until(
            lambda: replica.info("replication").get("master_link_status") == "up",
            15,
            "the replica's first sync",
        )
        yield ports
    finally:
        for process in processes.values():  # only the processes this test started, by pid
            process.kill()
            process.wait(10)


async def _two_waits_on_one_connection(url: str) -> float:
    """How long two 0.5 s BLPOPs take on a bus pool of one connection: they queue for it (a
    pool that did not wait would fail the second with "Too many connections")."""
    client = async_client(url, master_name=MASTER, max_connections=1, timeout=5)
    started = time.monotonic()
    try:
        await asyncio.gather(client.blpop(["nothing"], 0.5), client.blpop(["nothing"], 0.5))
    finally:
        await client.aclose()
    return time.monotonic() - started


def _answers(client: Any) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@dataclass
class SentinelFleet(Fleet):
    """A Fleet whose broker and job bus are the Sentinel set's master."""

    sentinel_url: str = ""

    @property
    def url(self) -> str:
        return self.sentinel_url

    def env(self, **overrides: str) -> dict[str, str]:
        return super().env(RHO_AGENT_SENTINEL_MASTER=MASTER, **overrides)

    @property
    def settings(self) -> Any:
        import dataclasses

        return dataclasses.replace(super().settings, sentinel_master=MASTER)

    def redis(self) -> Any:
        return sync_client(self.url, master_name=MASTER, decode_responses=True)


def test_a_job_runs_through_sentinel_urls_and_after_a_failover(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo")
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    with sentinel_set(tmp_path) as sentinels:
        fleet = SentinelFleet(0, tmp_path, sentinel_url=sentinels.url)
        try:
            for name in ("wa", "wb"):
                fleet.add_worker(name)
            for worker in fleet.workers.values():
                worker.wait_ready()
            with fleet.dispatcher() as dispatcher:
                before = dispatcher.submit("before the failover", config)
                assert before.result(timeout=20).text == "Echo: before the failover"
                assert fleet.redis().hget(fleet.settings.keys.job(before.id), "status")
                assert asyncio.run(_two_waits_on_one_connection(sentinels.url)) >= 0.9
                # Replication is asynchronous: wait until the replica has everything so far.
                master = redis.Redis(port=sentinels.master_port)
                assert master.execute_command("WAIT", 1, 5000) == 1
                sentinels.kill_master()
                wait_until(
                    lambda: sentinels.master_port_now() == sentinels.replica_port,
                    45,  # a Sentinel that misses one election waits failover-timeout to retry
                    "the Sentinel to promote the replica",
                )
                # Clients find a master once the Sentinel has seen the replica report the role.
                wait_until(lambda: _answers(fleet.redis()), 15, "the new master to be found")
                after = dispatcher.submit("after the failover", config)
                result = after.result(timeout=45)
                assert (result.status, result.text) == ("completed", "Echo: after the failover")
                assert before.info().status == "completed", "the old master's data replicated"
            promoted = redis.Redis(port=sentinels.replica_port, decode_responses=True)
            assert promoted.hget(fleet.settings.keys.job(after.id), "status") == "completed"
        finally:
            fleet.stop()
