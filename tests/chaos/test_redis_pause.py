"""Chaos: Redis stops answering (``CLIENT PAUSE ... ALL``) for longer than a lease, mid fan-out.

On a redis-server of the test's own; two workers with 2 s leases. When Redis answers again every
lease looks lapsed at once; the sweeper may re-send jobs whose workers are still running them,
and the fence keeps the two attempts apart. The quick form pauses 5 s, the full one 20 s.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer
from tests.chaos.accounting import account, broken_histories, print_ledger
from tests.chaos.ledger import FACTORY, ledger_turns
from tests.chaos.redis_server import redis_server
from tests.chaos.support import chaos_fleet
from tests.integration.fleet import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(180)]

JOBS = 20
TURNS = 4


@pytest.mark.parametrize(
    "pause_s",
    [pytest.param(5, id="quick"), pytest.param(20, id="full", marks=pytest.mark.chaos_full)],
)
def test_a_redis_pause_mid_fan_out_loses_and_duplicates_nothing(
    model_server: ScriptedModelServer, tmp_path: Path, pause_s: int
) -> None:
    ledger = tmp_path / "ledger"
    model_server.responder = ledger_turns(ledger, TURNS, delay=0.3)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    env = {"RHO_AGENT_AGENT_FACTORY": FACTORY}
    with (
        redis_server(tmp_path / "redis") as server,
        chaos_fleet(tmp_path, server, {"w0": env, "w1": env}) as fleet,
        fleet.dispatcher() as dispatcher,
    ):
        jobs = dispatcher.map([f"job{index}" for index in range(JOBS)], config)
        wait_until(
            lambda: ledger.exists() and len(ledger.read_text().split()) >= JOBS,
            30,
            "a quarter of the calls",
        )
        # A live observer across the pause: it must read on, and see each event once.
        observed: list[object] = []
        failures: list[Exception] = []

        def observe() -> None:
            try:
                observed.extend(jobs[0].events())
            except Exception as exc:  # asserted below, not lost in the thread
                failures.append(exc)

        watcher = threading.Thread(target=observe)
        watcher.start()
        pauser = redis.Redis.from_url(fleet.url)
        pauser.execute_command("CLIENT", "PAUSE", pause_s * 1000, "ALL")
        paused = time.monotonic()
        pauser.close()
        results = dispatcher.gather(jobs, timeout=120)
        recovered_s = time.monotonic() - paused
        watcher.join(30)
        afterwards = list(jobs[0].events())
        counts, book = account(fleet.redis(), fleet.settings.keys, jobs, results, ledger)
        broken = broken_histories(dispatcher, jobs, TURNS)
        infos = dispatcher.infos([job.id for job in jobs])
    scenario = f"Redis paused {pause_s} s during a {JOBS}-job fan-out"
    counts.report(scenario)
    print_ledger(scenario, book)
    resumed = sum(1 for info in infos if info and info.attempt > 1)
    print(f"[chaos] {scenario}: {resumed} jobs re-sent, all done {recovered_s:.1f} s after it")
    assert counts.completed == JOBS and counts.lost == 0
    assert (counts.duplicate_results, counts.duplicate_events_seen) == (0, 0)
    assert book.steps == {f"job{i}#{t}" for i in range(JOBS) for t in range(1, TURNS + 1)}
    assert broken == []
    assert failures == [], "the live observer read on through the pause"
    assert len(observed) == len(afterwards), "it saw each event once"
