"""Benchmark 1: what the SDK adds to each agent turn, and what its peers take for the same turn.

One conversation at a time (so the figure is latency, not throughput): the scripted server answers
at once with TOOL_TURNS no-op tool calls and then the answer. ``Session.run`` (trace written to a
JSONL file, the ``noop`` tool run through the registry) is timed, in rotating repetitions, against:

- 1: the stock ``chat.completions.create`` loop. Its request transform and pydantic chunk objects
  cost several times the CPU of a whole SDK turn, so this row says how the SDK compares with
  what an engineer writes by hand, not what the loop adds (the SDK comes out ahead).
- 1b (the target row): the same loop over an equally lean client, rho-agent's own
  ``OpenAIModelClient`` without the session: what state, trace, tools and events add per turn.
- 1c, 1d: the peers (``tests.bench.peers``), when the ``bench`` extra is installed. The SDK's
  requests carry the developer profile's tools besides ``noop``; the peers' only ``noop``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rho_agent.model.openai_client import OpenAIModelClient, close_shared_clients
from tests.bench import peers
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
    skipped,
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
    sizes = Sizes(4, 5) if settings.quick else Sizes(10, 12)
    with spawned_server(f"noop-tools:{TOOL_TURNS}", settings.workdir) as server:
        per_turn = asyncio.run(_measure(server.base_url, settings.workdir, sizes))
    session = per_turn["session"]
    loop_costs = [s - b for s, b in zip(session, per_turn["bare"], strict=True)]
    common = {
        "model_calls_per_conversation": TOOL_TURNS + 1,
        "conversations_per_repetition": sizes.conversations,
        "session_ms_per_turn": spread(session),
    }
    rows = [
        Row(
            name="1. SDK turn vs stock chat.completions.create (pydantic chunks)",
            figure=median(session),
            unit="ms/turn",
            baseline=median(per_turn["raw"]),
            target="report (the stock loop is not lean: see 1b)",
            met=None,
            runs=session,
            baseline_runs=per_turn["raw"],
            details={**common, "raw_openai_ms_per_turn": spread(per_turn["raw"])},
        ),
        Row(
            name="1b. loop added per turn over an equally lean client",
            figure=median(loop_costs),
            unit="ms/turn",
            baseline=median(per_turn["bare"]),
            ratio=median(session) / median(per_turn["bare"]),
            target=f"<= {TARGET_MS:g} ms/turn added",
            met=median(loop_costs) <= TARGET_MS,
            runs=loop_costs,
            baseline_runs=per_turn["bare"],
            details={
                **common,
                "bare_model_client_ms_per_turn": spread(per_turn["bare"]),
                "loop_cost_ms_per_turn": spread(loop_costs),
                "baseline": "rho-agent's OpenAIModelClient driven by hand (no session)",
            },
        ),
    ]
    for letter, peer in zip("cd", peers.PEERS, strict=True):
        name = f"1{letter}. {peer}, same conversation (baseline: Session.run)"
        if peer not in per_turn:
            rows.append(skipped(name, f"{peer} {peers.INSTALL}"))
            continue
        rows.append(
            Row(
                name=name,
                figure=median(per_turn[peer]),
                unit="ms/turn",
                baseline=median(session),
                target="report",
                met=None,
                runs=per_turn[peer],
                baseline_runs=session,
                details={**common, f"{peer}_ms_per_turn": spread(per_turn[peer])},
            )
        )
    return rows


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
    for peer in filter(peers.available, peers.PEERS):
        drivers[peer] = _peer_drive(peers.conversation(peer, base_url, MODEL, agent.system_prompt))
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


def _peer_drive(converse: peers.Converse) -> Drive:
    async def drive(number: int) -> int:
        return await converse(PROMPT)

    return drive


async def _per_turn_ms(drive: Drive, numbers: range) -> float:
    turns = 0
    with Stopwatch() as watch:
        for number in numbers:
            turns += await drive(number)
    if turns != len(numbers) * (TOOL_TURNS + 1):
        raise AssertionError(f"expected {TOOL_TURNS + 1} model calls a conversation, got {turns}")
    return watch.seconds * 1000 / turns


BENCHMARK = Benchmark("1", "SDK overhead per agent turn", run)
