"""Benchmarks 3 and 4: dispatch latency and fan-out throughput, against bare Celery.

Two fleet workers and two bare Celery workers (threads pool, same Redis server, databases of
their own) run side by side, and the measurements alternate between them. Jobs are one-turn echo
runs against the scripted server in its own process; bare tasks are no-ops.

3. Dispatch latency: what the fleet adds around an agent run, i.e. the round trip of
   ``submit().result()`` minus the time the job ran on its worker (``finished_at - started_at``),
   against the round trip of a bare no-op task (``send_task().get()``). Median of all rounds.
   Reported for fleet mode and for embedded mode (the same job through an embedded Dispatcher in
   this process), both against the same bare Celery round trips.
4. Fan-out: ``map`` then ``gather`` of N jobs, in jobs per second, against sending N no-op tasks
   and getting every result.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from celery import Celery

from dispatch import Dispatcher, FleetSettings
from tests.bench import bare_celery
from tests.bench.fleet_support import RunningFleet, bare_workers, running_fleet
from tests.bench.harness import (
    Benchmark,
    Row,
    Settings,
    Stopwatch,
    block_medians,
    median,
    spread,
)

WORKERS = 2
CONCURRENCY = 500
LATENCY_TARGET = 1.5
"""Dispatch latency may be at most this many times a bare Celery round trip."""
FAN_OUT_TARGET = 0.65
"""A fan-out must reach at least this fraction of bare Celery's task rate."""
RESULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Sizes:
    rounds: int
    fan_out: int
    repetitions: int


def run(settings: Settings) -> list[Row]:
    sizes = Sizes(60, 300, 3) if settings.quick else Sizes(201, 2000, 3)
    with (
        bare_workers(
            settings.workdir, WORKERS, CONCURRENCY, redis=settings.redis, broker=settings.broker
        ) as bare,
        running_fleet(
            settings.workdir, WORKERS, "echo", redis=settings.redis, broker=settings.broker
        ) as fleet,
    ):
        _fan_out(fleet, 20)  # warm up: agents built, connections open
        latency, trips = _latencies(fleet.dispatcher, fleet, bare, sizes.rounds)
        with Dispatcher(settings=FleetSettings(broker_url=None)) as embedded:
            _latencies(embedded, fleet, bare, 10)  # warm up the embedded host
            embedded_latency, embedded_trips = _latencies(embedded, fleet, bare, sizes.rounds)
        fleet_rates: list[float] = []
        bare_rates: list[float] = []
        for _ in range(sizes.repetitions):
            bare_rates.append(_drain(bare, sizes.fan_out))
            fleet_rates.append(_fan_out(fleet, sizes.fan_out))
    return [
        _latency_row("fleet", latency, trips),
        _latency_row("embedded", embedded_latency, embedded_trips),
        _fan_out_row(fleet_rates, bare_rates, sizes.fan_out),
    ]


def _latencies(
    dispatcher: Dispatcher, fleet: RunningFleet, bare: Celery, rounds: int
) -> tuple[list[float], list[float]]:
    """Alternating rounds: ``dispatcher``'s dispatch latency and bare Celery's round trip, in ms."""
    latency: list[float] = []
    trips: list[float] = []
    for index in range(rounds):
        with Stopwatch() as watch:
            bare.send_task(bare_celery.NOOP, args=[index]).get(timeout=RESULT_TIMEOUT)
        trips.append(watch.seconds * 1000)
        with Stopwatch() as watch:
            job = dispatcher.submit(f"round {index}", fleet.config)
            result = job.result(timeout=RESULT_TIMEOUT)
        info = job.info()
        if result.text != f"Echo: round {index}" or info.duration_s is None:
            raise AssertionError(f"job {job.id} ended {info.status}: {result.text!r}")
        latency.append((watch.seconds - info.duration_s) * 1000)
    return latency, trips


def _fan_out(fleet: RunningFleet, count: int) -> float:
    prompts = [f"fan out {index}" for index in range(count)]
    with Stopwatch() as watch:
        jobs = fleet.dispatcher.map(prompts, fleet.config)
        results = fleet.dispatcher.gather(jobs, timeout=RESULT_TIMEOUT * 5)
    wrong = [r.text for r, p in zip(results, prompts, strict=True) if r.text != f"Echo: {p}"]
    if wrong:
        raise AssertionError(f"{len(wrong)} of {count} jobs answered wrongly, e.g. {wrong[0]!r}")
    return count / watch.seconds


def _drain(bare: Celery, count: int) -> float:
    with Stopwatch() as watch:
        sent = [bare.send_task(bare_celery.NOOP, args=[index]) for index in range(count)]
        got = [result.get(timeout=RESULT_TIMEOUT * 5) for result in sent]
    if got != list(range(count)):
        raise AssertionError("bare Celery returned wrong results")
    return count / watch.seconds


def _latency_row(mode: str, latency: list[float], trips: list[float]) -> Row:
    ours, bare = median(latency), median(trips)
    return Row(
        name=f"3. dispatch latency, {mode} mode (overhead per job)",
        figure=ours,
        unit="ms",
        baseline=bare,
        target=f"<= {LATENCY_TARGET:g}x a bare Celery round trip",
        met=ours <= LATENCY_TARGET * bare,
        runs=block_medians(latency),
        baseline_runs=block_medians(trips),
        details={
            "fleet_overhead_ms": {**spread(latency), "p90": _percentile(latency, 0.9)},
            "bare_round_trip_ms": {**spread(trips), "p90": _percentile(trips, 0.9)},
            "workers": WORKERS,
        },
    )


def _fan_out_row(fleet: list[float], bare: list[float], count: int) -> Row:
    ours, baseline = median(fleet), median(bare)
    return Row(
        name=f"4. fan-out of {count:,} jobs, {WORKERS} workers",
        figure=ours,
        unit="jobs/s",
        baseline=baseline,
        target=f">= {FAN_OUT_TARGET:g}x bare Celery's task rate",
        met=ours >= FAN_OUT_TARGET * baseline,
        runs=fleet,
        baseline_runs=bare,
        details={"fleet_jobs_per_s": spread(fleet), "bare_tasks_per_s": spread(bare)},
    )


def _percentile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


BENCHMARK = Benchmark("3-4", "Dispatch latency and fan-out vs bare Celery", run)
