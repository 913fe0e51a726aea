"""Model streams are complete or retried, through the real openai client and the scripted server.

A stream is whole only with its terminal event: a body that stops early is retried, and once the
retries are spent the run fails with its reason, keeping the text it had shown, marked partial.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rho_agent import ConfigError, RunError, RunResult
from rho_agent.model import _retry
from rho_agent.testing import ScriptedModelServer, ScriptedUsage, error, text, tool_call
from tests.sdk.helpers import ProbeTool, assert_history_valid, make_session

ATTEMPTS = 3  # OpenAIModelClient's default: the first try and two stream retries


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retry, "INITIAL_RETRY_DELAY", 0.01)


async def test_a_stream_cut_short_is_an_error_with_its_partial_text_kept(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    cut = text("Hello world, here is the answer", text_chunk_size=4, end_after_chunks=2)
    model_server.script(*[cut] * ATTEMPTS)
    session = make_session(model_server, tmp_path)
    result = await session.run(prompt="hi")

    assert result.status == "error" and len(model_server.requests) == ATTEMPTS
    assert result.error is not None and result.error.type == "ModelError"
    assert "broke off before its end" in result.error.message and result.error.partial
    assert result.text == "Hello wo"
    assert "".join(e.content or "" for e in result.events if e.type == "text") == "Hello wo"
    [partial] = [r for r in session.state.records if r.get("partial")]
    assert partial["role"] == "assistant" and partial["content"] == "Hello wo"
    assert session.state.messages[-1] == {"role": "assistant", "content": "Hello wo"}
    assert session.state.last_error == result.error.message


async def test_truncated_tool_call_arguments_never_reach_the_tool(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    cut = tool_call("probe", {"id": "rm -rf build"}, arguments_chunk_size=4, end_after_chunks=3)
    model_server.script(*[cut] * ATTEMPTS)
    probe = ProbeTool()
    session = make_session(model_server, tmp_path, probe=probe)
    result = await session.run(prompt="go")

    assert probe.calls == []
    assert result.status == "error" and result.error is not None
    assert not any(r["type"] == "tool_start" for r in session.state.records)
    assert_history_valid(session.state.messages)


async def test_a_reset_mid_tool_call_arguments_is_retried_and_the_tool_gets_them_whole(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    arguments = {"id": "the whole argument string"}
    model_server.script(
        tool_call("probe", arguments, arguments_chunk_size=4, disconnect_after_chunks=4),
        tool_call("probe", arguments, arguments_chunk_size=4),
        text("done"),
    )
    probe = ProbeTool()
    session = make_session(model_server, tmp_path, probe=probe)
    result = await session.run(prompt="go")

    assert result.status == "completed" and result.error is None and result.text == "done"
    assert probe.calls == [arguments]
    assert len(model_server.requests) == 3


async def test_a_stream_cut_after_text_is_retried_without_showing_the_text_twice(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    answer = "Hello world, here is the answer"
    model_server.script(text(answer, text_chunk_size=4, end_after_chunks=3), text(answer))
    session = make_session(model_server, tmp_path)
    result = await session.run(prompt="hi")

    assert result.status == "completed" and result.text == answer
    assert "".join(e.content or "" for e in result.events if e.type == "text") == answer
    assert not any(r.get("partial") for r in session.state.records)
    assert len(model_server.requests) == 2


async def test_a_finish_reason_without_done_is_a_whole_answer(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """The answer chunk and the finish chunk arrive; the usage chunk and [DONE] do not."""
    model_server.script(text("complete", end_after_chunks=2))
    session = make_session(model_server, tmp_path)
    result = await session.run(prompt="hi")

    assert result.status == "completed" and result.text == "complete"
    assert len(model_server.requests) == 1


async def test_a_refused_request_says_why_in_the_result(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(error(400, "the model does not exist: gpt-nope"))
    result = await make_session(model_server, tmp_path).run(prompt="hi")

    assert result.error == RunError(
        "ModelError", "model API error 400: the model does not exist: gpt-nope"
    )
    assert result.events[-1].content == result.error.message
    assert RunResult.from_dict(json.loads(json.dumps(result.to_dict()))).error == result.error


async def test_max_turns_says_why_in_the_result(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: tool_call("probe", {"id": "again"})
    session = make_session(model_server, tmp_path, probe=ProbeTool())
    session.max_turns = 2
    result = await session.run(prompt="loop")

    assert result.status == "max_turns" and result.error is not None
    assert result.error.type == "max_turns" and "max_turns=2" in result.error.message


def test_a_broken_stream_waits_as_long_as_a_refused_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The openai package's backoff without Retry-After: 0.5 s doubling to 8 s, less <= 25%."""
    monkeypatch.setattr(_retry, "INITIAL_RETRY_DELAY", 0.5)
    for retries_done, full in [(0, 0.5), (1, 1.0), (2, 2.0), (6, 8.0)]:
        assert 0.75 * full <= _retry.retry_delay(retries_done) <= full


async def test_usage_inside_the_last_choice_chunk_is_read(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("hi", usage=ScriptedUsage(70, 3), usage_in_last_choice=True))
    result = await make_session(model_server, tmp_path).run(prompt="hi")

    call = next(e for e in result.events if e.type == "api_call_complete")
    assert call.usage is not None and not call.usage["estimated"]
    assert (call.usage["input_tokens"], call.usage["output_tokens"]) == (70, 3)


async def test_a_null_first_delta_and_an_empty_choices_usage_chunk_are_read(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("hello there", null_first_delta=True, usage=ScriptedUsage(9, 2)))
    result = await make_session(model_server, tmp_path).run(prompt="hi")

    assert result.status == "completed" and result.text == "hello there"
    call = next(e for e in result.events if e.type == "api_call_complete")
    assert call.usage is not None and call.usage["input_tokens"] == 9


async def test_tool_call_ids_of_any_shape_are_answered_with_the_same_id(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    call_id = "Xk2bQ9mTzP4rW7vN1cA8sD3fG6hJ0lE5"  # llama.cpp's shape: no "call_" prefix
    model_server.script(tool_call("probe", {"id": "a"}, id=call_id), text("done"))
    probe = ProbeTool()
    session = make_session(model_server, tmp_path, probe=probe)
    result = await session.run(prompt="go")

    assert result.status == "completed" and probe.calls == [{"id": "a"}]
    sent = model_server.requests[1].body["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == call_id
    assert sent[-1] == {"role": "tool", "tool_call_id": call_id, "content": "probe a"}


async def test_a_server_that_never_answers_is_ended_by_the_per_call_timeout(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """``extras.request_timeout_s`` ends a hanging call (and its retries) long before 600 s."""
    for _ in range(4):  # the first attempt and the client's 3 retries all hang
        model_server.script(text("too late", delay=30))
    session = make_session(model_server, tmp_path, extras={"request_timeout_s": 0.5})
    started = time.monotonic()
    result = await session.run(prompt="hello")
    assert result.status == "error"
    assert result.error is not None and "timed out" in result.error.message.lower()
    assert time.monotonic() - started < 20


async def test_a_server_that_answers_within_the_per_call_timeout_is_read(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("in time", delay=0.2))
    session = make_session(model_server, tmp_path, extras={"request_timeout_s": 5})
    result = await session.run(prompt="hello")
    assert (result.status, result.text) == ("completed", "in time")


@pytest.mark.parametrize("value", [0, -1, "10", True])
def test_a_bad_per_call_timeout_names_the_setting(
    model_server: ScriptedModelServer, tmp_path: Path, value: object
) -> None:
    with pytest.raises(ConfigError, match=r"extras\.request_timeout_s"):
        make_session(model_server, tmp_path, extras={"request_timeout_s": value})
