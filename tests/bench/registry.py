"""Every benchmark, in the order the suite runs them. Add a module's ``BENCHMARK`` here."""

from __future__ import annotations

from tests.bench import (
    bench_capacity,
    bench_celery_peers,
    bench_concurrency,
    bench_dispatch,
    bench_events,
    bench_model_cpu,
    bench_overhead,
    bench_reduce,
    bench_spend,
    bench_trace,
)
from tests.bench.harness import Benchmark

BENCHMARKS: tuple[Benchmark, ...] = (
    bench_overhead.BENCHMARK,
    bench_concurrency.BENCHMARK,
    bench_dispatch.BENCHMARK,
    bench_capacity.BENCHMARK,
    bench_events.BENCHMARK,
    bench_trace.BENCHMARK,
    bench_model_cpu.BENCHMARK,
    bench_reduce.BENCHMARK,
    bench_spend.BENCHMARK,
    bench_celery_peers.BENCHMARK,
)
