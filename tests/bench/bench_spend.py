"""Benchmark 10: what budgets cost each model call: one reservation and one settlement on Redis.

A job in four budget scopes (its own, its batch's, a label's per day, the fleet's per day)
reserves a call's estimate and settles it, ``CALLS`` times, against the real Redis on
127.0.0.1:6379. Each is one Lua script (one round trip: the client's connection counts what it
sends); the baseline is a bare ``PING`` round trip on the same connection. Target: <= 0.5 ms each.

Then the fan-out of benchmark 4 with budgets and rate limits on: two fleet workers with a rate
limit on the model (set high enough never to make a call wait, so the row shows the cost of the
checks, not of waiting), each fan-out under a batch budget, alternating with fan-outs of a model no
limit names and no budget; bare Celery's task rate gives the target (>= 0.5x, as benchmark 4).

Run alone: ``python -m tests.bench.bench_spend [--quick]`` prints median and range.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis

from dispatch.fleet.spend import RedisSpendLedger, set_budget
from dispatch.keys import Keys
from rho_agent.budgets import Budget, CallEstimate, Reservation
from tests.bench import bare_celery
from tests.bench.fleet_support import RunningFleet, bare_workers, running_fleet
from tests.bench.harness import Benchmark, Row, Settings, Stopwatch, median, spread
from tests.integration.fleet import REDIS_HOST, claimed_db

TARGET_MS = 0.5
FAN_OUT_TARGET = 0.5
"""As benchmark 4: a fan-out reaches at least this fraction of bare Celery's task rate."""
WORKERS, CONCURRENCY = 2, 500
LIMITED_MODEL, FREE_MODEL = "gpt-5-mini", "unlimited-model"
RATE_LIMITS = f'[{{"model": "{LIMITED_MODEL}", "requests": 1000000, "tokens": 10000000000}}]'


def run(settings: Settings) -> list[Row]:
    calls = 300 if settings.quick else 3000
    with claimed_db() as db:
        figures = asyncio.run(_measure(f"{REDIS_HOST}/{db}", calls))
    rows = _round_trip_rows(figures, calls)
    rows += [_fan_out_row(settings)]
    return rows


def _round_trip_rows(figures: dict[str, Any], calls: int) -> list[Row]:
    rows = []
    for name in ("reserve", "settle"):
        times, trips = figures[name], figures[f"{name}_round_trips"]
        rows.append(
            Row(
                name=f"10. budget {name} per model call",
                figure=statistics.median(times),
                unit="ms",
                baseline=statistics.median(figures["ping"]),
                target=f"<= {TARGET_MS:g} ms, 1 round trip",
                met=statistics.median(times) <= TARGET_MS and trips == [1.0],
                details={
                    "calls": calls,
                    "scopes": 4,
                    "min_ms": min(times),
                    "max_ms": max(times),
                    "p99_ms": _p99(times),
                    "round_trips_per_call": trips[0],
                },
            )
        )
    return rows


def _fan_out_row(settings: Settings) -> Row:
    count, repetitions = (300, 2) if settings.quick else (2000, 3)
    on: list[float] = []
    off: list[float] = []
    bare_rates: list[float] = []
    with (
        bare_workers(settings.workdir, WORKERS, CONCURRENCY) as bare,
        running_fleet(
            settings.workdir, WORKERS, "echo", RHO_AGENT_RATE_LIMITS=RATE_LIMITS
        ) as fleet,
    ):
        _fan_out(fleet, 20, limited=True)  # warm up: agents built, scripts cached
        _fan_out(fleet, 20, limited=False)
        for _ in range(repetitions):
            bare_rates.append(_drain(bare, count))
            on.append(_fan_out(fleet, count, limited=True))
            off.append(_fan_out(fleet, count, limited=False))
    ours, baseline = median(on), median(bare_rates)
    return Row(
        name=f"10. fan-out of {count:,} jobs with budgets and rate limits on",
        figure=ours,
        unit="jobs/s",
        baseline=baseline,
        target=f">= {FAN_OUT_TARGET:g}x bare Celery's task rate",
        met=ours >= FAN_OUT_TARGET * baseline,
        details={
            "on_jobs_per_s": spread(on),
            "off_jobs_per_s": spread(off),
            "bare_tasks_per_s": spread(bare_rates),
        },
    )


def _fan_out(fleet: RunningFleet, count: int, *, limited: bool) -> float:
    config = fleet.config
    config.model = LIMITED_MODEL if limited else FREE_MODEL
    budget = 1e9 if limited else None
    with Stopwatch() as watch:
        prompts = [f"fan {n}" for n in range(count)]
        jobs = fleet.dispatcher.map(prompts, config, batch_max_cost_usd=budget)
        results = fleet.dispatcher.gather(jobs, timeout=600)
    failed = [r.status for r in results if r.status != "completed"]
    if failed:
        raise AssertionError(f"{len(failed)} of {count} jobs did not complete: {failed[:3]}")
    return count / watch.seconds


def _drain(bare: Any, count: int) -> float:
    with Stopwatch() as watch:
        sent = [bare.send_task(bare_celery.NOOP, args=[index]) for index in range(count)]
        for result in sent:
            result.get(timeout=300)
    return count / watch.seconds


async def _measure(url: str, calls: int) -> dict[str, Any]:
    keys = Keys(f"bench{secrets.token_hex(3)}:")
    sync = redis.Redis.from_url(url, decode_responses=True)
    pool = aioredis.ConnectionPool.from_url(
        url, decode_responses=True, connection_class=_CountingConnection
    )
    client = aioredis.Redis(connection_pool=pool)
    try:
        for scope in ("label:team=bench", "fleet"):
            budget = Budget(scope, max_cost_usd=1e12, window_s=86_400)
            set_budget(sync, keys, budget, retention_s=3600)
        ledger = RedisSpendLedger(client, keys, retention_s=3600)
        own = [Budget("job:j-bench", max_cost_usd=1e12), Budget("batch:b-bench", max_tokens=10**15)]
        guard = ledger.guard(["job:j-bench", "batch:b-bench", "label:team=bench", "fleet"], own)
        estimate = CallEstimate(input_tokens=2_000, output_tokens=4_096, cost_usd=0.0123)
        held: list[Reservation] = []

        async def reserve() -> None:
            held.append(await guard.reserve(estimate))

        async def settle() -> None:
            await guard.settle(held.pop(), tokens=2_100, cost_usd=0.004)

        for _ in range(50):  # warm up: the connection, the scripts in Redis' cache
            await reserve()
            await settle()
        ping = await _times(client.ping, calls)
        before = _CountingConnection.sends
        reserve_times = await _times(reserve, calls)
        after_reserve = _CountingConnection.sends
        settle_times = await _times(settle, calls)
        after_settle = _CountingConnection.sends
        return {
            "ping": ping,
            "reserve": reserve_times,
            "settle": settle_times,
            "reserve_round_trips": [(after_reserve - before) / calls],
            "settle_round_trips": [(after_settle - after_reserve) / calls],
        }
    finally:
        for key in sync.scan_iter(keys.pattern()):
            sync.delete(key)
        await client.aclose()
        sync.close()


class _CountingConnection(aioredis.Connection):
    """Counts the requests the client sends (each waits for its reply: one round trip)."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        await super().send_packed_command(command, check_health)


async def _times(step: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await step()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


BENCHMARK = Benchmark("10", "Budget reservation and settlement", run)


def main() -> None:
    import tempfile

    quick = "--quick" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as workdir:
        rows = run(Settings(quick=quick, workdir=workdir))
    for row in rows:
        details = row.details
        if row.unit == "jobs/s":
            print(
                f"{row.name}: {row.figure:.0f} jobs/s ({details['on_jobs_per_s']}); off: "
                f"{details['off_jobs_per_s']}; bare Celery {row.baseline:.0f} tasks/s; "
                f"target met: {row.met}"
            )
            continue
        print(
            f"{row.name}: median {row.figure:.3f} ms (range {details['min_ms']:.3f}-"
            f"{details['max_ms']:.3f} ms, p99 {details['p99_ms']:.3f}); "
            f"{details['round_trips_per_call']:g} round trip(s); PING median "
            f"{row.baseline:.3f} ms; target met: {row.met}"
        )


if __name__ == "__main__":
    main()
