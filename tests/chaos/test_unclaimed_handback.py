"""Chaos: SIGTERM reaches a worker whose jobs were delivered but not yet claimed.

Their tasks end with the shutdown, and with them their messages; the jobs are still ``queued``.
Found by the rolling-restart storm (tests/chaos/test_worker_storms.py): before the shutdown sent
them again, such jobs waited for their queued lease (``RHO_AGENT_QUEUED_LEASE``, 600 s) to
lapse. Now another worker runs them at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer
from tests.chaos.accounting import account, print_ledger
from tests.chaos.ledger import FACTORY, ledger_turns
from tests.integration.fleet import Fleet, claimed_db, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(90)]

JOBS = 5


def test_jobs_waiting_for_their_claim_are_sent_again_at_shutdown(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    model_server.responder = ledger_turns(ledger, 2, delay=0.1)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    received = tmp_path / "received"
    with claimed_db() as db:
        fleet = Fleet(db, tmp_path)
        try:
            slow = fleet.add_worker(
                "wa",
                app="tests.chaos.slow_claim",
                RHO_TEST_CLAIM_DELAY="60",
                RHO_TEST_RECEIVED_FILE=str(received),
                RHO_AGENT_SHUTDOWN_GRACE="0",
                RHO_AGENT_AGENT_FACTORY=FACTORY,
            )
            slow.wait_ready()
            with fleet.dispatcher() as dispatcher:
                jobs = dispatcher.map([f"job{index}" for index in range(JOBS)], config)
                wait_until(received.exists, 15, "the slow worker to receive a job")
                time.sleep(0.5)  # every job delivered, none claimed
                slow.stop()  # SIGTERM
                stopped = time.monotonic()
                fleet.add_worker("wb", RHO_AGENT_AGENT_FACTORY=FACTORY).wait_ready()
                results = dispatcher.gather(jobs, timeout=30)
                recovered_s = time.monotonic() - stopped
                counts, book = account(fleet.redis(), fleet.settings.keys, jobs, results, ledger)
                infos = dispatcher.infos([job.id for job in jobs])
        finally:
            fleet.stop()
    counts.report(f"SIGTERM with {JOBS} jobs delivered and not claimed")
    print_ledger("unclaimed at SIGTERM", book)
    print(f"[chaos] the unclaimed jobs completed {recovered_s:.1f} s after the SIGTERM")
    assert "handed" in slow.log() and f"{JOBS} job(s) back" in slow.log()
    assert counts.completed == JOBS and counts.lost == 0 and counts.duplicate_results == 0
    assert all(info and (info.worker, info.attempt) == ("wb", 1) for info in infos), infos
    assert book.redone_steps == 0 and len(book.steps) == 2 * JOBS
