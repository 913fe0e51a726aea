"""Benchmark 5: worker capacity, i.e. how many jobs one worker process keeps in flight.

One fleet worker process gets N one-turn jobs at once (N = 100 and 1,000); the scripted server
waits DELAY (1 s) before each answer, so a job spends its life waiting on the model, as agent
jobs do. Jobs in flight is the peak number of jobs running at once (holding a lease, sampled
from Redis every SAMPLE_EVERY seconds), and jobs/s = N / wall time. Baselines: a Celery prefork
pool with the same number of processes (one) running the same work one job per process (a task
that waits DELAY, as the job waits on its model; measured over PREFORK_JOBS tasks, since it runs
them one after another), and for memory a bare threads pool of N slots running N such tasks.
Memory is the worker process's peak RSS growth during the run, per job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis
from celery import Celery

from tests.bench import bare_celery
from tests.bench.fleet_support import RunningFleet, bare_workers, rss_kb, running_fleet
from tests.bench.harness import Benchmark, Row, Settings, Stopwatch

SAMPLE_EVERY = 0.05
DELAY = 1.0
"""Seconds the model takes to answer each call."""
IN_FLIGHT_TARGET = 500
"""The issue's target: at least this many jobs in flight in one worker process."""
PREFORK_JOBS = 5


@dataclass(frozen=True)
class Sizes:
    jobs: int
    delay: float


@dataclass(frozen=True)
class Capacity:
    in_flight: float
    jobs_per_s: float
    kb_per_job: float
    wall: float


def run(settings: Settings) -> list[Row]:
    counts = (100, 1000)  # the sizes; cheap enough for --quick too
    largest = max(counts)
    with bare_workers(settings.workdir, 1, 1, pool="prefork") as prefork:
        one_per_process = _bare_capacity(prefork, Sizes(PREFORK_JOBS, DELAY), memory=False)
    with bare_workers(settings.workdir, 1, largest) as bare:
        threads = _bare_capacity(bare, Sizes(largest, DELAY), memory=True)
    with running_fleet(
        settings.workdir, 1, "echo", DELAY, RHO_AGENT_WORKER_CONCURRENCY=str(largest)
    ) as fleet:
        _fleet_capacity(fleet, Sizes(20, DELAY))  # warm up: the agent built, connections open
        ours = {count: _fleet_capacity(fleet, Sizes(count, DELAY)) for count in counts}
    rows = []
    for count, capacity in ours.items():
        rows.extend(_rows(count, capacity, one_per_process, count == largest))
    rows.append(
        Row(
            name="5. worker memory per job in flight",
            figure=ours[largest].kb_per_job,
            unit="KB/job",
            baseline=threads.kb_per_job,
            target="report",
            met=None,
            details={
                "jobs": largest,
                "baseline": "bare Celery threads pool, one slot per job",
                "note": "the fleet worker starts its pool threads (about 19 KB each) when it is "
                "ready, so they are not in its growth; the baseline starts them during its run",
            },
        )
    )
    return rows


def _rows(count: int, ours: Capacity, prefork: Capacity, targeted: bool) -> list[Row]:
    details = {
        "model_delay_s": DELAY,
        "fleet_wall_s": ours.wall,
        "baseline": "Celery prefork pool, 1 process, one job per process",
        "baseline_wall_s": prefork.wall,
        "baseline_jobs": PREFORK_JOBS,
    }
    return [
        Row(
            name=f"5. jobs in flight in one worker ({count:,} submitted)",
            figure=ours.in_flight,
            unit="jobs",
            baseline=prefork.in_flight,
            target=f">= {IN_FLIGHT_TARGET} jobs in flight" if targeted else "report",
            met=ours.in_flight >= IN_FLIGHT_TARGET if targeted else None,
            details=details,
        ),
        Row(
            name=f"5. jobs/s in one worker ({count:,} submitted)",
            figure=ours.jobs_per_s,
            unit="jobs/s",
            baseline=prefork.jobs_per_s,
            target="report",
            met=None,
            details=details,
        ),
    ]


def _fleet_capacity(fleet: RunningFleet, sizes: Sizes) -> Capacity:
    prompts = [f"capacity {index}" for index in range(sizes.jobs)]
    with (
        _Peak(_rss(fleet.worker_pids()[0])) as memory,
        _Peak(_running(fleet)) as running,
        Stopwatch() as watch,
    ):
        jobs = fleet.dispatcher.map(prompts, fleet.config)
        results = fleet.dispatcher.gather(jobs, timeout=120 + 4 * sizes.delay)
    if any(r.status != "completed" for r in results):
        raise AssertionError(
            f"{sum(r.status != 'completed' for r in results)} jobs did not complete"
        )
    return Capacity(
        running.peak, sizes.jobs / watch.seconds, memory.growth / sizes.jobs, watch.seconds
    )


def _bare_capacity(bare: Celery, sizes: Sizes, *, memory: bool) -> Capacity:
    pid = _bare_worker_pid(bare) if memory else 0
    timeout = 120 + 4 * sizes.delay * (1 if memory else sizes.jobs)
    with _Peak(_rss(pid)) as peak, Stopwatch() as watch:
        sent = [bare.send_task(bare_celery.SLEEP, args=[sizes.delay]) for _ in range(sizes.jobs)]
        for result in sent:
            result.get(timeout=timeout)
    wall = watch.seconds
    # Tasks only wait, so the mean number running is the peak (1 per prefork process).
    return Capacity(
        sizes.jobs * sizes.delay / wall, sizes.jobs / wall, peak.growth / sizes.jobs, wall
    )


def _bare_worker_pid(bare: Celery) -> int:
    """The pid of the (only) bare worker, from Celery's own stats."""
    stats = bare.control.inspect(timeout=5.0).stats() or {}
    pids = [int(worker["pid"]) for worker in stats.values()]
    if len(pids) != 1:
        raise RuntimeError(f"expected one bare Celery worker, found {len(pids)}")
    return pids[0]


class _Peak:
    """Samples ``measure()`` on a thread every SAMPLE_EVERY seconds; ``peak`` is the largest
    sample and ``growth`` the peak minus the first sample."""

    def __init__(self, measure: Callable[[], int]) -> None:
        self.growth = 0.0
        self._measure = measure
        self._start = measure()
        self.peak = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-sampler", daemon=True)

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.growth = float(max(0, self.peak - self._start))

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.peak = max(self.peak, self._measure())


def _rss(pid: int) -> Callable[[], int]:
    return lambda: rss_kb(pid)


def _running(fleet: RunningFleet) -> Callable[[], int]:
    """The number of jobs holding a lease (running) in the fleet right now."""
    client = redis.Redis.from_url(fleet.fleet.url)
    key = fleet.dispatcher.settings.keys.leases()
    return lambda: int(client.zcard(key))


BENCHMARK = Benchmark("5", "Worker capacity", run)
