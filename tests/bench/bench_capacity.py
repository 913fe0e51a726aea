"""Benchmark 5: worker capacity, i.e. how many jobs one worker process keeps in flight.

One fleet worker process (JOBS slots) gets JOBS one-turn jobs at once; the scripted server waits
DELAY (1 s) before each answer, so a job spends its life waiting on the model, as agent jobs do.
The baseline is a bare Celery threads pool with the same number of slots, running JOBS tasks that
each wait DELAY (as the job waits on its model) on the same Redis.

Jobs in flight is reported two ways. The **mean** is the time-weighted number of jobs running
over the steady phase, computed from every job's own start and finish times: from the first
finish to the last start (when jobs both start and finish), or, if every job started before the
first one finished, the span in which all of them ran. The **peak** is the largest number open
at once by the same times. Both sides are measured the same way. By Little's law the mean is the
start rate times DELAY: a worker that starts jobs slowly never holds many, whatever its peak.

Memory is the worker process's peak RSS growth during a measured round, per job at the peak in
flight. Both sides get the same warm-up first (a full round of JOBS), so the threads of both
pools are started and both processes have already grown once; the figure is the fleet's KB per
in-flight job over the threads pool's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery

from tests.bench import bare_celery
from tests.bench.fleet_support import RunningFleet, bare_workers, rss_kb, running_fleet
from tests.bench.harness import Benchmark, Row, Settings, Stopwatch, median

SAMPLE_EVERY = 0.05
DELAY = 1.0
"""Seconds the model takes to answer each call."""
JOBS = 1000
IN_FLIGHT_TARGET = 500
"""The issue's target: a mean of at least this many jobs in flight in one worker process."""
MEMORY_TARGET_KB = 8.0
"""The issue's target: at most this many KB per in-flight job over the threads pool."""
REPETITIONS = 3
RESULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class Capacity:
    """One measured round."""

    mean_in_flight: float
    peak_in_flight: float
    jobs_per_s: float
    kb_per_job: float
    """Peak RSS growth over the round / peak in flight."""
    job_s: float
    """Mean time from a job's start to its end: DELAY when the worker keeps up. Jobs a worker
    has taken in but cannot serve yet (its loop busy) live longer and so raise the in-flight
    mean without raising the start rate: this row shows it."""


def run(settings: Settings) -> list[Row]:
    repetitions = REPETITIONS
    with bare_workers(
        settings.workdir, 1, JOBS, redis=settings.redis, broker=settings.broker
    ) as bare:
        pid = _bare_worker_pid(bare)
        _bare_capacity(bare, pid)  # warm-up: the pool's threads started, the process grown
        threads = [_bare_capacity(bare, pid) for _ in range(repetitions)]
    with running_fleet(
        settings.workdir,
        1,
        "echo",
        DELAY,
        redis=settings.redis,
        broker=settings.broker,
        RHO_AGENT_WORKER_CONCURRENCY=str(JOBS),
    ) as fleet:
        _fleet_capacity(fleet)  # the same warm-up
        ours = [_fleet_capacity(fleet) for _ in range(repetitions)]
    return _rows(ours, threads)


def _rows(ours: list[Capacity], threads: list[Capacity]) -> list[Row]:
    def series(runs: list[Capacity], pick: Callable[[Capacity], float]) -> list[float]:
        return [pick(run) for run in runs]

    common = {
        "jobs": JOBS,
        "model_delay_s": DELAY,
        "baseline": f"bare Celery threads pool, {JOBS} slots, tasks that wait {DELAY:g} s",
    }
    mean = series(ours, lambda c: c.mean_in_flight)
    peak = series(ours, lambda c: c.peak_in_flight)
    extra_kb = [o.kb_per_job - t.kb_per_job for o, t in zip(ours, threads, strict=True)]
    return [
        Row(
            name=f"5. mean jobs in flight, steady phase ({JOBS:,} submitted, {JOBS:,} slots)",
            figure=median(mean),
            unit="jobs",
            baseline=median(series(threads, lambda c: c.mean_in_flight)),
            target=f">= {IN_FLIGHT_TARGET} mean",
            met=median(mean) >= IN_FLIGHT_TARGET,
            runs=mean,
            baseline_runs=series(threads, lambda c: c.mean_in_flight),
            details=common,
        ),
        Row(
            name="5. peak jobs in flight",
            figure=median(peak),
            unit="jobs",
            baseline=median(series(threads, lambda c: c.peak_in_flight)),
            target="report (the mean is the target)",
            met=None,
            runs=peak,
            baseline_runs=series(threads, lambda c: c.peak_in_flight),
            details=common,
        ),
        Row(
            name=f"5. mean job time (the model answers in {DELAY:g} s)",
            figure=median(series(ours, lambda c: c.job_s)),
            unit="s",
            baseline=median(series(threads, lambda c: c.job_s)),
            target="report (above the model's time, in-flight counts jobs waiting on the worker)",
            met=None,
            runs=series(ours, lambda c: c.job_s),
            baseline_runs=series(threads, lambda c: c.job_s),
            details=common,
        ),
        Row(
            name="5. jobs/s in one worker",
            figure=median(series(ours, lambda c: c.jobs_per_s)),
            unit="jobs/s",
            baseline=median(series(threads, lambda c: c.jobs_per_s)),
            target="report",
            met=None,
            runs=series(ours, lambda c: c.jobs_per_s),
            baseline_runs=series(threads, lambda c: c.jobs_per_s),
            details=common,
        ),
        Row(
            name="5. worker memory per in-flight job, over the threads pool",
            figure=median(extra_kb),
            unit="KB/job",
            baseline=median(series(threads, lambda c: c.kb_per_job)),
            ratio=median(series(ours, lambda c: c.kb_per_job))
            / max(median(series(threads, lambda c: c.kb_per_job)), 1e-9),
            target=f"<= {MEMORY_TARGET_KB:g} KB/job over the baseline",
            met=median(extra_kb) <= MEMORY_TARGET_KB,
            runs=extra_kb,
            baseline_runs=series(threads, lambda c: c.kb_per_job),
            details={
                **common,
                "fleet_kb_per_job": series(ours, lambda c: c.kb_per_job),
                "warm_up": f"one round of {JOBS} on both sides before measuring",
            },
        ),
    ]


def _fleet_capacity(fleet: RunningFleet) -> Capacity:
    prompts = [f"capacity {index}" for index in range(JOBS)]
    with _Peak(_rss(fleet.worker_pids()[0])) as memory, Stopwatch() as watch:
        jobs = fleet.dispatcher.map(prompts, fleet.config)
        results = fleet.dispatcher.gather(jobs, timeout=RESULT_TIMEOUT)
    if any(r.status != "completed" for r in results):
        raise AssertionError(
            f"{sum(r.status != 'completed' for r in results)} jobs did not complete"
        )
    spans: list[tuple[float, float]] = []
    for info in fleet.dispatcher.infos([job.id for job in jobs]):
        if info is None or info.started_at is None or info.finished_at is None:
            raise AssertionError(f"a finished job has no start or finish time: {info}")
        spans.append((info.started_at, info.finished_at))
    peak = max_overlap(spans)
    return Capacity(
        steady_mean(spans), peak, JOBS / watch.seconds, memory.growth / peak, mean_length(spans)
    )


def _bare_capacity(bare: Celery, pid: int) -> Capacity:
    with _Peak(_rss(pid)) as memory, Stopwatch() as watch:
        sent = [bare.send_task(bare_celery.SLEEP, args=[DELAY]) for _ in range(JOBS)]
        spans = [tuple(result.get(timeout=RESULT_TIMEOUT)) for result in sent]
    pairs = [(float(start), float(end)) for start, end in spans]
    peak = max_overlap(pairs)
    return Capacity(
        steady_mean(pairs), peak, JOBS / watch.seconds, memory.growth / peak, mean_length(pairs)
    )


def steady_mean(spans: list[tuple[float, float]]) -> float:
    """Time-weighted mean number of ``(start, end)`` spans open over the steady phase: from the
    first end to the last start, or (all started before any ended) from the last start to the
    first end."""
    first_end = min(end for _, end in spans)
    last_start = max(start for start, _ in spans)
    low, high = sorted((first_end, last_start))
    if high - low <= 0:
        return float(max_overlap(spans))
    covered = sum(max(0.0, min(end, high) - max(start, low)) for start, end in spans)
    return covered / (high - low)


def mean_length(spans: list[tuple[float, float]]) -> float:
    """The mean of ``end - start`` over the spans."""
    return sum(end - start for start, end in spans) / len(spans)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans open at once."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


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


BENCHMARK = Benchmark("5", "Worker capacity", run)
