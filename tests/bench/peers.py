"""The agent SDKs users compare rho-agent with, driving the same conversation as benchmarks 1-2.

Each peer gets the same system prompt, the same user prompt and the same ``noop`` tool (answering
``ok``), talks to the same scripted server, streams its model calls (both peers can), and uses
its own recommended client set-up: openai-agents a stock ``AsyncOpenAI`` client behind
``OpenAIChatCompletionsModel`` (the scripted server speaks Chat Completions) with tracing off,
pydantic-ai an ``OpenAIChatModel`` on an ``OpenAIProvider`` (its shared cached HTTP client).

The peers come from the optional ``bench`` extra (``pip install -e '.[bench]'``); without it
``available()`` names what is missing and their rows are skipped with that note.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

PEERS = ("openai-agents", "pydantic-ai")
_MODULES = {"openai-agents": "agents", "pydantic-ai": "pydantic_ai"}
INSTALL = "not installed: pip install -e '.[bench]'"
MAX_TURNS = 100

Converse = Callable[[str], Awaitable[int]]
"""Runs one conversation from a user prompt and returns its model calls."""


def available(peer: str) -> bool:
    return importlib.util.find_spec(_MODULES[peer]) is not None


def conversation(peer: str, base_url: str, model: str, system_prompt: str) -> Converse:
    """A driver for ``peer`` (built once, like a user's long-lived agent)."""
    if peer == "openai-agents":
        return _openai_agents(base_url, model, system_prompt)
    if peer == "pydantic-ai":
        return _pydantic_ai(base_url, model, system_prompt)
    raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


def _openai_agents(base_url: str, model: str, system_prompt: str) -> Converse:
    import agents
    import openai

    agents.set_tracing_disabled(True)

    @agents.function_tool
    def noop() -> str:
        """Does nothing and answers ok."""
        return "ok"

    client = openai.AsyncOpenAI(api_key="benchmark", base_url=base_url)
    agent = agents.Agent(
        name="bench",
        instructions=system_prompt,
        tools=[noop],
        model=agents.OpenAIChatCompletionsModel(model=model, openai_client=client),
    )

    async def converse(prompt: str) -> int:
        result = agents.Runner.run_streamed(agent, prompt, max_turns=MAX_TURNS)
        async for _ in result.stream_events():
            pass
        return len(result.raw_responses)

    return converse


def _pydantic_ai(base_url: str, model: str, system_prompt: str) -> Converse:
    import pydantic_ai
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    # The benchmark's model name is only a label for the scripted server: no retirement notice.
    warnings.filterwarnings("ignore", message=r"Model .* is deprecated by its provider")
    chat = OpenAIChatModel(model, provider=OpenAIProvider(base_url=base_url, api_key="benchmark"))
    agent: Any = pydantic_ai.Agent(chat, instructions=system_prompt)

    @agent.tool_plain
    def noop() -> str:
        """Does nothing and answers ok."""
        return "ok"

    async def drain(context: Any, events: Any) -> None:
        async for _ in events:
            pass

    async def converse(prompt: str) -> int:
        result = await agent.run(prompt, event_stream_handler=drain)
        return int(result.usage.requests)

    return converse
