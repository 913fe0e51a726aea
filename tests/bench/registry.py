"""Every benchmark, in the order the suite runs them. Add a module's ``BENCHMARK`` here."""

from __future__ import annotations

from tests.bench import bench_concurrency, bench_model_cpu, bench_overhead, bench_trace
from tests.bench.harness import Benchmark

BENCHMARKS: tuple[Benchmark, ...] = (
    bench_overhead.BENCHMARK,
    bench_concurrency.BENCHMARK,
    bench_trace.BENCHMARK,
    bench_model_cpu.BENCHMARK,
)
