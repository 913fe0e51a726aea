"""Chaos: workers die during a multi-turn fan-out, by SIGKILL at random or by rolling SIGTERMs.

Real Redis, real worker processes (2 s leases, a 0.5 s sweep), the scripted model; every job
calls ``ledger`` ``TURNS`` times. A killed worker is restarted under the same name, as a
supervisor would. The quick forms run by default; the 100-job forms are ``chaos_full``.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dispatch import Dispatcher
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer
from tests.chaos.accounting import account, broken_histories, print_ledger
from tests.chaos.ledger import FACTORY, ledger_turns
from tests.integration.fleet import Fleet, running_fleet, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(240)]

TURNS = 4
QUEUED_LEASE_S = 5
"""A message a killed worker received and never claimed waits in Celery's ``unacked`` for the
visibility timeout (1 h); the job is sent again when its queued lease lapses. The default lease
(600 s) would make one such job hold the test for 10 minutes: a short one here."""
SIZES = [
    pytest.param(30, 2, id="quick"),
    pytest.param(100, 6, id="full", marks=pytest.mark.chaos_full),
]


def fan_out_under(
    fleet: Fleet,
    model_server: ScriptedModelServer,
    tmp_path: Path,
    jobs_count: int,
    fault: Callable[[Callable[[float], None]], None],
    scenario: str,
) -> None:
    """Run ``jobs_count`` jobs while ``fault`` runs; account for every one of them.

    ``fault`` gets ``reach(fraction)``, which waits until that fraction of all tool calls ran:
    faults land while jobs run, not after the fan-out has ended."""
    ledger = tmp_path / "ledger"
    model_server.responder = ledger_turns(ledger, TURNS, delay=0.3)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    settings = dataclasses.replace(fleet.settings, queued_lease_s=QUEUED_LEASE_S)
    with Dispatcher(settings=settings) as dispatcher:
        started = time.monotonic()
        jobs = dispatcher.map([f"job{index}" for index in range(jobs_count)], config)
        steps = jobs_count * TURNS

        def reach(fraction: float) -> None:
            def ran() -> int:
                return len(ledger.read_text().splitlines()) if ledger.exists() else 0

            wait_until(lambda: ran() >= fraction * steps, 60, f"{fraction:.0%} of the calls")

        fault(reach)
        results = dispatcher.gather(jobs, timeout=150)
        took_s = time.monotonic() - started
        counts, book = account(fleet.redis(), fleet.settings.keys, jobs, results, ledger)
        broken = broken_histories(dispatcher, jobs, TURNS)
        attempts = [info.attempt for info in dispatcher.infos([job.id for job in jobs]) if info]
    counts.report(scenario)
    print_ledger(scenario, book)
    resumed = sum(1 for attempt in attempts if attempt > 1)
    print(f"[chaos] {scenario}: {resumed} jobs resumed, all done in {took_s:.1f} s")
    assert counts.completed == jobs_count and counts.lost == 0
    assert (counts.duplicate_results, counts.duplicate_events_seen) == (0, 0)
    expected = {f"job{i}#{t}" for i in range(jobs_count) for t in range(1, TURNS + 1)}
    assert book.steps == expected, "every step ran"
    assert broken == []
    assert [r.text for r in results] == [f"done job{i}" for i in range(jobs_count)]


@pytest.mark.parametrize(("jobs_count", "kills"), SIZES)
def test_random_sigkills_during_a_multi_turn_fan_out(
    model_server: ScriptedModelServer, tmp_path: Path, jobs_count: int, kills: int
) -> None:
    names = ("w0", "w1", "w2")
    env = {"RHO_AGENT_AGENT_FACTORY": FACTORY, "RHO_AGENT_QUEUED_LEASE": str(QUEUED_LEASE_S)}
    chooser = random.Random(jobs_count)
    with running_fleet(tmp_path, dict.fromkeys(names, env)) as fleet:

        def kill_at_random(reach: Callable[[float], None]) -> None:
            for index in range(kills):
                reach((index + chooser.random()) / (kills + 1))
                victim = chooser.choice(names)
                fleet.workers[victim].kill(signal.SIGKILL)
                fleet.workers[victim].process.wait(10)  # type: ignore[union-attr]
                fleet.add_worker(victim, **env)

        fan_out_under(
            fleet,
            model_server,
            tmp_path,
            jobs_count,
            kill_at_random,
            f"{jobs_count} jobs, {kills} random SIGKILLs of 3 workers",
        )


@pytest.mark.parametrize(("jobs_count", "rounds"), SIZES)
def test_rolling_sigterm_restarts_during_a_fan_out(
    model_server: ScriptedModelServer, tmp_path: Path, jobs_count: int, rounds: int
) -> None:
    names = ("w0", "w1")
    env = {
        "RHO_AGENT_AGENT_FACTORY": FACTORY,
        "RHO_AGENT_SHUTDOWN_GRACE": "0",
        "RHO_AGENT_QUEUED_LEASE": str(QUEUED_LEASE_S),
    }
    with running_fleet(tmp_path, dict.fromkeys(names, env)) as fleet:

        def roll(reach: Callable[[float], None]) -> None:
            for index in range(rounds):
                reach((index + 1) / (rounds + 2))
                name = names[index % len(names)]
                fleet.workers[name].stop()  # SIGTERM: running jobs are handed back
                fleet.add_worker(name, **env).wait_ready()

        fan_out_under(
            fleet,
            model_server,
            tmp_path,
            jobs_count,
            roll,
            f"{jobs_count} jobs, {rounds} rolling SIGTERM restarts of 2 workers",
        )
