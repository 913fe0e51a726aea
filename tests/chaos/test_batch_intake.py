"""Chaos: a worker SIGKILLed right after one wake-up took a whole batch of jobs off the queue.

The transport takes up to ``INTAKE_BATCH`` messages per wake-up (dispatch/fleet/transport.py)
and writes them all into kombu's ``unacked`` bookkeeping in one pipeline before delivering any.
A worker killed before claiming them leaves every one there; their queued leases lapse and
another worker's sweeper sends them again: each job completes, once.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

import pytest

from dispatch import Dispatcher
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer
from tests.chaos.accounting import account, print_ledger
from tests.chaos.ledger import FACTORY, ledger_turns
from tests.integration.fleet import Fleet, claimed_db, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(90)]

JOBS = 8
QUEUED_LEASE_S = 2


def test_jobs_a_killed_worker_took_in_one_batch_all_complete_once(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    model_server.responder = ledger_turns(ledger, 2, delay=0.1)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    received = tmp_path / "received"
    with claimed_db() as db:
        fleet = Fleet(db, tmp_path)
        broker = fleet.redis()
        try:
            settings = dataclasses.replace(fleet.settings, queued_lease_s=QUEUED_LEASE_S)
            with Dispatcher(settings=settings) as dispatcher:
                jobs = dispatcher.map([f"job{index}" for index in range(JOBS)], config)
                slow = fleet.add_worker(  # started once every job waits on the queue
                    "wa",
                    app="tests.chaos.slow_claim",
                    RHO_TEST_CLAIM_DELAY="60",
                    RHO_TEST_RECEIVED_FILE=str(received),
                    RHO_AGENT_AGENT_FACTORY=FACTORY,
                )
                wait_until(received.exists, 30, "the slow worker to receive a job")
                wait_until(lambda: broker.hlen("unacked") == JOBS, 5, "every job delivered")
                recorded = broker.zrange("unacked_index", 0, -1, withscores=True)
                slow.kill(signal.SIGKILL)  # every job received, none claimed
                killed = time.monotonic()
                fleet.add_worker(
                    "wb",
                    RHO_AGENT_AGENT_FACTORY=FACTORY,
                    RHO_AGENT_QUEUED_LEASE=str(QUEUED_LEASE_S),
                ).wait_ready()
                results = dispatcher.gather(jobs, timeout=45)
                recovered_s = time.monotonic() - killed
                counts, book = account(broker, fleet.settings.keys, jobs, results, ledger)
        finally:
            fleet.stop()
    counts.report(f"SIGKILL after one wake-up took {JOBS} jobs")
    print_ledger("killed after a batch", book)
    print(f"[chaos] the batch's jobs completed {recovered_s:.1f} s after the SIGKILL")
    batch_times = {score for _, score in recorded}
    assert len(batch_times) == 1, "one wake-up recorded the whole batch in one pipeline"
    assert counts.completed == JOBS and counts.lost == 0 and counts.duplicate_results == 0
    assert book.redone_steps == 0 and len(book.steps) == 2 * JOBS
