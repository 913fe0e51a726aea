"""Every benchmark, in the order the suite runs them. Add a module's ``BENCHMARK`` here."""

from __future__ import annotations

import bench_concurrency
import bench_model_cpu
import bench_overhead
import bench_trace
from harness import Benchmark

BENCHMARKS: tuple[Benchmark, ...] = (
    bench_overhead.BENCHMARK,
    bench_concurrency.BENCHMARK,
    bench_trace.BENCHMARK,
    bench_model_cpu.BENCHMARK,
)
