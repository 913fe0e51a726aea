"""Benchmark 11: the fleet against the Celery app a user writes by hand for the same work.

N one-turn jobs (the scripted server answers at once, ``echo``) on WORKERS worker processes with
CONCURRENCY slots each, on the same Redis server: the fleet's ``map`` then ``gather`` against
sending N tasks of a hand-rolled Celery app (``handrolled_celery``) and getting every result, in
its two usual forms: a new event loop and client per task (``asyncio.run``), and one loop and
client per process reused by every task. The three alternate, REPETITIONS times.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from tests.bench import handrolled_celery
from tests.bench.fleet_support import RunningFleet, bare_workers, running_fleet
from tests.bench.harness import Benchmark, Row, Settings, Stopwatch, median, spawned_server

WORKERS = 2
CONCURRENCY = 500
REPETITIONS = 3
RESULT_TIMEOUT = 300.0
APP = "tests.bench.handrolled_celery:app"


@dataclass(frozen=True)
class Sizes:
    jobs: int


def run(settings: Settings) -> list[Row]:
    sizes = Sizes(300) if settings.quick else Sizes(1000)
    rates: dict[str, list[float]] = {"fleet": [], "fresh": [], "reused": []}
    with (
        spawned_server("echo", settings.workdir) as server,
        bare_workers(
            settings.workdir,
            WORKERS,
            CONCURRENCY,
            redis=settings.redis,
            broker=settings.broker,
            app=APP,
        ) as app,
        running_fleet(
            settings.workdir, WORKERS, "echo", redis=settings.redis, broker=settings.broker
        ) as fleet,
    ):
        _fleet(fleet, 20)  # warm up: agents built, connections open
        _handrolled(app, handrolled_celery.REUSED, server.base_url, 20)
        _handrolled(app, handrolled_celery.FRESH, server.base_url, 20)
        for _ in range(REPETITIONS):
            rates["fleet"].append(_fleet(fleet, sizes.jobs))
            rates["reused"].append(
                _handrolled(app, handrolled_celery.REUSED, server.base_url, sizes.jobs)
            )
            rates["fresh"].append(
                _handrolled(app, handrolled_celery.FRESH, server.base_url, sizes.jobs)
            )
    details = {"jobs": sizes.jobs, "workers": WORKERS, "slots_per_worker": CONCURRENCY}
    return [
        Row(
            name=f"11. {sizes.jobs:,} one-turn jobs vs hand-rolled Celery, {form}",
            figure=median(rates["fleet"]),
            unit="jobs/s",
            baseline=median(rates[key]),
            target="report",
            met=None,
            runs=rates["fleet"],
            baseline_runs=rates[key],
            details={**details, "baseline": form},
        )
        for key, form in (
            ("reused", "loop and client reused"),
            ("fresh", "asyncio.run + new client per task"),
        )
    ]


def _fleet(fleet: RunningFleet, count: int) -> float:
    prompts = [f"job {index}" for index in range(count)]
    with Stopwatch() as watch:
        jobs = fleet.dispatcher.map(prompts, fleet.config)
        results = fleet.dispatcher.gather(jobs, timeout=RESULT_TIMEOUT)
    wrong = [r.text for r, p in zip(results, prompts, strict=True) if r.text != f"Echo: {p}"]
    if wrong:
        raise AssertionError(f"{len(wrong)} of {count} jobs answered wrongly, e.g. {wrong[0]!r}")
    return count / watch.seconds


def _handrolled(app: Celery, task: str, base_url: str, count: int) -> float:
    prompts = [f"job {index}" for index in range(count)]
    with Stopwatch() as watch:
        sent = [app.send_task(task, args=[base_url, prompt]) for prompt in prompts]
        got = [result.get(timeout=RESULT_TIMEOUT) for result in sent]
    wrong = [text for text, p in zip(got, prompts, strict=True) if text != f"Echo: {p}"]
    if wrong:
        raise AssertionError(f"{len(wrong)} of {count} tasks answered wrongly, e.g. {wrong[0]!r}")
    return count / watch.seconds


BENCHMARK = Benchmark("11", "Fleet vs a hand-rolled Celery app", run)
