"""Approvals over the memory bus: a job parks as awaiting_approval, a decision continues it.

The runs here are real JobRuns against the scripted model; "another worker" is a second JobRun
with another worker name on the same bus, reading only what the bus holds (the trace).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from dispatch import ApprovalRefused, Dispatcher, FleetSettings
from dispatch.engine.approval import EXPIRED_REASON
from dispatch.engine.bus import Claim
from dispatch.engine.memory_bus import MemoryBus
from dispatch.engine.run import JobOutcome, JobRun, RunnerOptions
from dispatch.spec import JobSpec, build_spec
from rho_agent import AgentConfig
from rho_agent.permissions.profile import PermissionProfile
from rho_agent.testing import (
    ScriptedModelServer,
    ScriptedResponse,
    ScriptedToolCall,
    text,
    tool_call,
)
from tests.integration.fleet import agent_with_mark_tool

APPROVE_MARK = PermissionProfile("approve-mark", approval={"mark"})


def mark_config(server: ScriptedModelServer, tmp_path: Path, **extra: Any) -> AgentConfig:
    return AgentConfig(
        base_url=server.base_url,
        working_dir=str(tmp_path),
        profile=APPROVE_MARK,
        auto_approve=False,
        **extra,
    )


def answer_with_last_tool_result(body: dict[str, Any]) -> ScriptedResponse:
    """The model's final answer repeats what the tools answered, so a test sees what it read."""
    tools = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    return text(" | ".join(tools))


async def park(
    server: ScriptedModelServer, tmp_path: Path, *calls: ScriptedToolCall, **options: Any
) -> tuple[MemoryBus, JobSpec, JobOutcome]:
    """Submit a job whose model calls ``calls`` (all needing approval) and run it until it parks."""
    server.script(ScriptedResponse(tool_calls=list(calls)))
    server.responder = answer_with_last_tool_result
    spec = build_spec("mark it", mark_config(server, tmp_path))
    bus = MemoryBus()
    await bus.submit([spec], "q")
    runner = RunnerOptions(worker="w1", agent_factory=agent_with_mark_tool, **options)
    outcome = await JobRun(spec, bus, runner).run()
    return bus, spec, outcome


def mark(tmp_path: Path, n: int, call_id: str) -> ScriptedToolCall:
    return ScriptedToolCall(
        name="mark", arguments={"path": str(tmp_path / "marks"), "n": n}, id=call_id
    )


async def continue_on(
    bus: MemoryBus, spec: JobSpec, worker: str = "w2", **options: Any
) -> JobOutcome:
    runner = RunnerOptions(worker=worker, agent_factory=agent_with_mark_tool, **options)
    return await JobRun(spec, bus, runner).run()


async def test_a_job_needing_approval_parks_then_continues_on_another_worker(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    bus, spec, outcome = await park(model_server, tmp_path, mark(tmp_path, 1, "c1"))
    assert outcome.status == "awaiting_approval"
    info = (await bus.get_info([spec.job_id]))[0]
    assert info is not None and info.status == "awaiting_approval" and info.finished
    assert [(c.call_id, c.tool_name, c.arguments) for c in info.pending_approvals] == [
        ("c1", "mark", {"path": str(tmp_path / "marks"), "n": 1})
    ]
    assert info.approval_deadline is not None and info.error == "approval required for: mark"
    assert not (tmp_path / "marks").exists(), "nothing ran before the decision"
    assert [i.job_id for i in await bus.awaiting(10)] == [spec.job_id]

    decided = await bus.decide(spec.job_id, "approved", None, "")
    assert (decided.action, decided.attempt) == ("queued", 1) and decided.spec == spec
    assert await bus.awaiting(10) == []
    outcome = await continue_on(bus, spec)
    assert (outcome.status, outcome.attempt, outcome.worker) == ("completed", 2, "w2")
    assert (tmp_path / "marks").read_text() == "1\n", "the approved tool ran exactly once"
    result = (await bus.get_results([spec.job_id]))[0]
    assert result is not None and result.text == "marked 1"
    types = [e.type for e in result.events]
    assert types.count("interruption") == 1 and types.count("tool_end") == 1
    records = [e.data["record"] for e in await bus.read_trace(spec.session_id)]
    assert [r["status"] for r in records if r["type"] == "run_end"] == ["interrupted", "completed"]
    assert [r["type"] for r in records].count("tool_start") == 1
    kinds = [
        e.data.get("type") for e in await bus.read_events(spec.job_id) if e.data["kind"] == "job"
    ]
    assert kinds == ["started", "awaiting_approval", "approval_decided", "continued", "finished"]


async def test_a_denied_call_is_answered_with_the_reason(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    bus, spec, _ = await park(model_server, tmp_path, mark(tmp_path, 1, "c1"))
    await bus.decide(spec.job_id, "denied", ["c1"], "not on a Friday")
    outcome = await continue_on(bus, spec)
    assert outcome.status == "completed"
    assert not (tmp_path / "marks").exists()
    result = (await bus.get_results([spec.job_id]))[0]
    assert result is not None and result.text == "Blocked: not on a Friday", "the model read it"
    records = [e.data["record"] for e in await bus.read_trace(spec.session_id)]
    blocked = [r for r in records if r["type"] == "tool_blocked"]
    assert [(b["call_id"], b["reason"]) for b in blocked] == [("c1", "not on a Friday")]


async def test_partial_decisions_wait_for_every_call_and_each_is_refused_twice(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    bus, spec, _ = await park(
        model_server, tmp_path, mark(tmp_path, 1, "c1"), mark(tmp_path, 2, "c2")
    )
    assert (await bus.decide(spec.job_id, "approved", ["c1"], "")).action == "waiting"
    with pytest.raises(ApprovalRefused, match=r"call c1 of job .* was already approved") as exc:
        await bus.decide(spec.job_id, "denied", ["c1"], "no")
    assert exc.value.reason == "already_decided"
    with pytest.raises(ApprovalRefused, match="call nope is not pending") as exc:
        await bus.decide(spec.job_id, "approved", ["c2", "nope"], "")
    assert exc.value.reason == "unknown_call"
    info = (await bus.get_info([spec.job_id]))[0]
    assert info is not None and [c.decision for c in info.pending_approvals] == ["approved", None]
    assert (await bus.decide(spec.job_id, "denied", None, "only one")).action == "queued"
    with pytest.raises(ApprovalRefused, match="is not awaiting approval \\(it is queued\\)"):
        await bus.decide(spec.job_id, "approved", None, "")
    assert (await continue_on(bus, spec)).status == "completed"
    assert (tmp_path / "marks").read_text() == "1\n"
    result = (await bus.get_results([spec.job_id]))[0]
    assert result is not None and result.text == "marked 1 | Blocked: only one"
    with pytest.raises(ApprovalRefused, match="it is completed") as exc:
        await bus.decide(spec.job_id, "approved", None, "")
    assert exc.value.reason == "not_awaiting"


async def test_an_expired_approval_is_denied_with_that_reason(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    bus, spec, _ = await park(model_server, tmp_path, mark(tmp_path, 1, "c1"), approval_ttl_s=0.2)
    assert await bus.expire_approvals(EXPIRED_REASON) == [], "not yet"
    await asyncio.sleep(0.25)
    assert [(s.job_id, attempt) for s, attempt in await bus.expire_approvals(EXPIRED_REASON)] == [
        (spec.job_id, 1)
    ]
    outcome = await continue_on(bus, spec)
    assert outcome.status == "completed" and not (tmp_path / "marks").exists()
    result = (await bus.get_results([spec.job_id]))[0]
    assert result is not None and result.text == f"Blocked: {EXPIRED_REASON}"


async def test_approval_rounds_do_not_count_as_failed_attempts(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    bus, spec, _ = await park(model_server, tmp_path, mark(tmp_path, 1, "c1"), max_attempts=1)
    model_server.script(ScriptedResponse(tool_calls=[mark(tmp_path, 2, "c2")]))
    await bus.decide(spec.job_id, "approved", None, "")
    assert (await continue_on(bus, spec, max_attempts=1)).status == "awaiting_approval"
    info = (await bus.get_info([spec.job_id]))[0]
    assert info is not None and [c.call_id for c in info.pending_approvals] == ["c2"]
    await bus.decide(spec.job_id, "approved", None, "")
    outcome = await continue_on(bus, spec, "w3", max_attempts=1)
    assert (outcome.status, outcome.attempt) == ("completed", 3)
    assert (tmp_path / "marks").read_text() == "1\n2\n"


async def test_a_crash_after_the_decision_resumes_without_running_the_tool_twice(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    bus, spec, _ = await park(model_server, tmp_path, mark(tmp_path, 1, "c1"))
    await bus.decide(spec.job_id, "approved", None, "")
    hang = asyncio.Event()

    async def hang_forever(body: dict[str, Any]) -> ScriptedResponse:
        hang.set()
        await asyncio.sleep(60)
        return text("never")

    model_server.responder = hang_forever
    crashed = asyncio.create_task(continue_on(bus, spec))
    await asyncio.wait_for(hang.wait(), 10)  # the tool ran; the model is being asked
    crashed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await crashed
    # Its lease would lapse and the sweeper queue it again; the memory bus has no sweeper.
    await bus.set_fields(spec.job_id, {"status": "queued"})
    model_server.responder = answer_with_last_tool_result
    outcome = await continue_on(bus, spec, "w3")
    assert (outcome.status, outcome.attempt) == ("completed", 3)
    assert (tmp_path / "marks").read_text() == "1\n", "the approved tool ran exactly once"


async def test_cancelling_a_job_awaiting_approval_frees_its_session(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    bus, spec, _ = await park(model_server, tmp_path, mark(tmp_path, 1, "c1"))
    other = build_spec("again", mark_config(model_server, tmp_path), session_id=spec.session_id)
    await bus.submit([other], "q")
    busy = await continue_on(bus, other)
    assert busy.status == "error" and f"in use by job {spec.job_id}" in (busy.error or "")
    assert await bus.request_cancel(spec.job_id) == "cancelled"
    assert await bus.awaiting(10) == []
    with pytest.raises(ApprovalRefused, match="it is cancelled"):
        await bus.decide(spec.job_id, "approved", None, "")


def test_embedded_gather_returns_awaiting_then_approve_continues(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    model_server.script(tool_call("bash", {"command": f"echo ran >> {marks}"}, id="b1"))
    model_server.responder = answer_with_last_tool_result
    config = AgentConfig(
        base_url=model_server.base_url, working_dir=str(tmp_path), profile="developer",
        auto_approve=False,
    )  # fmt: skip
    with Dispatcher(settings=FleetSettings(approval_ttl_s=60)) as dispatcher:
        job = dispatcher.submit("run it", config)
        [parked] = dispatcher.gather([job], timeout=10)
        assert parked.status == "awaiting_approval" and job.status() == "awaiting_approval"
        assert [c.call_id for c in job.info().pending_approvals] == ["b1"]
        assert [info.job_id for info in dispatcher.approvals()] == [job.id]
        assert not marks.exists()
        assert job.approve() == "queued"
        with pytest.raises(ApprovalRefused):
            job.approve()
        result = job.result(timeout=10)
        assert result.status == "completed" and marks.read_text() == "ran\n"
        assert job.info().attempt == 2 and job.info().status == "completed"


def test_embedded_expiry_continues_the_job_with_a_denial(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(tool_call("bash", {"command": "true"}, id="b1"))
    model_server.responder = answer_with_last_tool_result
    config = AgentConfig(
        base_url=model_server.base_url, working_dir=str(tmp_path), profile="developer",
        auto_approve=False,
    )  # fmt: skip
    with Dispatcher(settings=FleetSettings(approval_ttl_s=1)) as dispatcher:
        job = dispatcher.submit("run it", config)
        assert job.result(timeout=10).status == "awaiting_approval"
        started = time.monotonic()
        while job.status() == "awaiting_approval" and time.monotonic() - started < 10:
            time.sleep(0.05)  # result() would return the pause: it is settled until then
        waited = time.monotonic() - started
        result = job.result(timeout=10)
    assert result.status == "completed" and result.text == f"Blocked: {EXPIRED_REASON}"
    assert waited < 3, "expired after about the 1 s approval time"


async def test_a_multi_prompt_job_goes_on_to_its_next_prompt_after_the_decision(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(ScriptedResponse(tool_calls=[mark(tmp_path, 1, "c1")]))
    model_server.responder = lambda body: text(f"answer {len(body['messages'])}")
    spec = build_spec(["first", "second"], mark_config(model_server, tmp_path))
    bus = MemoryBus()
    await bus.submit([spec], "q")
    assert (await continue_on(bus, spec, "w1")).status == "awaiting_approval"
    await bus.decide(spec.job_id, "approved", None, "")
    assert (await continue_on(bus, spec)).status == "completed"
    records = [e.data["record"] for e in await bus.read_trace(spec.session_id)]
    starts = [r["prompt"] for r in records if r["type"] == "run_start"]
    assert starts == ["first", None, "second"], "the continuation, then the next prompt, once"
    assert (tmp_path / "marks").read_text() == "1\n"


async def test_a_job_cancelled_as_it_pauses_ends_instead_of_waiting(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(ScriptedResponse(tool_calls=[mark(tmp_path, 1, "c1")]))
    spec = build_spec("mark it", mark_config(model_server, tmp_path))
    runners: list[JobRun] = []

    class CancelAtThePause(MemoryBus):
        """Cancels the run the moment its interruption event is written."""

        def emit_event(self, claim: Claim, entry: dict[str, Any]) -> None:
            super().emit_event(claim, entry)
            if entry.get("event", {}).get("type") == "interruption":
                runners[0].cancel()

    bus = CancelAtThePause()
    await bus.submit([spec], "q")
    runners.append(JobRun(spec, bus, RunnerOptions(agent_factory=agent_with_mark_tool)))
    outcome = await runners[0].run()
    assert outcome.status == "interrupted" and await bus.awaiting(10) == []
