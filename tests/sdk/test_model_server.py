"""The scripted model server, driven by the real openai client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from rho_agent.testing import (
    ScriptedModelServer,
    ScriptedResponse,
    ScriptedToolCall,
    ScriptedUsage,
    behaviour,
    error,
    text,
    tool_call,
)

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture
async def client(server: ScriptedModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c:
        yield c


async def stream(
    client: openai.AsyncOpenAI, messages: list[ChatCompletionMessageParam] = USER, **options: Any
) -> list[ChatCompletionChunk]:
    response = await client.chat.completions.create(
        model="test-model", messages=messages, stream=True, **options
    )
    return [chunk async for chunk in response]


async def test_text_streams_in_several_deltas(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script(text("hello scripted world", text_chunk_size=4))
    chunks = await stream(client)
    contents = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert contents == ["hell", "o sc", "ript", "ed w", "orld"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 5 + ["stop"]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].model == "test-model"
    assert len({c.id for c in chunks}) == 1


async def test_tool_call_arguments_split_across_chunks_reassemble(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    arguments = {"command": "ls -la /tmp && echo done"}
    server.script(tool_call("bash", arguments, arguments_chunk_size=5))
    chunks = await stream(client)
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    assert len(deltas) > 3
    first, rest = deltas[0], deltas[1:]
    assert first.id and first.function and first.function.name == "bash"
    assert all(d.id is None and d.function and d.function.name is None for d in rest)
    assert all(d.index == 0 for d in deltas)
    joined = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(joined) == arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_parallel_tool_calls_have_their_own_index_and_id(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    calls = [
        ScriptedToolCall("read", {"path": "a.txt"}, id="call_custom"),
        ScriptedToolCall("read", '{"path": "b.txt"'),  # invalid JSON on purpose
    ]
    server.script(ScriptedResponse(text="Reading both.", tool_calls=calls))
    chunks = await stream(client)
    ids: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.id:
                ids[delta.index] = delta.id
            assert delta.function is not None
            arguments[delta.index] = arguments.get(delta.index, "") + (
                delta.function.arguments or ""
            )
    assert ids[0] == "call_custom" and ids[1] and ids[1] != "call_custom"
    assert json.loads(arguments[0]) == {"path": "a.txt"}
    assert arguments[1] == '{"path": "b.txt"'
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Reading both."


async def test_usage_chunk_comes_last_when_asked_for(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    usage = ScriptedUsage(
        prompt_tokens=100, completion_tokens=20, cached_tokens=40, reasoning_tokens=5
    )
    server.script(text("a", usage=usage), text("b"))
    chunks = await stream(client, stream_options={"include_usage": True})
    assert chunks[-1].choices == []
    got = chunks[-1].usage
    assert got is not None and (got.prompt_tokens, got.completion_tokens) == (100, 20)
    assert got.total_tokens == 120
    assert got.prompt_tokens_details and got.prompt_tokens_details.cached_tokens == 40
    assert got.completion_tokens_details and got.completion_tokens_details.reasoning_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])
    auto = (await stream(client, stream_options={"include_usage": True}))[-1].usage
    assert auto is not None and auto.prompt_tokens > 0 and auto.completion_tokens > 0


async def test_no_usage_chunk_unless_asked_or_when_scripted_none(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script(text("a"), text("b", usage=None))
    assert all(c.usage is None and c.choices for c in await stream(client))
    chunks = await stream(client, stream_options={"include_usage": True})
    assert all(c.usage is None and c.choices for c in chunks)


async def test_non_streaming_answer(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script(text("plain"), tool_call("bash", {"command": "ls"}, id="call_1"))
    answer = await client.chat.completions.create(model="m", messages=USER)
    assert answer.choices[0].message.content == "plain"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.total_tokens > 0
    call_answer = await client.chat.completions.create(model="m", messages=USER)
    message = call_answer.choices[0].message
    assert message.content is None and message.tool_calls
    call = message.tool_calls[0]
    assert call.id == "call_1" and call.type == "function"
    assert call.function.name == "bash" and json.loads(call.function.arguments) == {"command": "ls"}


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_error_statuses_raise_the_matching_openai_exception(
    server: ScriptedModelServer,
    client: openai.AsyncOpenAI,
    status: int,
    exception: type[openai.APIStatusError],
) -> None:
    server.script(error(status, "scripted failure"))
    with pytest.raises(exception) as caught:
        await stream(client)
    assert caught.value.status_code == status
    assert caught.value.message.endswith("scripted failure")
    assert isinstance(caught.value.body, dict) and caught.value.body["type"]


async def test_error_code_and_headers_reach_the_client(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script(error(400, code="context_length_exceeded", headers={"x-test": "yes"}))
    with pytest.raises(openai.BadRequestError) as caught:
        await stream(client)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.response.headers["x-test"] == "yes"


async def test_delay_before_first_byte_and_between_chunks(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script(text("x", delay=0.3), text("abcd", text_chunk_size=1, chunk_delay=0.05))
    started = time.monotonic()
    await stream(client)
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    chunks = await stream(client)
    assert time.monotonic() - started >= 4 * 0.05
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "abcd"


async def test_disconnect_mid_stream_raises_connection_error(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script(text("abcdef", text_chunk_size=1, disconnect_after_chunks=2))
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        response = await client.chat.completions.create(model="m", messages=USER, stream=True)
        async for chunk in response:
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["a", "b"]


async def test_requests_are_recorded_and_reset_clears_them(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script(text("one"), text("two"), text("three"))
    await stream(client, messages=[{"role": "user", "content": "first"}])
    assert server.pending == 2
    [recorded] = server.requests
    assert recorded.path == "/v1/chat/completions"
    assert recorded.body["messages"] == [{"role": "user", "content": "first"}]
    assert recorded.body["stream"] is True
    assert recorded.headers["authorization"] == "Bearer test"
    assert recorded.timestamp <= time.time()
    server.reset()
    assert server.requests == [] and server.pending == 0


async def test_exhausted_script_fails_loudly_without_retries(
    server: ScriptedModelServer,
) -> None:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=2) as c:
        with pytest.raises(openai.InternalServerError, match="script exhausted"):
            await stream(c)
    assert len(server.requests) == 1  # the client was told not to retry


async def test_responder_answers_once_the_queue_is_empty(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    async def respond(body: dict[str, Any]) -> ScriptedResponse:
        await asyncio.sleep(0)
        return text(f"{len(body['messages'])} messages")

    server.responder = respond
    server.script(text("queued first"))
    answers = [
        "".join(c.choices[0].delta.content or "" for c in await stream(client)) for _ in "ab"
    ]
    assert answers == ["queued first", "1 messages"]
    server.responder = lambda body: text("sync works")
    assert (await stream(client))[0].choices[0].delta.content == "sync works"


async def test_a_failing_responder_is_reported(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    def broken(body: dict[str, Any]) -> ScriptedResponse:
        raise KeyError("no_such_field")

    server.responder = broken
    with pytest.raises(openai.InternalServerError, match="responder raised KeyError"):
        await stream(client)


async def test_raw_streaming_response_lines_are_openai_sse(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script(text("hi"))
    async with client.chat.completions.with_streaming_response.create(
        model="m",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": "hi"}
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-1]["choices"] == []
    assert set(payloads[-1]["usage"]) >= {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    }


async def test_models_endpoint(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [model.id for model in models.data] == ["scripted-model"]


def test_sync_client_and_lifecycle() -> None:
    server = ScriptedModelServer(responder=lambda body: text("sync"))
    with pytest.raises(RuntimeError, match="start"):
        _ = server.base_url
    with server, openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0) as c:
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
        answer = c.chat.completions.create(model="m", messages=USER)
        assert answer.choices[0].message.content == "sync"
    server.stop()  # twice is fine


async def test_many_concurrent_delayed_streams_overlap(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.responder = behaviour("echo", delay=0.5)
    started = time.monotonic()
    results = await asyncio.gather(*(stream(client) for _ in range(100)))
    assert time.monotonic() - started < 5  # run one after another they would take 50 s
    assert all(r[0].choices[0].delta.content == "Echo: hi" for r in results)


def test_scripted_response_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="error_status"):
        ScriptedResponse(error_status=200)
    with pytest.raises(ValueError, match="text_chunk_size"):
        ScriptedResponse(text_chunk_size=0)
    with pytest.raises(ValueError, match="delay"):
        ScriptedResponse(delay=-1)
    with pytest.raises(TypeError, match="ScriptedResponse"):
        ScriptedModelServer().script("hi")  # type: ignore[arg-type]


def test_echo_behaviour() -> None:
    echo = behaviour("echo")
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "yo"}]}
    assert echo(body) == text("Echo: yo")
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "ab"}]}]}
    assert echo(parts) == text("Echo: ab")


def test_tool_then_answer_behaviour() -> None:
    respond = behaviour("tool-then-answer", delay=0.25)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "look around"}]
    first = respond({"messages": messages})
    assert isinstance(first, ScriptedResponse) and first.delay == 0.25
    assert [(c.name, c.arguments) for c in first.tool_calls] == [("list", {"path": "."})]
    messages.append({"role": "tool", "tool_call_id": "c", "content": "a.txt\nb.txt"})
    second = respond({"messages": messages})
    assert isinstance(second, ScriptedResponse) and second.text == "Done: a.txt"


def test_noop_tools_behaviour_counts_tool_results_in_the_current_run() -> None:
    respond = behaviour("noop-tools:2")
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    answers = []
    for _ in range(3):
        answer = respond({"messages": messages})
        assert isinstance(answer, ScriptedResponse)
        answers.append(answer)
        messages.append({"role": "tool", "tool_call_id": "c", "content": ""})
    assert [a.tool_calls[0].name if a.tool_calls else a.text for a in answers] == [
        "noop",
        "noop",
        "done",
    ]
    assert answers[0].tool_calls[0].arguments == {}
    messages.append({"role": "user", "content": "again"})
    again = respond({"messages": messages})
    assert isinstance(again, ScriptedResponse) and again.tool_calls


def test_unknown_behaviour_names_the_choices() -> None:
    with pytest.raises(ValueError, match="echo, tool-then-answer"):
        behaviour("noop-tools:many")


async def test_subprocess_mode_serves_a_behaviour() -> None:
    with ScriptedModelServer.spawn("echo", delay=0.1) as spawned:
        assert spawned.base_url.startswith("http://127.0.0.1:")
        async with openai.AsyncOpenAI(base_url=spawned.base_url, api_key="t", max_retries=0) as c:
            started = time.monotonic()
            chunks = await stream(c, messages=[{"role": "user", "content": "ping"}])
            assert time.monotonic() - started >= 0.1
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "Echo: ping"
    assert spawned.process.poll() is not None


def test_subprocess_mode_reports_a_bad_behaviour() -> None:
    with pytest.raises(RuntimeError, match="exited with code 2"):
        ScriptedModelServer.spawn("no-such-behaviour", timeout=30)


def test_a_body_that_is_not_json_gets_a_400_naming_it(server: ScriptedModelServer) -> None:
    import urllib.error
    import urllib.request

    def post(body: bytes) -> tuple[int, str]:
        request = urllib.request.Request(
            f"{server.base_url}/chat/completions", data=body, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    status, answer = post(b'{"model": "m", "messages": [')
    assert status == 400 and "request body is not valid JSON" in answer
    # Python's JSON reader takes NaN (orjson alone would not): such a body is read as before.
    server.script(text("fine"))
    status, answer = post(b'{"model": "m", "temperature": NaN, "messages": []}')
    assert status == 200 and "fine" in answer
    assert server.requests[-1].body["messages"] == []
