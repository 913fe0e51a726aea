"""The baselines: the same conversations driven by hand, without rho-agent's session loop.

``raw_conversation`` is what an engineer writes with the stock ``openai`` client (pydantic chunk
objects, ``async for chunk in await client.chat.completions.create(stream=True, ...)``).
``bare_conversation`` uses rho-agent's own model client without the session loop, to show what
the loop (state, trace, tools, events) costs on its own. Both build their messages in the exact
shape ``Session`` records them, so the requests on the wire are the same and the final histories
can be compared.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import httpx2
import openai

from rho_agent import Session
from rho_agent.model.base import ModelRequest
from rho_agent.model.openai_client import OpenAIModelClient

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolUnionParam

MAX_TURNS = 100
TOOL_ANSWER = "ok"
CONNECT_TIMEOUT = 120.0
_CALL_ID = re.compile(r"call_scripted_\d+_\d+")


def raw_client(base_url: str, connections: int | None = None) -> openai.AsyncOpenAI:
    """The stock client. For big runs, ``connections`` puts it on ``DefaultAioHttpClient``
    (openai's own advice for high concurrency, and the SDK's transport) with its pool raised to
    ``connections`` and a generous connect timeout, so only the client code differs."""
    http_client = None
    if connections is not None:
        limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
        timeout = httpx2.Timeout(timeout=600, connect=CONNECT_TIMEOUT)
        http_client = openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
    return openai.AsyncOpenAI(api_key="benchmark", base_url=base_url, http_client=http_client)


def opening(system_prompt: str, prompt: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]


async def raw_conversation(
    client: openai.AsyncOpenAI,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
) -> int:
    """Drive one conversation to its final answer; extends ``messages``; returns model calls."""
    for turn in range(1, MAX_TURNS + 1):
        stream = await client.chat.completions.create(
            model=model,
            messages=cast("list[ChatCompletionMessageParam]", messages),
            tools=cast("list[ChatCompletionToolUnionParam]", tools),
            stream=True,
            stream_options={"include_usage": True},
        )
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        async for chunk in stream:
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    text.append(delta.content)
                for call in delta.tool_calls or ():
                    entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    entry["id"] = call.id or entry["id"]
                    if call.function is not None:
                        entry["name"] += call.function.name or ""
                        entry["arguments"] += call.function.arguments or ""
        if _record_turn(messages, "".join(text), list(calls.values())):
            return turn
    raise RuntimeError(f"the raw conversation did not end within {MAX_TURNS} model calls")


async def bare_conversation(
    client: OpenAIModelClient,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
) -> int:
    """The same loop over rho-agent's ``OpenAIModelClient`` (no Session, state or trace)."""
    for turn in range(1, MAX_TURNS + 1):
        result = await client.stream(ModelRequest(model=model, messages=messages, tools=tools))
        calls = [
            {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            for c in result.tool_calls
        ]
        if _record_turn(messages, result.text, calls):
            return turn
    raise RuntimeError(f"the bare conversation did not end within {MAX_TURNS} model calls")


def _record_turn(messages: list[dict[str, Any]], text: str, calls: list[dict[str, str]]) -> bool:
    """Append the assistant message (and a no-op result per call); True if it was the answer."""
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if not calls:
        messages.append(message)
        return True
    message["tool_calls"] = [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for call in calls
    ]
    messages.append(message)
    messages.extend(
        {"role": "tool", "tool_call_id": call["id"], "content": TOOL_ANSWER} for call in calls
    )
    return False


def model_calls(session: Session) -> int:
    """How many model calls the session's trace records."""
    return sum(1 for record in session.state.records if record["type"] == "model_call")


def normalised(messages: list[dict[str, Any]]) -> str:
    """A history with the server's per-request call ids blanked, for equality checks."""
    return _CALL_ID.sub("call_id", repr(messages))


def check_same_history(
    session_messages: list[dict[str, Any]], baseline_messages: list[dict[str, Any]]
) -> None:
    """Fail the benchmark if the SDK's history differs from the hand-driven one."""
    if normalised(session_messages) != normalised(baseline_messages):
        raise AssertionError(
            "the session's history differs from the baseline's for the same conversation:\n"
            f"session:  {normalised(session_messages)[:400]}\n"
            f"baseline: {normalised(baseline_messages)[:400]}"
        )
