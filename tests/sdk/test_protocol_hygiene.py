"""What rho-agent sends and reads back stays valid where real servers are less forgiving."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest

from rho_agent import State, TraceError
from rho_agent.compaction import AUTO_COMPACT_FRACTION, count_tokens
from rho_agent.testing import ScriptedModelServer, text
from rho_agent.trace import encode_record
from tests.sdk.helpers import make_session


async def test_an_empty_answer_is_sent_back_as_empty_text_never_null(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text(""), text("second"))
    session = make_session(model_server, tmp_path)
    await session.run(prompt="first")
    await session.run(prompt="again")

    sent = model_server.requests[1].body["messages"]
    assert sent[2] == {"role": "assistant", "content": ""}
    for message in sent:
        assert message.get("content") is not None or message.get("tool_calls"), message
    record = next(r for r in session.state.records if r.get("role") == "assistant")
    assert record["content"] == ""


async def test_an_old_trace_with_a_null_answer_is_sent_as_empty_text(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    old = [
        {"v": 1, "type": "session_start", "ts": "t", "session_id": "s-1", "model": "m"},
        {"v": 1, "type": "message", "ts": "t", "role": "system", "content": "sys"},
        {"v": 1, "type": "message", "ts": "t", "role": "user", "content": "first"},
        {"v": 1, "type": "message", "ts": "t", "role": "assistant", "content": None},
    ]
    state = State.from_jsonl(b"".join(encode_record(record) for record in old))
    model_server.script(text("ok"))
    session = make_session(model_server, tmp_path)
    session.state = state
    await session.run(prompt="again")

    assert model_server.requests[0].body["messages"][2] == {"role": "assistant", "content": ""}


async def test_the_context_estimate_counts_the_tool_definitions(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """The tools alone fill the compaction threshold, so the second run compacts first."""
    model_server.responder = lambda body: text("answer")
    session = make_session(model_server, tmp_path)
    tools = session.agent.registry.schemas()
    await session.run(prompt="first")
    messages = session.state.messages
    session.context_window = int(count_tokens([], tools) / AUTO_COMPACT_FRACTION)
    assert count_tokens(messages, []) < AUTO_COMPACT_FRACTION * session.context_window
    result = await session.run(prompt="second")

    assert [e.type for e in result.events].count("compact_start") == 1
    assert "tools" not in model_server.requests[1].body  # the summary call


async def test_an_estimated_usage_counts_the_tool_definitions(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("hi", usage=None))
    session = make_session(model_server, tmp_path)
    result = await session.run(prompt="hi")

    call = next(e for e in result.events if e.type == "api_call_complete")
    body = model_server.requests[0].body
    assert call.usage is not None and call.usage["estimated"]
    assert call.usage["input_tokens"] >= count_tokens(body["messages"], body["tools"]) > 1000


def test_from_jsonl_reads_a_trace_from_its_path(tmp_path: Path) -> None:
    state = State("s-1")
    state.append("session_start", session_id="s-1", model="m")
    state.append("message", role="user", content="hello")
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(state.to_jsonl())

    for source in (str(trace), trace):
        loaded = State.from_jsonl(source)
        assert loaded.session_id == "s-1" and loaded.get_user_messages() == ["hello"]


def test_from_jsonl_on_a_missing_file_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "trace.jsonl"
    for source in (str(missing), missing):
        with pytest.raises(TraceError, match=re.escape(str(missing))):
            State.from_jsonl(source)


async def test_the_scripted_server_can_end_a_stream_without_done(
    model_server: ScriptedModelServer,
) -> None:
    """What a server that hangs up mid-answer looks like to the stock client: a clean end."""
    model_server.script(text("abcdef", text_chunk_size=1, end_after_chunks=3))
    async with openai.AsyncOpenAI(base_url=model_server.base_url, api_key="k") as client:
        response = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in response]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "abc"
    assert all(c.choices[0].finish_reason is None for c in chunks)


async def test_the_scripted_server_can_send_usage_in_the_last_choice_chunk(
    model_server: ScriptedModelServer,
) -> None:
    model_server.script(text("hi", null_first_delta=True, usage_in_last_choice=True))
    async with openai.AsyncOpenAI(base_url=model_server.base_url, api_key="k") as client:
        response = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in response]
    first, last = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content is None
    assert last.choices[0].finish_reason == "stop" and last.usage is not None
    assert all(chunk.choices for chunk in chunks)
