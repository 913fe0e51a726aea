"""Benchmark 8: model-call CPU cost, in streamed model turns per second per process.

The server answers at once (no delay), so the process is CPU-bound: the figure is how many turns
``Session.run`` drives (trace written, tools run, state kept) against the stock ``openai`` client
driving the same requests. Both keep CONCURRENCY conversations in flight. Two workloads: tool
turns with short answers (request-side cost dominates), and long streamed answers (per-chunk cost
dominates). Before measuring, one conversation of each kind must give the SDK and the stock client
the same history.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import openai

from rho_agent import Agent
from rho_agent.model.openai_client import OpenAIModelClient, close_shared_clients
from tests.bench.baseline import (
    bare_conversation,
    check_same_history,
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

CONCURRENCY = 32
TARGET_RATIO = 2.0

Drive = Callable[[str], Awaitable[int]]
"""Runs one conversation (given a trace file name) and returns its model calls."""


@dataclass(frozen=True)
class Workload:
    """A kind of conversation: the server's behaviour and the prompt that starts it."""

    name: str
    behaviour: str
    prompt: str
    model_calls: int
    chunks: str
    """How the answers are streamed, for the report."""


TOOL_TURNS = Workload(
    "8. model turns/s through Session.run",
    "noop-tools:3",
    "Call noop three times, then say done.",
    model_calls=4,
    chunks="3 no-op tool calls then a one-word answer, 3-4 chunks each",
)
LONG_ANSWERS = Workload(
    "8b. same, long streamed answers",
    "echo",
    ("The quick brown fox jumps over the lazy dog. " * 45)[:2000],
    model_calls=1,
    chunks="a 2,000-character answer in 16-character chunks (126 chunks)",
)


@dataclass(frozen=True)
class Sizes:
    conversations: int
    repetitions: int


def run(settings: Settings) -> list[Row]:
    sizes = Sizes(150, 3) if settings.quick else Sizes(400, 7)
    return [_row(workload, sizes, settings.workdir) for workload in (TOOL_TURNS, LONG_ANSWERS)]


def _row(workload: Workload, sizes: Sizes, workdir: str) -> Row:
    with spawned_server(workload.behaviour, workdir) as server:
        rates = asyncio.run(_measure(workload, server.base_url, workdir, sizes))
    session, raw = median(rates["session"]), median(rates["raw"])
    return Row(
        name=workload.name,
        figure=session,
        unit="turns/s",
        baseline=raw,
        target=f">= {TARGET_RATIO:g}x the stock openai client",
        met=session >= TARGET_RATIO * raw,
        runs=rates["session"],
        baseline_runs=rates["raw"],
        details={
            "session": spread(rates["session"]),
            "raw_openai": spread(rates["raw"]),
            "bare_model_client": spread(rates["bare"]),
            "concurrency": CONCURRENCY,
            "answers": workload.chunks,
            "model_calls_per_conversation": workload.model_calls,
            "conversations_per_repetition": sizes.conversations,
        },
    )


async def _measure(
    workload: Workload, base_url: str, workdir: str, sizes: Sizes
) -> dict[str, list[float]]:
    agent = make_agent(base_url, workdir)
    raw = raw_client(base_url)
    drivers = _drivers(workload, agent, raw, OpenAIModelClient(base_url=base_url), workdir)
    try:
        await _check_identical(workload, agent, raw, workdir)
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
        await close_shared_clients()


def _drivers(
    workload: Workload,
    agent: Agent,
    raw: openai.AsyncOpenAI,
    bare: OpenAIModelClient,
    workdir: str,
) -> dict[str, Drive]:
    tools = agent.registry.schemas()
    prompt = workload.prompt

    async def session(trace: str) -> int:
        return model_calls(await session_conversation(agent, prompt, os.path.join(workdir, trace)))

    async def stock(trace: str) -> int:
        return await raw_conversation(raw, MODEL, opening(agent.system_prompt, prompt), tools)

    async def lean(trace: str) -> int:
        return await bare_conversation(bare, MODEL, opening(agent.system_prompt, prompt), tools)

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


async def _check_identical(
    workload: Workload, agent: Agent, raw: openai.AsyncOpenAI, workdir: str
) -> None:
    """The SDK must produce the very history the stock client produces for the same requests."""
    trace = os.path.join(workdir, "identical.jsonl")
    session = await session_conversation(agent, workload.prompt, trace)
    baseline = opening(agent.system_prompt, workload.prompt)
    calls = await raw_conversation(raw, MODEL, baseline, agent.registry.schemas())
    if calls != workload.model_calls or model_calls(session) != calls:
        raise AssertionError(f"expected {workload.model_calls} model calls a conversation")
    check_same_history(session.state.messages, baseline)


BENCHMARK = Benchmark("8", "Model-call CPU cost (turns/s per process)", run)
