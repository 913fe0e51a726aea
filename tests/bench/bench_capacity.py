"""Benchmark 5: worker capacity, i.e. how many jobs one worker process keeps in flight.

One fleet worker with a pool of JOBS slots gets JOBS one-turn jobs at once; the scripted server
waits DELAY seconds before each answer, so a job spends its life waiting on the model, as agent
jobs do. Jobs in flight = JOBS x DELAY / wall time (JOBS if every job overlapped every other).
The baseline is one bare Celery worker with the same threads pool running JOBS tasks that sleep
DELAY. Memory is the worker process's peak RSS growth during the run, per job.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from celery import Celery

from tests.bench import bare_celery
from tests.bench.fleet_support import RunningFleet, bare_workers, rss_kb, running_fleet
from tests.bench.harness import Benchmark, Row, Settings, Stopwatch

SAMPLE_EVERY = 0.05


@dataclass(frozen=True)
class Sizes:
    jobs: int
    delay: float


@dataclass(frozen=True)
class Capacity:
    in_flight: float
    kb_per_job: float
    wall: float


def run(settings: Settings) -> list[Row]:
    sizes = Sizes(300, 2.0) if settings.quick else Sizes(1000, 5.0)
    concurrency = str(sizes.jobs)
    with bare_workers(settings.workdir, 1, sizes.jobs) as bare:
        baseline = _bare_capacity(bare, sizes)
    with running_fleet(
        settings.workdir, 1, "echo", sizes.delay, RHO_AGENT_WORKER_CONCURRENCY=concurrency
    ) as fleet:
        _fleet_capacity(fleet, Sizes(20, 0.0))  # warm up: the agent built, connections open
        ours = _fleet_capacity(fleet, sizes)
    return [
        Row(
            name=f"5. jobs in flight in one worker ({sizes.jobs:,} at once)",
            figure=ours.in_flight,
            unit="jobs",
            baseline=baseline.in_flight,
            target="report",
            met=None,
            details={
                "model_delay_s": sizes.delay,
                "fleet_wall_s": ours.wall,
                "bare_wall_s": baseline.wall,
            },
        ),
        Row(
            name="5. worker memory per job in flight",
            figure=ours.kb_per_job,
            unit="KB/job",
            baseline=baseline.kb_per_job,
            target="report",
            met=None,
        ),
    ]


def _fleet_capacity(fleet: RunningFleet, sizes: Sizes) -> Capacity:
    prompts = [f"capacity {index}" for index in range(sizes.jobs)]
    with _PeakRss(fleet.worker_pids()[0]) as memory, Stopwatch() as watch:
        jobs = fleet.dispatcher.map(prompts, fleet.config)
        results = fleet.dispatcher.gather(jobs, timeout=120 + 4 * sizes.delay)
    if any(r.status != "completed" for r in results):
        raise AssertionError(
            f"{sum(r.status != 'completed' for r in results)} jobs did not complete"
        )
    return _capacity(sizes, watch.seconds, memory.growth_kb)


def _bare_capacity(bare: Celery, sizes: Sizes) -> Capacity:
    pid = _bare_worker_pid(bare)
    with _PeakRss(pid) as memory, Stopwatch() as watch:
        sent = [bare.send_task(bare_celery.SLEEP, args=[sizes.delay]) for _ in range(sizes.jobs)]
        for result in sent:
            result.get(timeout=120 + 4 * sizes.delay)
    return _capacity(sizes, watch.seconds, memory.growth_kb)


def _capacity(sizes: Sizes, wall: float, growth_kb: float) -> Capacity:
    return Capacity(sizes.jobs * sizes.delay / wall, growth_kb / sizes.jobs, wall)


def _bare_worker_pid(bare: Celery) -> int:
    """The pid of the (only) bare worker, from Celery's own stats."""
    stats = bare.control.inspect(timeout=5.0).stats() or {}
    pids = [int(worker["pid"]) for worker in stats.values()]
    if len(pids) != 1:
        raise RuntimeError(f"expected one bare Celery worker, found {len(pids)}")
    return pids[0]


class _PeakRss:
    """Samples a process's RSS on a thread; ``growth_kb`` is the peak minus the first sample."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.growth_kb = 0.0
        self._start = rss_kb(pid)
        self._peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.growth_kb = float(max(0, self._peak - self._start))

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self._peak = max(self._peak, rss_kb(self.pid))


BENCHMARK = Benchmark("5", "Worker capacity", run)
