"""Benchmark 1: what the SDK adds to each agent turn.

One conversation at a time (so the figure is latency, not throughput): the scripted server answers
at once with TOOL_TURNS no-op tool calls and then the answer. ``Session.run`` (trace written to a
JSONL file, the ``noop`` tool run through the registry) is timed against the same sequence of
requests made with the stock ``openai`` client, in alternating repetitions.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rho_agent.model.openai_client import OpenAIModelClient, close_shared_clients
from tests.bench.baseline import (
    bare_conversation,
    model_calls,
    opening,
    raw_client,
    raw_conversation,
)
from tests.bench.harness import (
    MODEL,
    Benchmark,
    Row,
    Settings,
    Stopwatch,
    make_agent,
    median,
    session_conversation,
    spawned_server,
    spread,
)

TOOL_TURNS = 9
"""Each conversation: nine no-op tool turns, then the answer (ten model calls)."""
PROMPT = "Call noop nine times, then say done."
TARGET_MS = 0.5

Drive = Callable[[int], Awaitable[int]]
"""Runs conversation number N and returns its model calls."""


@dataclass(frozen=True)
class Sizes:
    conversations: int
    repetitions: int


def run(settings: Settings) -> list[Row]:
    sizes = Sizes(4, 9) if settings.quick else Sizes(10, 15)
    with spawned_server(f"noop-tools:{TOOL_TURNS}", settings.workdir) as server:
        per_turn = asyncio.run(_measure(server.base_url, settings.workdir, sizes))
    overheads = [s - r for s, r in zip(per_turn["session"], per_turn["raw"], strict=True)]
    loop_costs = [s - b for s, b in zip(per_turn["session"], per_turn["bare"], strict=True)]
    overhead = median(overheads)
    return [
        Row(
            name="1. SDK overhead per turn vs stock openai",
            figure=overhead,
            unit="ms/turn",
            baseline=median(per_turn["raw"]),
            ratio=median(per_turn["session"]) / median(per_turn["raw"]),
            target=f"<= {TARGET_MS:g} ms/turn added",
            met=overhead <= TARGET_MS,
            details={
                "session_ms_per_turn": spread(per_turn["session"]),
                "raw_openai_ms_per_turn": spread(per_turn["raw"]),
                "overhead_ms_per_turn": spread(overheads),
                "model_calls_per_conversation": TOOL_TURNS + 1,
                "conversations_per_repetition": sizes.conversations,
            },
        ),
        Row(
            name="1b. session loop cost over its own model client",
            figure=median(loop_costs),
            unit="ms/turn",
            baseline=median(per_turn["bare"]),
            ratio=median(per_turn["session"]) / median(per_turn["bare"]),
            target="report (state, trace, tools, events)",
            met=None,
            details={
                "bare_model_client_ms_per_turn": spread(per_turn["bare"]),
                "loop_cost_ms_per_turn": spread(loop_costs),
            },
        ),
    ]


async def _measure(base_url: str, workdir: str, sizes: Sizes) -> dict[str, list[float]]:
    agent = make_agent(base_url, workdir)
    tools = agent.registry.schemas()
    raw = raw_client(base_url)
    bare = OpenAIModelClient(base_url=base_url)

    async def session(number: int) -> int:
        trace = os.path.join(workdir, f"overhead-{number}.jsonl")
        return model_calls(await session_conversation(agent, PROMPT, trace))

    async def stock(number: int) -> int:
        return await raw_conversation(raw, MODEL, opening(agent.system_prompt, PROMPT), tools)

    async def lean(number: int) -> int:
        return await bare_conversation(bare, MODEL, opening(agent.system_prompt, PROMPT), tools)

    drivers: dict[str, Drive] = {"session": session, "raw": stock, "bare": lean}
    try:
        for drive in drivers.values():
            await _per_turn_ms(drive, range(2))  # warm up connections and code paths
        per_turn: dict[str, list[float]] = {name: [] for name in drivers}
        names = list(drivers)
        for repetition in range(sizes.repetitions):
            shift = repetition % len(names)
            numbers = range(
                repetition * sizes.conversations, (repetition + 1) * sizes.conversations
            )
            for name in names[shift:] + names[:shift]:
                per_turn[name].append(await _per_turn_ms(drivers[name], numbers))
        return per_turn
    finally:
        await raw.close()
        await close_shared_clients()


async def _per_turn_ms(drive: Drive, numbers: range) -> float:
    turns = 0
    with Stopwatch() as watch:
        for number in numbers:
            turns += await drive(number)
    if turns != len(numbers) * (TOOL_TURNS + 1):
        raise AssertionError(f"expected {TOOL_TURNS + 1} model calls a conversation, got {turns}")
    return watch.seconds * 1000 / turns


BENCHMARK = Benchmark("1", "SDK overhead per agent turn", run)
