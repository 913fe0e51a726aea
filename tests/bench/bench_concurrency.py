"""Benchmark 2: N sessions at once in one process.

The scripted server waits DELAY seconds before every answer; each conversation makes three model
calls (two no-op tool turns, then the answer). ``Session.run`` for N conversations at once is
timed against the same N conversations driven with one shared stock ``openai`` client (its pool
raised to N connections, so it is not throttled by its default of 1,000). Each measurement runs
in a fresh child process, so its memory growth (peak RSS minus RSS before the conversations start,
divided by N) belongs to that run alone. The state of every session (messages and trace records)
stays in memory until the end, as in a session host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from baseline import model_calls, opening, raw_client, raw_conversation
from harness import (
    MODEL,
    Benchmark,
    Row,
    Settings,
    Stopwatch,
    ensure_open_files,
    make_agent,
    median,
    release_clients,
    rss_bytes,
    spawned_server,
    spread,
)

from rho_agent import Session

DELAY = 1.0
TOOL_TURNS = 2
PROMPT = "Call noop twice, then say done."
TARGET_N = 1000
TARGET_RATIO = 1.2
TARGET_KB = 300.0
CHILD_TIMEOUT = 300.0


@dataclass(frozen=True)
class Measurement:
    """One child run: wall seconds, memory growth per conversation, model calls made."""

    wall: float
    kb_per_conversation: float
    model_calls: int


def run(settings: Settings) -> list[Row]:
    sizes = (100, 1000) if settings.quick else (100, 1000, 5000)
    repetitions = 2 if settings.quick else 3
    rows: list[Row] = []
    with spawned_server(f"noop-tools:{TOOL_TURNS}", DELAY) as server:
        for n in sizes:
            runs: dict[str, list[Measurement]] = {"session": [], "raw": []}
            for repetition in range(repetitions):
                order = ("session", "raw") if repetition % 2 == 0 else ("raw", "session")
                for variant in order:
                    runs[variant].append(_child(variant, n, server.base_url, settings.workdir))
            rows.extend(_rows(n, runs))
    return rows


def _rows(n: int, runs: dict[str, list[Measurement]]) -> list[Row]:
    session_wall = [m.wall for m in runs["session"]]
    raw_wall = [m.wall for m in runs["raw"]]
    session_kb = [m.kb_per_conversation for m in runs["session"]]
    raw_kb = [m.kb_per_conversation for m in runs["raw"]]
    targeted = n == TARGET_N
    wall_ratio = median(session_wall) / median(raw_wall)
    ideal = DELAY * (TOOL_TURNS + 1)
    return [
        Row(
            name=f"2. {n:,} sessions at once: wall time",
            figure=median(session_wall),
            unit="s",
            baseline=median(raw_wall),
            ratio=wall_ratio,
            target=f"<= {TARGET_RATIO:g}x raw" if targeted else "report",
            met=wall_ratio <= TARGET_RATIO if targeted else None,
            details={
                "session_s": spread(session_wall),
                "raw_openai_s": spread(raw_wall),
                "ideal_s": ideal,
                "model_calls": runs["session"][0].model_calls,
            },
        ),
        Row(
            name=f"2. {n:,} sessions at once: memory",
            figure=median(session_kb),
            unit="KB/session",
            baseline=median(raw_kb),
            target=f"<= {TARGET_KB:g} KB/session" if targeted else "report",
            met=median(session_kb) <= TARGET_KB if targeted else None,
            details={"session_kb": spread(session_kb), "raw_openai_kb": spread(raw_kb)},
        ),
    ]


def _child(variant: str, n: int, base_url: str, workdir: str) -> Measurement:
    command = [sys.executable, str(Path(__file__).resolve()), variant, str(n), base_url, workdir]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{variant} with {n} conversations took over {CHILD_TIMEOUT} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"{variant} with {n} conversations failed:\n{done.stderr[-2000:]}")
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


# -- the child process ---------------------------------------------------------------------------


async def _session_run(n: int, base_url: str, workdir: str) -> Measurement:
    agent = make_agent(base_url, workdir)

    async def one() -> Session:
        session = Session(agent)
        result = await session.run(PROMPT)
        if result.status != "completed":
            raise RuntimeError(f"session ended {result.status!r}: {result.events[-1:]}")
        return session

    try:
        await one()  # warm up: code paths and the first pooled connection
        before = rss_bytes()
        with Stopwatch() as watch:
            sessions = await asyncio.gather(*(one() for _ in range(n)))
        calls = sum(model_calls(session) for session in sessions)
        return Measurement(watch.seconds, _growth_kb(before, n), calls)
    finally:
        await release_clients()


async def _raw_run(n: int, base_url: str, workdir: str) -> Measurement:
    agent = make_agent(base_url, workdir)
    tools = agent.registry.schemas()
    client = raw_client(base_url, connections=n + 1)

    async def one() -> int:
        return await raw_conversation(client, MODEL, opening(agent.system_prompt, PROMPT), tools)

    try:
        await one()
        before = rss_bytes()
        with Stopwatch() as watch:
            calls = await asyncio.gather(*(one() for _ in range(n)))
        return Measurement(watch.seconds, _growth_kb(before, n), sum(calls))
    finally:
        await client.close()


def _growth_kb(before: int, n: int) -> float:
    """Peak RSS growth since ``before``, per conversation (Linux reports ru_maxrss in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(0, peak - before) / 1024 / n


def _child_main() -> None:
    parser = argparse.ArgumentParser(description="one measurement of benchmark 2 (internal)")
    parser.add_argument("variant", choices=("session", "raw"))
    parser.add_argument("n", type=int)
    parser.add_argument("base_url")
    parser.add_argument("workdir")
    args = parser.parse_args()
    ensure_open_files(args.n + 100)
    drive = _session_run if args.variant == "session" else _raw_run
    measurement = asyncio.run(drive(args.n, args.base_url, args.workdir))
    expected = args.n * (TOOL_TURNS + 1)
    if measurement.model_calls != expected:
        raise SystemExit(f"made {measurement.model_calls} model calls, expected {expected}")
    print(json.dumps(asdict(measurement)))


BENCHMARK = Benchmark("2", "Concurrency in one process", run)

if __name__ == "__main__":
    _child_main()
