"""`fleet up` supervises: a worker that dies is restarted with backoff, the others keep running,
its heartbeat shows the restart, and past ``max_restarts`` the supervisor gives up on it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.integration.fleet import free_port
from workers.ops.local_fleet import LocalFleet, LocalFleetOptions

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH"),
]


def supervise_until(fleet: LocalFleet, done: object, within_s: float, said: list[str]) -> None:
    deadline = time.monotonic() + within_s
    while not done():  # type: ignore[operator]
        assert fleet.supervise(said.append) is None, said
        assert time.monotonic() < deadline, f"not done within {within_s} s: {said}"
        time.sleep(0.1)


def test_a_dead_worker_is_restarted_alone_and_shows_its_restart(tmp_path: Path) -> None:
    options = LocalFleetOptions(
        workers=2,
        concurrency=4,
        redis_port=free_port(),
        flower_port=None,
        run_dir=tmp_path,
        env={"RHO_AGENT_HEARTBEAT_INTERVAL": "0.5", "RHO_AGENT_KEY_PREFIX": "rho-supervise:"},
        max_restarts=1,
    )
    said: list[str] = []
    with LocalFleet(options) as fleet:
        endpoints = fleet.start()
        first, second = (child for child in fleet.children if child.role == "worker")
        other_pid = second.process.pid
        os.kill(first.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        supervise_until(fleet, lambda: first.restarts == 1, 15, said)
        restarted_s = time.monotonic() - killed_at
        health = tmp_path / "health" / f"{first.name}.json"
        supervise_until(
            fleet,
            lambda: health.exists() and json.loads(health.read_text()).get("restarts") == 1,
            30,
            said,
        )
        print(f"\nworker restarted {restarted_s:.1f} s after SIGKILL; supervisor said: {said}")
        assert second.process.pid == other_pid and second.process.poll() is None
        assert any("restarting it in 1 s (restart 1 of 1)" in line for line in said)

        os.kill(first.process.pid, signal.SIGKILL)  # past max_restarts: the supervisor gives up
        first.process.wait(10)
        assert fleet.supervise(said.append) is first
        assert endpoints.worker_names == (first.name, second.name)
