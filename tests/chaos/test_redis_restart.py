"""Redis restarted (or down for a while) while 20 jobs run on one real worker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer
from tests.chaos.redis_server import redis_server
from tests.chaos.support import Stopwatch, chaos_fleet, lost_lease_lines, stepping

pytestmark = pytest.mark.integration

WORKER_ENV = {"RHO_AGENT_LEASE_TTL": "3", "RHO_AGENT_SWEEP_INTERVAL": "0.5"}


def test_aof_restart_with_20_jobs_running_loses_nothing(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = stepping(4, delay=0.5)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    with (
        redis_server(tmp_path / "redis", aof=True) as server,
        chaos_fleet(tmp_path, server, {"w1": WORKER_ENV}) as fleet,
        fleet.dispatcher() as dispatcher,
    ):
        jobs = dispatcher.map([f"job {n}" for n in range(20)], config)
        time.sleep(1.5)  # every job is mid-way
        clock = Stopwatch()
        server.restart()
        results = dispatcher.gather(jobs, timeout=45)
        recovered = clock()
        after = dispatcher.submit("after the restart", config).result(timeout=30)
        statuses = [result.status for result in results]
        lost = lost_lease_lines(fleet)
        print(
            f"\nAOF restart: {statuses.count('completed')}/20 completed, {lost} 'lost its lease',"
            f" all done {recovered:.1f} s after the restart; new job after it: {after.status}"
        )
        assert statuses == ["completed"] * 20
        assert lost == 0
        assert after.status == "completed"
        assert fleet.workers["w1"].process is not None
        assert fleet.workers["w1"].process.poll() is None
