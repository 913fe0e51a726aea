"""Chaos: a worker's namespace is cut off from Redis for longer than its lease.

The topology of tests/chaos/topology.py: Redis in one network namespace, workers ``wa`` and
``wb`` in two others, each link 1 ms +- 0.2 ms through the delaying proxy. While ``wa`` runs jobs
its veth goes down for ``PARTITION_S`` (its 2 s lease lapses); ``wb``'s sweeper re-sends ``wa``'s
jobs and ``wb`` runs them. When the link comes back, ``wa``'s late writes are refused (fenced) and
its runs stop. Every job completes once; nothing is lost.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer
from tests.chaos.accounting import account, broken_histories, print_ledger
from tests.chaos.ledger import FACTORY, ledger_turns
from tests.chaos.topology import TopologyFleet, available, topology
from tests.integration.fleet import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.timeout(120),
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

JOBS = 12
TURNS = 5
PARTITION_S = 8.0
"""Four leases (RHO_AGENT_LEASE_TTL=2 in the test fleet's environment)."""


def test_a_partitioned_worker_is_fenced_off_and_its_jobs_run_elsewhere(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    model_server.responder = ledger_turns(ledger, TURNS, delay=0.3)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    model_port = urlsplit(model_server.base_url).port
    with topology(tmp_path, ("wa", "wb"), model_port) as net:
        fleet = TopologyFleet(0, tmp_path, net=net)
        try:
            for name in ("wa", "wb"):
                fleet.add_worker(name, RHO_AGENT_AGENT_FACTORY=FACTORY)
            for worker in fleet.workers.values():
                worker.wait_ready()
            with fleet.dispatcher() as dispatcher:
                jobs = dispatcher.map([f"job{index}" for index in range(JOBS)], config)

                def wa_is_busy() -> bool:
                    infos = dispatcher.infos([job.id for job in jobs])
                    busy = [i for i in infos if i and i.worker == "wa" and i.status == "running"]
                    return len(busy) >= 2 and ledger.exists()

                wait_until(wa_is_busy, 30, "wa to run jobs")
                infos = dispatcher.infos([job.id for job in jobs])
                on_wa = {i.job_id for i in infos if i and i.worker == "wa" and not i.finished}
                net.partition("wa")
                cut_at = time.monotonic()
                time.sleep(PARTITION_S)
                net.heal("wa")
                results = dispatcher.gather(jobs, timeout=90)
                recovered_s = time.monotonic() - cut_at
                wait_until(
                    lambda: "a newer attempt owns the job" in fleet.workers["wa"].log(),
                    30,
                    "wa to find its late writes refused",
                )
                after = {i.job_id: i for i in dispatcher.infos([job.id for job in jobs]) if i}
                counts, book = account(fleet.redis(), fleet.settings.keys, jobs, results, ledger)
                broken = broken_histories(dispatcher, jobs, TURNS)
        finally:
            fleet.stop()
    moved = [after[job_id] for job_id in on_wa]
    counts.report(f"wa partitioned for {PARTITION_S:g} s with {len(on_wa)} jobs running")
    print_ledger("partition", book)
    print(f"[chaos] partition: every job finished {recovered_s:.1f} s after the cut")
    assert counts.completed == JOBS and counts.lost == 0
    assert (counts.duplicate_results, counts.duplicate_events_seen) == (0, 0)
    assert all(info.worker == "wb" and info.attempt >= 2 for info in moved), moved
    assert book.steps == {f"job{i}#{t}" for i in range(JOBS) for t in range(1, TURNS + 1)}
    assert broken == []
    assert [r.text for r in results] == [f"done job{i}" for i in range(JOBS)]
