"""``fan_out`` on real Redis and real workers: twenty children, a cancelled tree, a killed parent.

The model is tests/fan_out_support.py's: the parent calls ``fan_out`` once, each child answers.
The workers have a 2 s lease, so a killed worker's jobs resume within a few seconds.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch.spec import build_spec
from rho_agent.testing import ScriptedModelServer
from tests.fan_out_support import (
    child_requests,
    fan_out_config,
    fan_out_model,
    first_user,
    tool_result,
)
from tests.integration.fleet import Fleet, running_fleet, wait_until

pytestmark = pytest.mark.integration

PARENT_PROMPT = "split it"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    depth = {"RHO_AGENT_FAN_OUT_MAX_DEPTH": "1"}
    with running_fleet(tmp_path_factory.mktemp("fan-out"), {"wa": depth, "wb": depth}) as started:
        yield started


def parent_requests(model_server: ScriptedModelServer) -> int:
    return sum(first_user(r.body) == PARENT_PROMPT for r in model_server.requests)


def children_of(fleet: Fleet, job_id: str) -> list[str]:
    with fleet.redis() as client:
        return sorted(client.smembers(f"{fleet.prefix}job:{job_id}:children"))


def test_a_parent_fans_out_twenty_children_and_gets_every_result(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = fan_out_model(20, child_delay=0.2)
    config = fan_out_config(model_server.base_url, str(tmp_path))
    with fleet.dispatcher() as dispatcher:
        started = time.monotonic()
        parent = dispatcher.submit(
            PARENT_PROMPT, config, labels={"batch": "b-fan"}, max_tokens=10_000_000
        )
        result = parent.result(timeout=60)
        elapsed = time.monotonic() - started
        seen = tool_result(result.text)
        child_ids = [child["job_id"] for child in seen["children"]]
        infos = [info for info in dispatcher.infos(child_ids) if info is not None]
        [tree] = [s for s in dispatcher.budgets() if s.budget.scope == f"job:{parent.id}"]
        tree_tokens = sum(i.input_tokens + i.output_tokens for i in [parent.info(), *infos])
    print(f"\nparent with 20 children on 2 workers: {elapsed:.2f} s")
    assert result.status == "completed"
    assert (seen["completed"], seen["failed"]) == (20, 0)
    assert [child["text"] for child in seen["children"]] == [f"answer {n}" for n in range(20)]
    assert children_of(fleet, parent.id) == sorted(child_ids)
    assert len(infos) == 20 and {info.worker for info in infos} <= {"wa", "wb"}
    assert all(info.labels == {"batch": "b-fan", "parent": parent.id} for info in infos)
    assert Counter(child_requests(model_server.requests)) == {f"child {n}": 1 for n in range(20)}
    assert parent_requests(model_server) == 2
    assert tree.spent_tokens == tree_tokens, "one budget: the parent's covers all 21 jobs"


def test_a_child_at_the_depth_limit_is_refused_on_whichever_worker_runs_it(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    # A job at depth 1 (as a fan-out parent submits its children) on workers whose limit is 1:
    # the depth travels in its JobSpec, so whichever worker runs it refuses its fan_out call.
    model_server.responder = fan_out_model(2)
    config = fan_out_config(model_server.base_url, str(tmp_path))
    with fleet.dispatcher() as dispatcher:
        spec = build_spec(PARENT_PROMPT, config, depth=1, reply_to=dispatcher.id)
        [job] = dispatcher.submit_specs([spec])
        refused = job.result(timeout=60)
    assert refused.status == "completed"
    assert "fan_out refused: this job is at depth 1" in refused.text
    assert child_requests(model_server.requests) == []


def test_cancelling_the_parent_midway_stops_the_whole_tree(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = fan_out_model(20, child_delay=30)
    config = fan_out_config(model_server.base_url, str(tmp_path))
    with fleet.dispatcher() as dispatcher:
        parent = dispatcher.submit(PARENT_PROMPT, config)
        wait_until(lambda: len(child_requests(model_server.requests)) >= 10, 30, "children run")
        parent.cancel()
        assert parent.result(timeout=15).status == "cancelled"
        child_ids = children_of(fleet, parent.id)
        assert len(child_ids) == 20

        def running() -> list[str]:
            infos = dispatcher.infos(child_ids)
            return [i.job_id for i in infos if i is not None and not i.finished]

        deadline = time.monotonic() + 10
        while running() and time.monotonic() < deadline:
            time.sleep(0.1)
        still_running = running()
        statuses = Counter(info.status for info in dispatcher.infos(child_ids) if info)
    print(f"\nafter cancelling the parent: {dict(statuses)}, {len(still_running)} still running")
    assert still_running == []
    assert statuses == {"cancelled": 20}


def test_a_parent_whose_worker_dies_resumes_and_reattaches_to_its_children(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = fan_out_model(20, child_delay=3)
    config = fan_out_config(model_server.base_url, str(tmp_path))
    with fleet.dispatcher() as dispatcher:
        parent = dispatcher.submit(PARENT_PROMPT, config)
        wait_until(lambda: len(child_requests(model_server.requests)) == 20, 30, "children run")
        victim = parent.info().worker or ""
        fleet.workers[victim].kill(signal.SIGKILL)
        killed_at = time.monotonic()
        result = parent.result(timeout=60)
        resumed_after = time.monotonic() - killed_at
        info = parent.info()
        seen = tool_result(result.text)
        child_ids = [child["job_id"] for child in seen["children"]]
        attempts = {i.prompt: i.attempt for i in dispatcher.infos(child_ids) if i is not None}
    fleet.add_worker(victim, RHO_AGENT_FAN_OUT_MAX_DEPTH="1").wait_ready()
    requests = Counter(child_requests(model_server.requests))
    restarted = sum(attempt > 1 for attempt in attempts.values())
    print(
        f"\nparent resumed on {info.worker} and finished {resumed_after:.2f} s after the kill; "
        f"{restarted} of 20 children (those on {victim}) resumed; child model requests: "
        f"{sum(requests.values())}"
    )
    assert (result.status, info.attempt) == ("completed", 2)
    assert info.worker != victim
    assert (seen["completed"], seen["failed"]) == (20, 0)
    assert children_of(fleet, parent.id) == sorted(child_ids), "no second set of children"
    assert len(set(child_ids)) == 20
    assert all(requests[prompt] <= attempts[prompt] for prompt in attempts), (requests, attempts)
    assert parent_requests(model_server) == 2, "the fan_out call was not asked for again"


def test_a_two_slot_worker_runs_a_parent_and_its_children_without_deadlock(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    # Children inherit the parent's queue, which only this worker consumes: one thread holds the
    # waiting parent, the other runs the children one after another.
    small = fleet.add_worker("wsmall", RHO_AGENT_WORKER_CONCURRENCY="2")
    small.wait_ready()
    try:
        model_server.responder = fan_out_model(4, child_delay=0.2)
        config = fan_out_config(model_server.base_url, str(tmp_path))
        with fleet.dispatcher() as dispatcher:
            parent = dispatcher.submit(PARENT_PROMPT, config, queue=fleet.queue_of("wsmall"))
            result = parent.result(timeout=60)
            seen = tool_result(result.text)
            workers = {
                info.worker
                for info in dispatcher.infos([child["job_id"] for child in seen["children"]])
                if info is not None
            }
        assert (result.status, seen["completed"]) == ("completed", 4)
        assert workers == {"wsmall"}
    finally:
        small.stop()
        del fleet.workers["wsmall"]
