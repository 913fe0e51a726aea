"""The ``fan_out`` tool in embedded mode: sub-sessions in-process, through the same JobHost.

Limits, profile capping and cancellation are the engine's (``dispatch.engine.fan_out``), so
what these tests show holds on the fleet too (tests/integration/test_fan_out.py runs the same
model on real workers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch import Dispatcher, FleetSettings
from dispatch.engine.fan_out import child_job_id
from dispatch.engine.host import _Slot
from dispatch.engine.memory_bus import MemoryBus
from dispatch.engine.run import JobRun, RunnerOptions
from dispatch.spec import build_spec
from rho_agent import AgentConfig, PermissionProfile
from rho_agent.testing import ScriptedModelServer
from rho_agent.tools.sub_jobs import SubJobRequest
from tests.fan_out_support import (
    child_requests,
    fan_out_config,
    fan_out_model,
    tool_result,
)


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    settings = FleetSettings(embedded_concurrency=4, fan_out_max_depth=1, fan_out_max_children=25)
    with Dispatcher(settings=settings) as embedded:
        yield embedded


def test_a_parent_fans_out_twenty_children_and_reads_every_answer(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    # 4 slots, 20 children: the waiting parent lends its slot, or its children never start.
    model_server.responder = fan_out_model(20)
    parent = dispatcher.submit("split it", fan_out_config(model_server.base_url, str(tmp_path)))
    result = parent.result(timeout=30)
    assert result.status == "completed"
    seen = tool_result(result.text)
    assert (seen["completed"], seen["failed"]) == (20, 0)
    assert [child["text"] for child in seen["children"]] == [f"answer {n}" for n in range(20)]
    children = dispatcher.attach([child["job_id"] for child in seen["children"]])
    infos = [child.info() for child in children if child is not None]
    assert len(infos) == 20
    assert all(info.labels == {"parent": parent.id} for info in infos)
    assert sorted(child_requests(model_server.requests)) == sorted(f"child {n}" for n in range(20))


def test_a_parent_holding_the_only_slot_lends_it_to_its_children(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = fan_out_model(3)
    with Dispatcher(settings=FleetSettings(embedded_concurrency=1)) as dispatcher:
        config = fan_out_config(model_server.base_url, str(tmp_path))
        result = dispatcher.submit("split it", config).result(timeout=20)
    assert tool_result(result.text)["completed"] == 3


def test_typed_children_answer_with_their_parsed_output(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    model_server.responder = fan_out_model(3, output_schema=schema)
    config = fan_out_config(model_server.base_url, str(tmp_path))
    result = dispatcher.submit("typed", config, labels={"batch": "b1"}).result(timeout=30)
    seen = tool_result(result.text)
    assert [child["output"] for child in seen["children"]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all("text" not in child for child in seen["children"])


def test_depth_limit_is_refused_clearly(model_server: ScriptedModelServer, tmp_path: Path) -> None:
    model_server.responder = fan_out_model(2)
    settings = FleetSettings(fan_out_max_depth=0)
    with Dispatcher(settings=settings) as dispatcher:
        config = fan_out_config(model_server.base_url, str(tmp_path))
        result = dispatcher.submit("split it", config).result(timeout=30)
    assert "fan_out refused: this job is at depth 0" in result.text
    assert "RHO_AGENT_FAN_OUT_MAX_DEPTH" in result.text
    assert child_requests(model_server.requests) == []


def test_breadth_limit_is_refused_clearly(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = fan_out_model(26)
    config = fan_out_config(model_server.base_url, str(tmp_path))
    result = dispatcher.submit("split it", config).result(timeout=30)
    assert "fan_out refused: 26 prompts is more than the 25" in result.text
    assert "RHO_AGENT_FAN_OUT_MAX_CHILDREN" in result.text
    assert child_requests(model_server.requests) == []


def test_a_readonly_parent_cannot_start_developer_children(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = fan_out_model(2, profile="developer")
    config = fan_out_config(model_server.base_url, str(tmp_path))
    result = dispatcher.submit("split it", config).result(timeout=30)
    assert "fan_out refused: sub-agents cannot have more permissions" in result.text
    assert "shell: 'allowed' is more than 'readonly'" in result.text
    assert child_requests(model_server.requests) == []


def test_a_developer_parent_may_start_readonly_children_that_keep_the_grant(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = fan_out_model(2, profile="readonly")
    developer = PermissionProfile(
        "dev-fanner", shell="allowed", write="working_dir", grants={"fan_out"}
    )
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    config.profile = developer
    result = dispatcher.submit("split it", config).result(timeout=30)
    seen = tool_result(result.text)
    assert seen["completed"] == 2
    [child] = dispatcher.attach([seen["children"][0]["job_id"]])
    assert child is not None and child.info().profile == "readonly"
    tools = {
        tool["function"]["name"]
        for request in model_server.requests
        if request.body["messages"][1]["content"] == "child 0"
        for tool in request.body.get("tools", [])
    }
    assert "fan_out" in tools and "write" not in tools


def test_without_the_grant_there_is_no_fan_out_tool(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = fan_out_model(2)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    result = dispatcher.submit("split it", config).result(timeout=30)
    assert "there is no tool named 'fan_out'" in result.text
    assert all(
        tool["function"]["name"] != "fan_out"
        for request in model_server.requests
        for tool in request.body.get("tools", [])
    )


def test_cancelling_the_parent_cancels_every_child(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = fan_out_model(8, child_delay=30)
    parent = dispatcher.submit("split it", fan_out_config(model_server.base_url, str(tmp_path)))
    deadline = time.monotonic() + 10
    while len(child_requests(model_server.requests)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(child_requests(model_server.requests)) >= 4, "children started"
    parent.cancel()
    assert parent.result(timeout=10).status == "cancelled"
    children = [job for job in dispatcher.jobs(50) if job.labels.get("parent") == parent.id]
    assert len(children) == 8
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        infos = dispatcher.infos([child.job_id for child in children])
        if all(info is not None and info.finished for info in infos):
            break
        time.sleep(0.05)
    statuses = [info.status for info in infos if info is not None]
    assert statuses.count("cancelled") == 8, statuses


def test_a_bad_output_schema_is_refused_with_what_is_wrong(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = fan_out_model(2, output_schema={"type": "nonsense"})
    config = fan_out_config(model_server.base_url, str(tmp_path))
    result = dispatcher.submit("split it", config).result(timeout=30)
    assert "invalid fan_out sub-job 0: field 'output_schema'" in result.text
    assert child_requests(model_server.requests) == []


def test_the_same_call_id_with_new_prompts_gets_new_children() -> None:
    first = SubJobRequest("call_0", ["a", "b"])
    again = SubJobRequest("call_0", ["a", "b"])  # the same call, run again after a crash
    assert child_job_id("j-1", first, 0) == child_job_id("j-1", again, 0)
    assert child_job_id("j-1", first, 0) != child_job_id("j-1", first, 1)
    assert child_job_id("j-1", first, 0) != child_job_id("j-1", SubJobRequest("call_0", ["c"]), 0)
    assert child_job_id("j-1", first, 0) != child_job_id("j-2", first, 0)
    assert child_job_id("j-1", first, 0).startswith("j-1-f")
    assert len(child_job_id("j" * 128, first, 49)) <= 128


def test_the_parents_budget_covers_its_children(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    # 6,000 tokens: the parent's first call and some children fit, not all five children.
    model_server.responder = fan_out_model(5)
    config = fan_out_config(model_server.base_url, str(tmp_path), output_allowance=100)
    parent = dispatcher.submit("split it", config, max_tokens=6000)
    assert parent.result(timeout=30).status == "budget_exceeded"
    children = [job for job in dispatcher.jobs(50) if job.labels.get("parent") == parent.id]
    refused = [child for child in children if child.status == "budget_exceeded"]
    assert len(children) == 5 and 1 <= len(refused) < 5
    assert all(f"budget job:{parent.id} exhausted" in (child.error or "") for child in refused)
    [tree] = [
        status for status in dispatcher.budgets() if status.budget.scope == f"job:{parent.id}"
    ]
    spent = sum(job.input_tokens + job.output_tokens for job in [parent.info(), *children])
    assert tree.spent_tokens == spent <= 6000


async def test_a_lent_slot_comes_back_after_a_failure_but_not_after_a_cancel() -> None:
    slots = asyncio.Semaphore(1)
    slot = _Slot(slots)
    async with slot:
        with pytest.raises(ValueError):
            async with slot.lent():
                assert not slots.locked(), "lent while waiting"
                raise ValueError("the wait failed")
        assert slots.locked(), "taken back: the run goes on under the limit"
        with pytest.raises(asyncio.CancelledError):
            async with slot.lent():
                raise asyncio.CancelledError
        assert not slots.locked(), "a cancelled parent ends without queueing for a place"
    await slots.acquire()
    assert slots.locked(), "one place, released exactly once"


async def test_a_parent_cancelled_while_its_worker_was_dead_cancels_its_children() -> None:
    # The parent started children, its worker died, someone cancelled it, and the sweeper sent
    # it again: the next attempt ends it as cancelled before running, and its tree with it.
    bus = MemoryBus()
    parent = build_spec("split it", AgentConfig())
    child = build_spec("child 0", AgentConfig(), job_id=f"{parent.job_id}-f0-0")
    await bus.submit([parent], "q")
    await bus.start(parent, "w1", 60_000)
    await bus.submit_children(parent.job_id, [child])
    await bus.start(child, "w2", 60_000)
    assert await bus.request_cancel(parent.job_id) == "requested"
    await bus.set_fields(parent.job_id, {"status": "queued"})  # what the sweeper does
    outcome = await JobRun(parent, bus, RunnerOptions()).run()
    assert outcome.status == "cancelled"
    _, asked = await bus.next_cancels("0", 0.0)
    assert child.job_id in asked, "the running child's worker is told to stop"


def test_cancelling_a_queued_parent_cancels_its_recorded_children(dispatcher: Dispatcher) -> None:
    # A parent whose crashed attempt started a child, queued again: Job.cancel() ends it at once
    # (no attempt runs to cancel the child), so the dispatcher cancels the recorded children.
    core = dispatcher._core
    bus = core.broker.bus  # the embedded MemoryBus: record jobs without running them
    parent = build_spec("split it", AgentConfig())
    child = build_spec("child 0", AgentConfig(), job_id=f"{parent.job_id}-f0-0")
    assert isinstance(bus, MemoryBus)
    core.loop.call(bus.submit([parent], "q"))
    core.loop.call(bus.submit_children(parent.job_id, [child]))
    assert dispatcher.job(parent.job_id).cancel() == "cancelled"
    assert dispatcher.job(child.job_id).status() == "cancelled"
