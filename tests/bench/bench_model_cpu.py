"""Benchmark 8: model-call CPU cost, in streamed model turns per second per process.

The server answers at once (no delay), so the process is CPU-bound: the figure is how many turns
``Session.run`` drives (trace written, tools run, state kept) against the stock ``openai`` client
driving the same requests. Both keep CONCURRENCY conversations in flight.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import openai

from baseline import (
    bare_conversation,
    check_same_history,
    opening,
    raw_client,
    raw_conversation,
)
from harness import (
    MODEL,
    Benchmark,
    Row,
    Settings,
    Stopwatch,
    make_agent,
    median,
    release_clients,
    session_conversation,
    spawned_server,
    spread,
)

from rho_agent import Agent
from rho_agent.model.openai_client import OpenAIModelClient

TOOL_TURNS = 3
"""Each conversation: three no-op tool turns, then the answer (four model calls)."""
CONCURRENCY = 32
PROMPT = "Call noop a few times, then say done."
TARGET_RATIO = 2.0

Drive = Callable[[str], Awaitable[int]]
"""Runs one conversation (given a trace file name) and returns its model calls."""


@dataclass(frozen=True)
class Sizes:
    conversations: int
    repetitions: int


def run(settings: Settings) -> list[Row]:
    sizes = Sizes(150, 3) if settings.quick else Sizes(400, 7)
    with spawned_server(f"noop-tools:{TOOL_TURNS}") as server:
        rates = asyncio.run(_measure(server.base_url, settings.workdir, sizes))
    session, raw = median(rates["session"]), median(rates["raw"])
    return [
        Row(
            name="8. model turns/s through Session.run",
            figure=session,
            unit="turns/s",
            baseline=raw,
            target=f">= {TARGET_RATIO:g}x the stock openai client",
            met=session >= TARGET_RATIO * raw,
            details={
                "session": spread(rates["session"]),
                "raw_openai": spread(rates["raw"]),
                "bare_model_client": spread(rates["bare"]),
                "concurrency": CONCURRENCY,
                "model_calls_per_conversation": TOOL_TURNS + 1,
                "conversations_per_repetition": sizes.conversations,
            },
        )
    ]


async def _measure(base_url: str, workdir: str, sizes: Sizes) -> dict[str, list[float]]:
    agent = make_agent(base_url, workdir)
    raw = raw_client(base_url)
    drivers = _drivers(agent, raw, OpenAIModelClient(base_url=base_url), workdir)
    try:
        await _check_identical(agent, raw, workdir)
        for drive in drivers.values():
            await _rate(drive, CONCURRENCY, CONCURRENCY)  # warm up pools and code paths
        rates: dict[str, list[float]] = {name: [] for name in drivers}
        names = list(drivers)
        for repetition in range(sizes.repetitions):
            order = names[repetition % len(names) :] + names[: repetition % len(names)]
            for name in order:
                rates[name].append(await _rate(drivers[name], sizes.conversations, CONCURRENCY))
        return rates
    finally:
        await raw.close()
        await release_clients()


def _drivers(
    agent: Agent, raw: openai.AsyncOpenAI, bare: OpenAIModelClient, workdir: str
) -> dict[str, Drive]:
    tools = agent.registry.schemas()

    async def session(trace: str) -> int:
        ran = await session_conversation(agent, PROMPT, os.path.join(workdir, trace))
        return sum(1 for record in ran.state.records if record["type"] == "model_call")

    async def stock(trace: str) -> int:
        return await raw_conversation(raw, MODEL, opening(agent.system_prompt, PROMPT), tools)

    async def lean(trace: str) -> int:
        return await bare_conversation(bare, MODEL, opening(agent.system_prompt, PROMPT), tools)

    return {"session": session, "raw": stock, "bare": lean}


async def _rate(drive: Drive, conversations: int, concurrency: int) -> float:
    """Model turns per second with ``concurrency`` conversations in flight."""
    remaining = list(range(conversations))
    turns = 0

    async def worker() -> None:
        nonlocal turns
        while remaining:
            calls = await drive(f"model-cpu-{remaining.pop()}.jsonl")
            turns += calls  # added after the await: ``turns += await ...`` would lose updates

    with Stopwatch() as watch:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return turns / watch.seconds


async def _check_identical(agent: Agent, raw: openai.AsyncOpenAI, workdir: str) -> None:
    """The SDK must produce the very history the stock client produces for the same requests."""
    session = await session_conversation(agent, PROMPT, os.path.join(workdir, "identical.jsonl"))
    baseline = opening(agent.system_prompt, PROMPT)
    await raw_conversation(raw, MODEL, baseline, agent.registry.schemas())
    check_same_history(session.state.messages, baseline)


BENCHMARK = Benchmark("8", "Model-call CPU cost (turns/s per process)", run)
