"""Benchmark 2: N sessions at once in one process.

The scripted server waits DELAY seconds before every answer; each conversation makes three model
calls (two no-op tool turns, then the answer). ``Session.run`` for N conversations at once is
timed against the same N conversations driven with one shared stock ``openai`` client on
``DefaultAioHttpClient`` (openai's advice for high concurrency; its pool raised to N connections
and its connect timeout to 120 s). At the targeted size the peers (``tests.bench.peers``, the
``bench`` extra) drive the same conversations too, against ``Session.run`` as their baseline.
Each measurement runs in a fresh child process, so its memory growth (peak RSS minus RSS
before the conversations start, divided by N) belongs to that run alone. The state of every
session (messages and trace records) stays in memory until the end, as in a session host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass

from rho_agent import Session
from rho_agent.model.openai_client import close_shared_clients
from tests.bench import peers
from tests.bench.baseline import model_calls, opening, raw_client, raw_conversation
from tests.bench.harness import (
    MODEL,
    REPO_ROOT,
    Benchmark,
    GcTimer,
    Row,
    Settings,
    Stopwatch,
    ensure_open_files,
    make_agent,
    median,
    rss_bytes,
    skipped,
    spawned_server,
    spread,
)

DELAY = 1.0
TOOL_TURNS = 2
PROMPT = "Call noop twice, then say done."
TARGET_N = 1000
TARGET_RATIO = 1.2
TARGET_KB = 300.0
CHILD_TIMEOUT = 300.0
CHILD_STARTUP = 5.0
"""Seconds a child may spend importing and warming up, on top of a run's budget."""


@dataclass(frozen=True)
class Measurement:
    """One child run: wall seconds, memory growth per conversation, model calls made, and the
    seconds the cyclic GC ran (with its number of full collections)."""

    wall: float
    kb_per_conversation: float
    model_calls: int
    gc_seconds: float
    full_collections: int


@dataclass(frozen=True)
class Plan:
    """One size: how often to measure it, and how long the stock client may take before its
    run counts as unfinished (at 5,000 it needs minutes: its pool scales badly)."""

    n: int
    repetitions: int
    raw_budget: float = 120.0
    peers: bool = False
    """Whether the peers run this size too (they need 30-45 s each at 1,000)."""


def run(settings: Settings) -> list[Row]:
    # Quick mode measures the targeted size once, without peers.
    plans = (
        [Plan(TARGET_N, 1)]
        if settings.quick
        else [Plan(100, 3), Plan(TARGET_N, 3, peers=True), Plan(5000, 3)]
    )
    rows: list[Row] = []
    with spawned_server(f"noop-tools:{TOOL_TURNS}", settings.workdir, DELAY) as server:
        for plan in plans:
            session: list[Measurement] = []
            raw: list[Measurement] = []
            raw_finished = True
            for repetition in range(plan.repetitions):
                if repetition % 2 == 1 and raw_finished:
                    raw_finished = _raw_into(raw, plan, server.base_url, settings.workdir)
                session.append(_child("session", plan.n, server.base_url, settings.workdir))
                if repetition % 2 == 0 and raw_finished:
                    raw_finished = _raw_into(raw, plan, server.base_url, settings.workdir)
            rows.extend(_rows(plan, session, raw))
            if plan.peers:
                rows.extend(_peer_rows(plan, session, server.base_url, settings.workdir))
    if settings.quick:
        rows.append(skipped("2. peers at 1,000 sessions", "full runs only (not --quick)"))
    return rows


def _peer_rows(plan: Plan, session: list[Measurement], base_url: str, workdir: str) -> list[Row]:
    rows: list[Row] = []
    for peer in peers.PEERS:
        name = f"2. {plan.n:,} sessions at once, {peer}"
        if not peers.available(peer):
            rows.append(skipped(name, f"{peer} {peers.INSTALL}"))
            continue
        runs = [_child(peer, plan.n, base_url, workdir) for _ in range(plan.repetitions)]
        for what, unit, pick in (
            ("wall time", "s", lambda m: m.wall),
            ("memory", "KB/session", lambda m: m.kb_per_conversation),
        ):
            ours, theirs = [pick(m) for m in session], [pick(m) for m in runs]
            rows.append(
                Row(
                    name=f"{name}: {what} (baseline: Session.run)",
                    figure=median(theirs),
                    unit=unit,
                    baseline=median(ours),
                    target="report",
                    met=None,
                    runs=theirs,
                    baseline_runs=ours,
                    details={peer: _summary(runs), "session": _summary(session)},
                )
            )
    return rows


def _raw_into(runs: list[Measurement], plan: Plan, base_url: str, workdir: str) -> bool:
    """Measure the stock client once; False if it did not finish within the plan's budget."""
    try:
        runs.append(_child("raw", plan.n, base_url, workdir, plan.raw_budget))
    except TimeoutError:
        return False
    return True


def _rows(plan: Plan, session: list[Measurement], raw: list[Measurement]) -> list[Row]:
    n = plan.n
    session_wall = median([m.wall for m in session])
    # An unfinished stock client run makes its budget a lower bound for the baseline.
    raw_wall = median([m.wall for m in raw]) if raw else plan.raw_budget
    raw_kb = median([m.kb_per_conversation for m in raw]) if raw else None
    session_kb = median([m.kb_per_conversation for m in session])
    targeted = n == TARGET_N
    raw_summary = _summary(raw) if raw else {"unfinished_after_s": plan.raw_budget}
    runs = {
        "runs": [m.wall for m in session],
        "baseline_runs": [m.wall for m in raw],
    }
    memory_runs = {
        "runs": [m.kb_per_conversation for m in session],
        "baseline_runs": [m.kb_per_conversation for m in raw],
    }
    return [
        Row(
            name=f"2. {n:,} sessions at once: wall time",
            figure=session_wall,
            unit="s",
            baseline=raw_wall,
            target=f"<= {TARGET_RATIO:g}x raw" if targeted else "report",
            met=session_wall <= TARGET_RATIO * raw_wall if targeted else None,
            baseline_bound="" if raw else ">",
            **runs,
            details={
                "ideal_s": DELAY * (TOOL_TURNS + 1),
                "session": _summary(session),
                "raw_openai": raw_summary,
            },
        ),
        Row(
            name=f"2. {n:,} sessions at once: memory",
            figure=session_kb,
            unit="KB/session",
            baseline=raw_kb,
            target=f"<= {TARGET_KB:g} KB/session" if targeted else "report",
            met=session_kb <= TARGET_KB if targeted else None,
            **memory_runs,
        ),
    ]


def _summary(runs: list[Measurement]) -> dict[str, object]:
    return {
        "wall_s": spread([m.wall for m in runs]),
        "kb_per_conversation": spread([m.kb_per_conversation for m in runs]),
        "gc_s": spread([m.gc_seconds for m in runs]),
        "full_collections": [m.full_collections for m in runs],
        "turns_per_s": median([m.model_calls / m.wall for m in runs]),
    }


def _child(
    variant: str, n: int, base_url: str, workdir: str, budget: float | None = None
) -> Measurement:
    """One measurement in a fresh process. Raises TimeoutError past ``budget`` seconds."""
    module = "tests.bench.bench_concurrency"
    command = [sys.executable, "-m", module, variant, str(n), base_url, workdir]
    limit = CHILD_TIMEOUT if budget is None else budget + CHILD_STARTUP
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    except subprocess.TimeoutExpired:
        if budget is None:
            raise RuntimeError(f"{variant} with {n} conversations took over {limit} s") from None
        raise TimeoutError(f"{variant} with {n} conversations took over {budget} s") from None
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
        with GcTimer() as gc_time, Stopwatch() as watch:
            sessions = await asyncio.gather(*(one() for _ in range(n)))
        calls = sum(model_calls(session) for session in sessions)
        return _measurement(watch, before, n, calls, gc_time)
    finally:
        await close_shared_clients()


async def _peer_run(peer: str, n: int, base_url: str, workdir: str) -> Measurement:
    agent = make_agent(base_url, workdir)
    converse = peers.conversation(peer, base_url, MODEL, agent.system_prompt)
    await converse(PROMPT)  # warm up, as the others do
    before = rss_bytes()
    with GcTimer() as gc_time, Stopwatch() as watch:
        calls = await asyncio.gather(*(converse(PROMPT) for _ in range(n)))
    return _measurement(watch, before, n, sum(calls), gc_time)


async def _raw_run(n: int, base_url: str, workdir: str) -> Measurement:
    agent = make_agent(base_url, workdir)
    tools = agent.registry.schemas()
    client = raw_client(base_url, connections=n + 1)

    async def one() -> int:
        return await raw_conversation(client, MODEL, opening(agent.system_prompt, PROMPT), tools)

    try:
        await one()
        before = rss_bytes()
        with GcTimer() as gc_time, Stopwatch() as watch:
            calls = await asyncio.gather(*(one() for _ in range(n)))
        return _measurement(watch, before, n, sum(calls), gc_time)
    finally:
        await client.close()


def _measurement(watch: Stopwatch, before: int, n: int, calls: int, gc: GcTimer) -> Measurement:
    """Peak RSS growth since ``before`` per conversation (Linux ru_maxrss is in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kb = max(0, peak - before) / 1024 / n
    return Measurement(watch.seconds, kb, calls, gc.seconds, gc.full_collections)


def _child_main() -> None:
    parser = argparse.ArgumentParser(description="one measurement of benchmark 2 (internal)")
    parser.add_argument("variant", choices=("session", "raw", *peers.PEERS))
    parser.add_argument("n", type=int)
    parser.add_argument("base_url")
    parser.add_argument("workdir")
    args = parser.parse_args()
    ensure_open_files(args.n + 100)
    if args.variant in peers.PEERS:
        measurement = asyncio.run(_peer_run(args.variant, args.n, args.base_url, args.workdir))
    else:
        drive = _session_run if args.variant == "session" else _raw_run
        measurement = asyncio.run(drive(args.n, args.base_url, args.workdir))
    expected = args.n * (TOOL_TURNS + 1)
    if measurement.model_calls != expected:
        raise SystemExit(f"made {measurement.model_calls} model calls, expected {expected}")
    print(json.dumps(asdict(measurement)))


BENCHMARK = Benchmark("2", "Concurrency in one process", run)

if __name__ == "__main__":
    _child_main()
