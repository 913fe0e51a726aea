"""Benchmark 6: event delivery, from the worker emitting an event to ``Job.events()`` yielding it.

The fleet worker's ``noop`` tool answers the wall-clock time it ran at (``fleet_support``), so
every ``tool_end`` event carries its own emission time; the reader (this process, same machine
and clock) subtracts it from the time the event is yielded. Each job makes TOOL_TURNS tool calls,
a few milliseconds apart. The baseline is the floor of any Redis Streams design: a writer process
doing one XADD per event at the same pace, and a reader blocked in XREAD on the same server.

Measured twice on the same worker: idle (the measured job alone), and loaded, with BACKGROUND_JOBS
other jobs on it (each making a 1 s model call then a tool call, BACKGROUND_TURNS times, as agent
jobs do; each one that ends is replaced at once), so the target holds where it matters. The
baseline is measured in the same two states: under load it is the floor the machine itself sets
(the writer and reader processes wait for a core like everything else), and beside it the
machine's own wake-up delay in that state (``wakeup_probe``: how late a 1 ms sleep returns).
Each figure is the median of the percentile over REPETITIONS consecutive blocks of jobs, with
their range.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from dispatch import Job
from tests.bench.fleet_support import STAMP_FACTORY, RunningFleet, running_fleet
from tests.bench.harness import REPO_ROOT, Benchmark, Row, Settings, median, spawned_server
from tests.integration.fleet import claimed_db

TOOL_TURNS = 40
RAW_INTERVAL = 0.003
"""Seconds between the baseline's XADDs: about the spacing of the fleet's tool turns."""
READ_TIMEOUT = 60.0
WRITER = "tests.bench.xadd_writer"
PROBE = "tests.bench.wakeup_probe"
PROBE_SLEEPS = 2000
"""1 ms sleeps per wake-up measurement (about 2.5 s)."""
P99_TARGET_MS = 2.0
"""The issue's target: 99 % of events reach the observer within 2 ms, idle and loaded."""
BACKGROUND_JOBS = 500
BACKGROUND_DELAY = 1.0
"""Seconds each background job's model takes to answer."""
BACKGROUND_TURNS = 20
"""Tool turns a background job makes before it ends and another takes its place, so the load is
the same however long the measurement lasts (an endless job's history, and with it the cost of
each of its turns, would grow all along: a full run's loaded phase never ended)."""
TOP_UP_EVERY = 0.25
REPETITIONS = 3
SETTLE_TIMEOUT = 120.0


@dataclass(frozen=True)
class Sizes:
    jobs: int
    """Measured jobs per repetition (x TOOL_TURNS events)."""


def run(settings: Settings) -> list[Row]:
    sizes = Sizes(9) if settings.quick else Sizes(60)
    count = REPETITIONS * sizes.jobs
    with (
        spawned_server(
            f"noop-tools:{BACKGROUND_TURNS}", settings.workdir, BACKGROUND_DELAY
        ) as background_server,
        running_fleet(
            settings.workdir,
            1,
            f"noop-tools:{TOOL_TURNS}",
            factory=STAMP_FACTORY,
            redis=settings.redis,
            broker=settings.broker,
            also_allow=(background_server.base_url,),
            RHO_AGENT_WORKER_CONCURRENCY=str(BACKGROUND_JOBS + 50),
        ) as fleet,
    ):
        _fleet_latencies(fleet, 1)  # warm up
        idle = [_fleet_latencies(fleet, sizes.jobs) for _ in range(REPETITIONS)]
        with _Background(fleet, background_server.base_url):
            loaded = [_fleet_latencies(fleet, sizes.jobs) for _ in range(REPETITIONS)]
            raw_loaded = _raw_blocks(settings.redis, count * TOOL_TURNS)
            wakeup_loaded = _wakeup_overshoots()
    raw_idle = _raw_blocks(settings.redis, count * TOOL_TURNS)
    wakeup_idle = _wakeup_overshoots()
    rows = []
    for state, blocks, raw_blocks, wakeup in (
        ("idle", idle, raw_idle, wakeup_idle),
        (f"{BACKGROUND_JOBS} jobs running", loaded, raw_loaded, wakeup_loaded),
    ):
        for label, fraction in (("p50", 0.5), ("p99", 0.99)):
            runs = [_percentile(block, fraction) for block in blocks]
            baseline_runs = [_percentile(block, fraction) for block in raw_blocks]
            figure, baseline = median(runs), median(baseline_runs)
            targeted = label == "p99"
            rows.append(
                Row(
                    name=f"6. event delivery {label}, {state}",
                    figure=figure,
                    unit="ms",
                    baseline=baseline,
                    target=f"p99 <= {P99_TARGET_MS:g} ms" if targeted else "report",
                    met=figure <= P99_TARGET_MS if targeted else None,
                    runs=runs,
                    baseline_runs=baseline_runs,
                    details={
                        "events": sum(len(block) for block in blocks),
                        "raw_xadd_xread_events": sum(len(block) for block in raw_blocks),
                        "baseline": "bare XADD -> XREAD, measured "
                        + ("with the same jobs running" if blocks is loaded else "idle"),
                        "background_jobs": BACKGROUND_JOBS if blocks is loaded else 0,
                        "background_model_delay_s": BACKGROUND_DELAY,
                        "wakeup_overshoot_ms": {
                            "p50": _percentile(wakeup, 0.5),
                            "p99": _percentile(wakeup, 0.99),
                            "what": "a 1 ms sleep's overshoot in a process of its own, "
                            "measured in the same state: the machine's own wake-up delay",
                        },
                    },
                )
            )
    return rows


class _Background:
    """Keeps BACKGROUND_JOBS jobs unfinished on the worker while it is entered: each makes
    BACKGROUND_TURNS tool turns behind 1 s model calls and ends, and a thread submits another in
    its place (jobs not finished are counted by the fleet's lease index, which holds the queued
    and the running ones). On exit every job it submitted is cancelled."""

    def __init__(self, fleet: RunningFleet, base_url: str) -> None:
        self._config = dataclasses.replace(
            fleet.config, base_url=base_url, extras={"max_turns": BACKGROUND_TURNS + 1}
        )
        self._dispatcher = fleet.fleet.dispatcher()
        self._redis = redis.Redis.from_url(fleet.fleet.url)
        self._leases = self._dispatcher.settings.keys.leases()
        self._jobs: list[Job] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._top_up, name="background", daemon=True)

    def __enter__(self) -> _Background:
        self._submit(BACKGROUND_JOBS)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while self._running() < BACKGROUND_JOBS:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self._running()} of {BACKGROUND_JOBS} background jobs running "
                    f"after {SETTLE_TIMEOUT:g} s"
                )
            time.sleep(0.2)
        self._thread.start()
        time.sleep(2 * BACKGROUND_DELAY)  # past the burst of first model calls: a steady load
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10.0)
        for job in self._jobs:
            job.cancel()
        self._dispatcher.close()
        self._redis.close()

    def _top_up(self) -> None:
        while not self._stop.wait(TOP_UP_EVERY):
            missing = BACKGROUND_JOBS - int(self._redis.zcard(self._leases))
            if missing > 0:
                self._submit(missing)

    def _submit(self, count: int) -> None:
        prompts = [f"background {len(self._jobs) + index}" for index in range(count)]
        self._jobs += self._dispatcher.map(prompts, self._config)

    def _running(self) -> int:
        infos = self._dispatcher.infos([job.id for job in self._jobs])
        return sum(1 for info in infos if info is not None and info.status == "running")


def _fleet_latencies(fleet: RunningFleet, jobs: int) -> list[float]:
    """Milliseconds from each tool_end event's emission to its arrival here."""
    latencies: list[float] = []
    for index in range(jobs):
        job = fleet.dispatcher.submit(f"events {index}", fleet.config)
        for event in job.events():
            if event.type == "tool_end" and event.tool_result:
                latencies.append((time.time() - float(event.tool_result)) * 1000)
        if job.result(timeout=READ_TIMEOUT).status != "completed":
            raise AssertionError(f"job {job.id} did not complete")
    if len(latencies) != jobs * TOOL_TURNS:
        raise AssertionError(f"expected {jobs * TOOL_TURNS} tool_end events, got {len(latencies)}")
    return latencies


def _raw_blocks(server: str, count: int) -> list[list[float]]:
    """``_raw_latencies`` split into REPETITIONS interleaved blocks, as the fleet's are."""
    raw = _raw_latencies(server, count)
    return [raw[index::REPETITIONS] for index in range(REPETITIONS)]


def _raw_latencies(server: str, count: int) -> list[float]:
    """The same measurement for bare XADD (writer process) -> XREAD BLOCK (this process)."""
    with claimed_db(server) as db:
        url = f"{server}/{db}"
        reader = redis.Redis.from_url(url)
        writer = subprocess.Popen(
            [sys.executable, "-m", WRITER, url, "raw", str(count), str(RAW_INTERVAL)],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            cwd=REPO_ROOT,
        )
        try:
            return _read_stamps(reader, "raw", count)
        finally:
            writer.wait(READ_TIMEOUT)
            reader.close()


def _wakeup_overshoots() -> list[float]:
    """``wakeup_probe``'s overshoots, from a process of its own (no thread of this one's)."""
    out = subprocess.run(
        [sys.executable, "-m", PROBE, str(PROBE_SLEEPS)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
        timeout=READ_TIMEOUT,
    )
    overshoots: list[float] = json.loads(out.stdout)
    return overshoots


def _read_stamps(reader: Any, key: str, count: int) -> list[float]:
    latencies: list[float] = []
    after = "0"
    deadline = time.monotonic() + READ_TIMEOUT
    while len(latencies) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"read {len(latencies)} of {count} raw stream entries in time")
        reply: Any = reader.xread({key: after}, block=1000)
        for _, entries in reply or []:
            now = time.time()
            for entry_id, fields in entries:
                latencies.append((now - float(fields[b"t"])) * 1000)
                after = entry_id
    return latencies


def _percentile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


BENCHMARK = Benchmark("6", "Event delivery latency", run)
