"""JobRun: resume after a crash without re-running finished tools; refusals; attempt limits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dispatch.engine.bus import entry_event
from dispatch.engine.memory_bus import MemoryBus
from dispatch.engine.run import JobOutcome, JobRun, RunnerOptions
from dispatch.spec import JobSpec, build_spec
from rho_agent import AgentConfig
from rho_agent.events import RunResult
from rho_agent.permissions.profile import BUILTIN_PROFILES
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, error, text, tool_call
from tests.integration.fleet import agent_with_mark_tool


def marking_responder(marks: Path, total: int, hang_after: list[int]) -> Any:
    """Calls ``mark`` with 1..total, then answers "done"; hangs after ``hang_after[0]`` marks."""

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        done = 0
        for message in reversed(body["messages"]):
            if message["role"] == "user":
                break
            done += message["role"] == "tool"
        delay = 60.0 if hang_after and done == hang_after[0] else 0.0
        if done < total:
            return tool_call("mark", {"path": str(marks), "n": done + 1}, delay=delay)
        return text("done")

    return respond


async def wait_until(condition: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_a_crashed_job_resumes_without_running_finished_tools_again(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    hang_after = [2]
    model_server.responder = marking_responder(marks, 3, hang_after)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    spec = build_spec("mark three times", config)
    bus = MemoryBus()
    await bus.submit([spec], "q")
    options = RunnerOptions(worker="w1", agent_factory=agent_with_mark_tool)
    crashed = asyncio.create_task(JobRun(spec, bus, options).run())

    async def two_marks_recorded() -> bool:
        entries = await bus.read_trace(spec.session_id)
        return [entry.data["record"].get("role") for entry in entries].count("tool") == 2

    await wait_until(two_marks_recorded)
    crashed.cancel()  # what a dead worker looks like: no run_end, the run stays resumable
    with contextlib.suppress(asyncio.CancelledError):
        await crashed
    await bus.set_fields(spec.job_id, {"status": "queued"})  # what the sweeper does
    hang_after.clear()
    options = RunnerOptions(worker="w2", agent_factory=agent_with_mark_tool)
    outcome = await JobRun(spec, bus, options).run()
    assert (outcome.status, outcome.attempt, outcome.worker) == ("completed", 2, "w2")
    assert marks.read_text().split() == ["1", "2", "3"], "finished tool calls ran once"
    [result] = await bus.get_results([spec.job_id])
    assert result is not None and (result.status, result.text) == ("completed", "done")
    types = [event.type for event in result.events]
    assert types.count("tool_end") == 3 and "job_restarted" in types
    assert result.usage["input_tokens"] > 0
    stream = [entry_event(entry) for entry in await bus.read_events(spec.job_id)]
    assert [event.type for event in stream if event].count("job_restarted") == 1


async def test_a_profile_above_the_ceiling_is_refused(model_server: ScriptedModelServer) -> None:
    spec = build_spec("hi", AgentConfig(base_url=model_server.base_url, profile="unrestricted"))
    bus = MemoryBus()
    await bus.submit([spec], "q")
    ceiling = BUILTIN_PROFILES["developer"]
    outcome = await JobRun(spec, bus, RunnerOptions(max_profile=ceiling)).run()
    assert outcome.status == "error"
    assert "ceiling 'developer'" in (outcome.error or "")
    assert "write: 'anywhere' is more than 'working_dir'" in (outcome.error or "")
    [info] = await bus.get_info([spec.job_id])
    assert info is not None and info.status == "error" and info.error == outcome.error
    assert model_server.requests == [], "a refused job never reaches the model"


async def test_a_job_whose_workers_keep_dying_gives_up(model_server: ScriptedModelServer) -> None:
    spec = build_spec("hi", AgentConfig(base_url=model_server.base_url))
    bus = MemoryBus()
    await bus.submit([spec], "q")
    await bus.set_fields(spec.job_id, {"attempt": "3"})
    outcome = await JobRun(spec, bus, RunnerOptions(max_attempts=3)).run()
    assert outcome.status == "error" and "gave up after 3 attempts" in (outcome.error or "")


@pytest.mark.parametrize("status", ["running", "completed"])
async def test_a_job_that_is_not_queued_is_skipped(status: str) -> None:
    spec = build_spec("hi", AgentConfig())
    bus = MemoryBus()
    await bus.submit([spec], "q")
    await bus.set_fields(spec.job_id, {"status": status})
    outcome = await JobRun(spec, bus, RunnerOptions()).run()
    assert outcome.status == "skipped" and status in (outcome.error or "")


class CrashBeforeFinish(MemoryBus):
    """A MemoryBus whose first finish never happens: the worker died after the run ended."""

    async def finish(self, spec: Any, attempt: int, result: Any, error: str | None) -> bool:
        if attempt == 1:
            raise asyncio.CancelledError  # killed between the run's end and its finish
        return await super().finish(spec, attempt, result, error)


async def _crash_before_finish_then_resume(spec: JobSpec) -> tuple[JobOutcome, RunResult | None]:
    """Run ``spec`` on a worker killed before its finish, then again as the sweeper would."""
    bus = CrashBeforeFinish()
    await bus.submit([spec], "q")
    with contextlib.suppress(asyncio.CancelledError):
        await JobRun(spec, bus, RunnerOptions(worker="w1")).run()
    await bus.set_fields(spec.job_id, {"status": "queued"})  # what the sweeper does
    outcome = await JobRun(spec, bus, RunnerOptions(worker="w2")).run()
    [result] = await bus.get_results([spec.job_id])
    return outcome, result


async def test_a_failed_run_resumed_after_a_crash_before_its_finish_says_why(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: error(400, "model down")
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    spec = build_spec("hello", config)
    outcome, result = await _crash_before_finish_then_resume(spec)
    assert outcome.status == "error" and "model down" in (outcome.error or "")
    assert result is not None and result.status == "error"
    assert result.error is not None and "model down" in result.error.message


async def test_a_job_whose_first_prompt_failed_does_not_run_the_next_after_a_crash(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    def respond(body: dict[str, Any]) -> ScriptedResponse:
        prompt = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        return error(400, "model down") if prompt == "first" else text("second answered")

    model_server.responder = respond
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    spec = build_spec(["first", "second"], config)
    outcome, result = await _crash_before_finish_then_resume(spec)
    assert outcome.status == "error", "as without the crash: a failed prompt ends the job"
    assert result is not None and result.text != "second answered"
    assert result.error is not None and "model down" in result.error.message
