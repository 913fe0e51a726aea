"""Session.run end to end through the real openai client against the scripted server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from rho_agent import (
    Agent,
    AgentConfig,
    ApprovalInterrupt,
    Session,
    SessionError,
    State,
    compaction,
)
from rho_agent.errors import PermissionDenied
from rho_agent.events import AgentEvent, RunResult
from rho_agent.testing import (
    ScriptedModelServer,
    ScriptedResponse,
    ScriptedToolCall,
    ScriptedUsage,
    error,
    text,
    tool_call,
)
from tests.sdk.helpers import ProbeTool, assert_history_valid, make_session


async def test_streams_text_and_reports_usage(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(
        text("Hello from the model", text_chunk_size=4, usage=ScriptedUsage(100, 7, 40, 3))
    )
    session = make_session(model_server, tmp_path)
    result = await session.run(prompt="Say hello")

    assert result.status == "completed"
    assert result.text == "Hello from the model"
    text_events = [e.content for e in result.events if e.type == "text"]
    # streamed a word at a time: a delta is held back until no secret can span its end
    assert text_events == ["Hello ", "from ", "the ", "model"]
    assert [e.type for e in result.events][-2:] == ["api_call_complete", "turn_complete"]
    assert result.usage["input_tokens"] == 100 and result.usage["cached_tokens"] == 40
    assert result.usage["output_tokens"] == 7 and result.usage["reasoning_tokens"] == 3
    # gpt-5-mini: (60 * 0.25 + 40 * 0.025 + 7 * 2.0) / 1e6
    assert session.state.usage["cost_usd"] == pytest.approx(30e-6)
    assert session.state.status == "completed" and session.state.run_count == 1
    body = model_server.requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


async def test_parallel_tool_calls_run_concurrently_in_model_order(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    calls = [
        ScriptedToolCall("probe", {"id": "slow", "sleep": 0.4}, id="c1"),
        ScriptedToolCall("probe", {"id": "fast", "sleep": 0.0}, id="c2"),
        ScriptedToolCall("probe", {"id": "mid", "sleep": 0.2}, id="c3"),
    ]
    model_server.script(
        ScriptedResponse(text="Let me check.", tool_calls=calls, arguments_chunk_size=5),
        text("All done"),
    )
    probe = ProbeTool()
    session = make_session(model_server, tmp_path, probe=probe)
    started = time.monotonic()
    result = await session.run(prompt="go")
    elapsed = time.monotonic() - started

    assert result.status == "completed" and result.text == "All done"
    assert elapsed < 0.75, f"tools ran one after another ({elapsed:.2f}s)"
    assert probe.finished == ["fast", "mid", "slow"]
    starts = [e.tool_call_id for e in result.events if e.type == "tool_start"]
    ends = [e.tool_call_id for e in result.events if e.type == "tool_end"]
    assert sorted(starts) == sorted(ends) == ["c1", "c2", "c3"]
    messages = session.state.messages
    assistant = messages[2]
    assert assistant["content"] == "Let me check."
    first_arguments = assistant["tool_calls"][0]["function"]["arguments"]
    assert json.loads(first_arguments) == {"id": "slow", "sleep": 0.4}
    assert [m.get("tool_call_id") for m in messages[3:6]] == ["c1", "c2", "c3"]
    assert [m["content"] for m in messages[3:6]] == ["probe slow", "probe fast", "probe mid"]
    second_request = model_server.requests[1].body["messages"]
    assert second_request[2:6] == messages[2:6]
    assert_history_valid(messages)


async def test_invalid_json_and_unknown_tool_are_answered_to_the_model(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(
        ScriptedResponse(
            tool_calls=[
                ScriptedToolCall("probe", '{"id": "x"', id="bad"),
                ScriptedToolCall("nosuch", {}, id="missing"),
            ]
        ),
        text("ok"),
    )
    probe = ProbeTool()
    session = make_session(model_server, tmp_path, probe=probe)
    result = await session.run(prompt="go")

    assert result.status == "completed" and probe.calls == []
    results = {
        m["tool_call_id"]: m["content"] for m in session.state.messages if m["role"] == "tool"
    }
    assert "not valid JSON" in results["bad"]
    assert "no tool named 'nosuch'" in results["missing"] and "probe" in results["missing"]
    sent = model_server.requests[1].body["messages"]
    assert any(m.get("tool_call_id") == "bad" for m in sent)


async def test_max_turns_ends_with_a_clear_status(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: tool_call("probe", {"id": "again"})
    session = make_session(model_server, tmp_path, probe=ProbeTool())
    session.max_turns = 3
    result = await session.run(prompt="loop forever")

    assert result.status == "max_turns"
    assert result.events[-1].type == "max_turns" and "max_turns=3" in (
        result.events[-1].content or ""
    )
    assert len(model_server.requests) == 3
    assert_history_valid(session.state.messages)


async def test_non_retryable_error_ends_the_run_with_the_api_message(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(error(400, "the model does not exist: gpt-nope"))
    session = make_session(model_server, tmp_path)
    result = await session.run(prompt="hi")

    assert result.status == "error"
    assert result.events[-1].type == "error"
    assert "the model does not exist: gpt-nope" in (result.events[-1].content or "")
    assert session.state.status == "error"
    assert len(model_server.requests) == 1


async def test_transient_failures_are_retried(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(
        error(429, "slow down", headers={"retry-after-ms": "10"}),
        error(503, "overloaded", headers={"retry-after-ms": "10"}),
        text("Hello there", disconnect_after_chunks=0),
        text("recovered"),
    )
    session = make_session(model_server, tmp_path)
    result = await session.run(prompt="hi")

    assert result.status == "completed" and result.text == "recovered"
    assert len(model_server.requests) == 4


async def test_missing_usage_chunk_is_estimated(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("an answer of some length", usage=None))
    session = make_session(model_server, tmp_path)
    result = await session.run(prompt="hi")

    call = next(e for e in result.events if e.type == "api_call_complete")
    assert call.usage is not None and call.usage["estimated"] is True
    assert call.usage["input_tokens"] > 0 and call.usage["output_tokens"] > 0
    record = next(r for r in session.state.records if r["type"] == "model_call")
    assert record["estimated"] is True


async def test_request_options_pass_through_and_key_stays_out(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("{}"))
    fmt = {"type": "json_object"}
    session = make_session(
        model_server, tmp_path, reasoning_effort="low", service_tier="flex", response_format=fmt
    )
    result = await session.run(prompt="hi")

    body = model_server.requests[0].body
    assert body["reasoning_effort"] == "low" and body["service_tier"] == "flex"
    assert body["response_format"] == fmt and body["model"] == "gpt-5-mini"
    assert model_server.requests[0].headers["authorization"] == "Bearer sk-test-not-a-real-key"
    persisted = session.state.to_jsonl().decode() + json.dumps([e.to_dict() for e in result.events])
    assert "sk-test-not-a-real-key" not in persisted
    assert "sk-test" not in json.dumps(session.agent.config.to_dict())


async def test_unknown_model_costs_nothing_and_says_so_once(
    model_server: ScriptedModelServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_server.responder = lambda body: text("hi", usage=ScriptedUsage(1000, 1000))
    session = make_session(model_server, tmp_path, model="my-local-llama")
    with caplog.at_level(logging.WARNING, logger="rho_agent.pricing"):
        await session.run(prompt="one")
        await session.run(prompt="two")
    assert session.state.usage["cost_usd"] == 0.0
    assert session.state.usage["input_tokens"] == 2000
    warnings = [r for r in caplog.records if "my-local-llama" in r.getMessage()]
    assert len(warnings) == 1


async def test_observers_see_every_record_and_history_is_always_valid(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(
        ScriptedResponse(
            tool_calls=[
                ScriptedToolCall("probe", {"id": "a"}),
                ScriptedToolCall("probe", {"id": "b"}),
            ]
        ),
        text("done"),
    )
    session = make_session(model_server, tmp_path, probe=ProbeTool())
    seen: list[dict[str, Any]] = []

    class Watcher:
        def on_event(self, event: dict[str, Any]) -> None:
            assert "ts" in event and "type" in event
            assert_history_valid(session.state.messages)
            seen.append(event)

    session.state.add_observer(Watcher())
    await session.run(prompt="go")

    assert seen == session.state.records[1:]  # everything after the observer was attached
    tool_calls_seen = [tc["function"]["name"] for e in seen for tc in e.get("tool_calls") or []]
    assert tool_calls_seen == ["probe", "probe"]
    rebuilt = State.from_jsonl(session.state.to_jsonl())
    assert rebuilt.messages == session.state.messages and rebuilt.usage == session.state.usage


async def test_a_raising_observer_does_not_break_the_run(
    model_server: ScriptedModelServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_server.script(text("fine"))
    session = make_session(model_server, tmp_path)

    class Broken:
        def on_event(self, event: dict[str, Any]) -> None:
            raise RuntimeError("observer bug")

    session.state.add_observer(Broken())
    result = await session.run(prompt="hi")
    assert result.status == "completed"
    assert sum("observer" in r.getMessage() for r in caplog.records) == 1


async def test_sessions_from_one_agent_do_not_share_state(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: text("answer to " + body["messages"][-1]["content"])
    agent = Agent(AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path)))
    first, second = Session(agent), Session(agent)
    results = await asyncio.gather(first.run(prompt="A"), second.run(prompt="B"))

    assert [r.text for r in results] == ["answer to A", "answer to B"]
    assert first.state.get_user_messages() == ["A"] and second.state.get_user_messages() == ["B"]
    assert first.state.session_id != second.state.session_id


async def test_denied_approval_blocks_the_call(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(tool_call("probe", {"id": "x"}), text("understood"))
    probe = ProbeTool(requires_approval=True)
    session = make_session(model_server, tmp_path, probe=probe, auto_approve=False)
    asked: list[tuple[str, dict[str, Any]]] = []

    async def deny(name: str, args: dict[str, Any]) -> bool:
        asked.append((name, args))
        return False

    session.approval_callback = deny
    result = await session.run(prompt="go")

    assert result.status == "completed" and probe.calls == []
    assert asked == [("probe", {"id": "x"})]
    blocked = [e for e in result.events if e.type == "tool_blocked"]
    assert len(blocked) == 1 and blocked[0].tool_name == "probe"
    tool_message = next(m for m in session.state.messages if m["role"] == "tool")
    assert tool_message["content"].startswith("Blocked:")


async def test_a_callback_raising_permission_denied_gives_the_model_its_reason(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(tool_call("probe", {"id": "x"}), text("understood"))
    probe = ProbeTool(requires_approval=True)
    session = make_session(model_server, tmp_path, probe=probe, auto_approve=False)

    def deny(name: str, args: dict[str, Any]) -> bool:
        raise PermissionDenied("the on-call engineer said no")

    session.approval_callback = deny
    result = await session.run(prompt="go")

    assert result.status == "completed" and probe.calls == []
    [blocked] = [e for e in result.events if e.type == "tool_blocked"]
    assert blocked.tool_result == "the on-call engineer said no"
    tool_message = next(m for m in session.state.messages if m["role"] == "tool")
    assert tool_message["content"] == "Blocked: the on-call engineer said no"


async def test_auto_approve_never_asks(model_server: ScriptedModelServer, tmp_path: Path) -> None:
    model_server.script(tool_call("probe", {"id": "x"}), text("ok"))
    probe = ProbeTool(requires_approval=True)
    session = make_session(model_server, tmp_path, probe=probe)
    session.approval_callback = lambda name, args: pytest.fail("must not ask")
    assert (await session.run(prompt="go")).status == "completed"
    assert probe.calls == [{"id": "x"}]


async def test_interruption_pauses_and_a_later_run_continues(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(tool_call("probe", {"id": "x"}, id="c1"), text("finished the task"))
    probe = ProbeTool(requires_approval=True)
    session = make_session(model_server, tmp_path, probe=probe, auto_approve=False)

    def interrupt(name: str, args: dict[str, Any]) -> bool:
        raise ApprovalInterrupt("ask the human")

    session.approval_callback = interrupt
    first = await session.run(prompt="go")
    assert first.status == "interrupted" and first.events[-1].type == "interruption"
    assert probe.calls == []
    assert [c["call_id"] for c in session.state.pending_approvals] == ["c1"]
    assert_history_valid(session.state.messages)
    reloaded = State.from_jsonl(session.state.to_jsonl())
    assert reloaded.pending_approvals == session.state.pending_approvals

    session.approval_callback = lambda name, args: True
    second = await session.run()
    assert second.status == "completed" and second.text == "finished the task"
    assert probe.calls == [{"id": "x"}] and session.state.pending_approvals == []
    assert_history_valid(session.state.messages)


async def test_no_callback_interrupts(model_server: ScriptedModelServer, tmp_path: Path) -> None:
    model_server.script(tool_call("probe", {"id": "x"}))
    session = make_session(
        model_server, tmp_path, probe=ProbeTool(requires_approval=True), auto_approve=False
    )
    result = await session.run(prompt="go")
    assert result.status == "interrupted"


async def test_cancel_stops_a_streaming_call_and_the_session_goes_on(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("slow", delay=10), text("second run works"))
    session = make_session(model_server, tmp_path)
    run = asyncio.create_task(session.run(prompt="wait"))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await session.cancel()
    result = await asyncio.wait_for(run, 2)

    assert time.monotonic() - started < 1.0
    assert result.status == "cancelled" and result.events[-1].type == "cancelled"
    assert session.state.status == "cancelled"
    again = await session.run(prompt="again")
    assert again.status == "completed" and again.text == "second run works"
    assert_history_valid(session.state.messages)


async def test_cancel_kills_running_tools_and_keeps_history_valid(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(tool_call("probe", {"id": "long", "sleep": 30}))
    probe = ProbeTool()
    session = make_session(model_server, tmp_path, probe=probe)
    flag = {"stop": False}
    session.cancel_check = lambda: flag["stop"]
    run = asyncio.create_task(session.run(prompt="go"))
    await asyncio.sleep(0.3)
    flag["stop"] = True
    result = await asyncio.wait_for(run, 1.0)

    assert result.status == "cancelled" and probe.finished == []
    assert_history_valid(session.state.messages)
    tool_message = session.state.messages[-1]
    assert tool_message["role"] == "tool" and "cancelled" in tool_message["content"].lower()


async def test_one_task_polls_the_cancel_checks_of_every_running_session(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """A timer per session woke a worker with 500 jobs 5,000 times a second; one task per loop
    asks them all, stops only the session whose check says stop, and ends with the last one."""
    model_server.responder = lambda body: text("slow", delay=2.0)
    sessions = [make_session(model_server, tmp_path) for _ in range(20)]
    stop = {"s": False}
    for index, session in enumerate(sessions):
        session.cancel_check = (lambda: stop["s"]) if index == 7 else (lambda: False)
    runs = [asyncio.create_task(session.run(prompt="wait")) for session in sessions]
    await asyncio.sleep(0.3)
    pollers = [t for t in asyncio.all_tasks() if t.get_name() == "rho-cancel-poll"]
    assert len(pollers) == 1
    assert len(asyncio.all_tasks()) <= 2 * 20 + 2, "each run's two tasks, the test's, the poll"
    stop["s"] = True
    cancelled = await asyncio.wait_for(runs[7], 1.5)  # in its stream: the model answers at 2 s
    assert cancelled.status == "cancelled"
    results = await asyncio.gather(*runs)
    assert [r.status for r in results].count("completed") == 19
    await asyncio.sleep(0)
    assert pollers[0].done(), "the poll task ends with the last session it watched"


async def test_a_run_started_as_the_last_one_ends_is_still_polled_for_cancel(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """A second run started from the first one's last event (before the first run's own end
    resumes) is watched on its own: the first run's end does not stop polling for it."""
    model_server.script(text("first"), text("slow", delay=10))
    session = make_session(model_server, tmp_path)
    stop = {"s": False}
    session.cancel_check = lambda: stop["s"]
    ended = asyncio.Event()

    async def next_run() -> RunResult:
        await ended.wait()
        return await session.run(prompt="again")  # starts before the first run's end resumes

    second = asyncio.create_task(next_run())

    def on_event(event: AgentEvent) -> None:
        if event.type == "turn_complete":
            ended.set()

    await session.run(prompt="go", on_event=on_event)
    await asyncio.sleep(0.3)  # the second run is in its slow model stream
    stop["s"] = True
    result = await asyncio.wait_for(second, 1.0)
    assert result.status == "cancelled"


async def test_resume_run_skips_tool_calls_that_already_finished(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    calls = [
        ScriptedToolCall("probe", {"id": "done"}, id="c1"),
        ScriptedToolCall("probe", {"id": "todo", "sleep": 0.2}, id="c2"),
    ]
    model_server.script(ScriptedResponse(tool_calls=calls))
    probe = ProbeTool()
    session = make_session(model_server, tmp_path, probe=probe)

    model_server.script(text("first session's answer"))
    await session.run(prompt="go")
    # Simulate a crash: keep the trace only up to the first finished tool message.
    records = session.state.records
    cut = next(
        i for i, r in enumerate(records) if r["type"] == "message" and r.get("tool_call_id") == "c1"
    )
    prefix = records[: cut + 1]

    model_server.reset()
    model_server.script(text("resumed and done"))
    state = State.from_records(prefix)
    assert state.has_unfinished_run and [c["id"] for c in state.unanswered_tool_calls()] == ["c2"]
    probe2 = ProbeTool()
    resumed = Session(session.agent, state=state)
    resumed.agent.registry.register(probe2)
    result = await resumed.resume_run()

    assert result.status == "completed" and result.text == "resumed and done"
    assert probe2.calls == [{"id": "todo", "sleep": 0.2}]
    assert resumed.state.run_count == 1
    assert_history_valid(resumed.state.messages)


async def test_manual_compaction_shrinks_history(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: text("reply " + "x" * 400)
    session = make_session(model_server, tmp_path)
    for prompt in ["first question", "second question", "third question"]:
        await session.run(prompt=prompt)
    model_server.script(text("SUMMARY: asked three questions"))
    result = await session.compact()

    assert result.trigger == "manual" and result.summary == "SUMMARY: asked three questions"
    assert result.tokens_after < result.tokens_before
    messages = session.state.messages
    assert messages[0]["role"] == "system" and "SUMMARY" in messages[1]["content"]
    assert session.state.get_user_messages()[-2:] == ["second question", "third question"]
    assert State.from_jsonl(session.state.to_jsonl()).messages == messages


async def test_auto_compaction_fires_once_and_keeps_recent_exchange(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    def respond(body: dict[str, Any]) -> ScriptedResponse:
        system = body["messages"][0]["content"]
        if "compress" in system:
            return text("SUMMARY")
        return text("long reply " + "y" * 2000)

    model_server.responder = respond
    session = make_session(model_server, tmp_path)
    tools = compaction.count_tokens([], session.agent.registry.schemas())
    # the history may reach 1200 tokens before compaction: 80% of the window, tools included
    session.context_window = int((1200 + tools) / compaction.AUTO_COMPACT_FRACTION)
    for prompt in ["q1", "q2", "q3"]:
        await session.run(prompt=prompt)
    result = await session.run(prompt="q4")

    types = [e.type for e in result.events]
    assert types.count("compact_start") == 1 and types.count("compact_end") == 1
    assert session.state.get_user_messages()[-2:] == ["q3", "q4"]
    assert_history_valid(session.state.messages)


async def test_failed_summary_leaves_history_untouched(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: text("reply " + "z" * 300)
    session = make_session(model_server, tmp_path)
    for prompt in ["a", "b", "c"]:
        await session.run(prompt=prompt)
    before = list(session.state.messages)
    model_server.responder = None
    model_server.script(error(400, "summary refused"))
    with pytest.raises(Exception, match="summary refused"):
        await session.compact()
    assert session.state.messages == before


async def test_a_closed_session_refuses_to_run(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("one"))
    session = make_session(model_server, tmp_path)
    await session.run(prompt="first")
    await session.close()
    with pytest.raises(SessionError, match="closed"):
        await session.run(prompt="second")


async def test_resume_run_recovers_a_prompt_that_was_never_recorded(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("first answer"))
    session = make_session(model_server, tmp_path)
    await session.run(prompt="first")
    records = session.state.records
    # The process died right after recording the second run's start.
    crashed = [*records, {**records[-1], "type": "run_start", "run": 2, "prompt": "second"}]
    state = State.from_records(crashed)
    assert state.has_unfinished_run
    model_server.script(text("second answer"))
    result = await Session(session.agent, state=state).resume_run()

    assert result.status == "completed" and result.text == "second answer"
    assert state.get_user_messages() == ["first", "second"]
    assert model_server.requests[-1].body["messages"][-1] == {"role": "user", "content": "second"}
