"""Benchmark 7: trace cost. Appending RECORDS trace records through ``State.append`` (to a JSONL
file, as a session does) and rebuilding the State with ``State.from_jsonl``.

Baselines, same records, same run: appending is compared with the bare minimum of a JSONL trace
(``json.dumps`` one record and write it to an unbuffered file); loading with ``json.loads`` of
every line. An append must cost the same at the end of a long trace as at its start (O(1)): the
flatness figure is the time per record of the last tenth over the first tenth.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rho_agent import State
from rho_agent.trace import JsonlTraceSink
from tests.bench.harness import Benchmark, Row, Settings, Stopwatch, median, spread

RECORDS = 100_000
SLICES = 10
BATCH = 100
FLAT_LIMIT = 1.5
"""The last tenth may cost at most this many times the first tenth per record."""

Spec = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Timings:
    append_means: list[float]
    """Seconds per record for each tenth of the appends, in order (GC pauses included)."""
    append_typical: list[float]
    """The same from the median batch of each tenth (what one append costs there)."""
    append_bare: float
    load: float
    load_bare: float
    load_small: float
    """Seconds per record to load only the first tenth (flatness of loading)."""


def run(settings: Settings) -> list[Row]:
    repetitions = 3 if settings.quick else 5
    runs = [_measure(settings.workdir, number) for number in range(repetitions)]
    append = [sum(t.append_means) / SLICES * 1e6 for t in runs]
    append_bare = [t.append_bare * 1e6 for t in runs]
    flatness = [t.append_typical[-1] / t.append_typical[0] for t in runs]
    load = [t.load * 1e6 for t in runs]
    load_bare = [t.load_bare * 1e6 for t in runs]
    return [
        Row(
            name=f"7. trace append, {RECORDS:,} records",
            figure=median(append),
            unit="us/record",
            baseline=median(append_bare),
            target=f"flat: last tenth <= {FLAT_LIMIT:g}x first",
            met=median(flatness) <= FLAT_LIMIT,
            runs=append,
            baseline_runs=append_bare,
            details={
                "state_append_us": spread(append),
                "json_dumps_write_us": spread(append_bare),
                "last_over_first_tenth": spread(flatness),
                "typical_us_by_tenth": _by_tenth([t.append_typical for t in runs]),
                "mean_us_by_tenth_gc_included": _by_tenth([t.append_means for t in runs]),
            },
        ),
        Row(
            name=f"7b. State.from_jsonl, {RECORDS:,} records",
            figure=median(load),
            unit="us/record",
            baseline=median(load_bare),
            target="report",
            met=None,
            runs=load,
            baseline_runs=load_bare,
            details={
                "from_jsonl_us": spread(load),
                "json_loads_per_line_us": spread(load_bare),
                "per_record_full_over_tenth": spread([t.load / t.load_small for t in runs]),
            },
        ),
    ]


def _by_tenth(runs: list[list[float]]) -> list[float]:
    return [round(median([slices[i] for slices in runs]) * 1e6, 2) for i in range(SLICES)]


def _measure(workdir: str, number: int) -> Timings:
    path = os.path.join(workdir, f"trace-{number}.jsonl")
    specs = list(_records(RECORDS))
    means, typical = _append(specs, path)
    bare_path = os.path.join(workdir, f"trace-bare-{number}.jsonl")
    with open(path, "rb") as trace:
        data = trace.read()
    small = b"".join(data.splitlines(keepends=True)[: RECORDS // SLICES])
    load_small = _load(small)  # first, so neither load reuses memory the other freed
    return Timings(
        append_means=means,
        append_typical=typical,
        append_bare=_append_bare(specs, bare_path),
        load=_load(data),
        load_bare=_load_bare(data),
        load_small=load_small,
    )


def _append(specs: list[Spec], path: str) -> tuple[list[float], list[float]]:
    """Per tenth of the appends: mean seconds per record, and the median over batches of BATCH
    records (robust to the cyclic GC's occasional full collections, which CPython amortises)."""
    state = State("bench-trace")
    sink = JsonlTraceSink(path)
    state.add_sink(sink)
    size = len(specs) // SLICES
    means: list[float] = []
    typical: list[float] = []
    try:
        for start in range(0, size * SLICES, size):
            batches = [
                _append_batch(state, specs[at : at + BATCH]) / BATCH
                for at in range(start, start + size, BATCH)
            ]
            means.append(sum(batches) / len(batches))
            typical.append(median(batches))
    finally:
        sink.close()
    if len(state.records) != size * SLICES:
        raise AssertionError(
            f"appended {size * SLICES} records, the state holds {len(state.records)}"
        )
    return means, typical


def _append_batch(state: State, specs: list[Spec]) -> float:
    began = time.perf_counter()
    for record_type, fields in specs:
        state.append(record_type, **fields)
    return time.perf_counter() - began


def _append_bare(specs: list[Spec], path: str) -> float:
    with open(path, "ab", buffering=0) as trace, Stopwatch() as watch:
        for record_type, fields in specs:
            record = {"v": 1, "type": record_type, "ts": "2026-01-01T00:00:00+00:00", **fields}
            trace.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
    return watch.seconds / len(specs)


def _load(data: bytes) -> float:
    count = data.count(b"\n")
    with Stopwatch() as watch:
        state = State.from_jsonl(data)
    if len(state.records) != count:
        raise AssertionError(f"from_jsonl read {len(state.records)} of {count} records")
    del state
    gc.collect()
    return watch.seconds / count


def _load_bare(data: bytes) -> float:
    lines = data.decode().splitlines()
    with Stopwatch() as watch:
        records = [json.loads(line) for line in lines]
    del records
    gc.collect()
    return watch.seconds / len(lines)


def _records(count: int) -> Iterator[Spec]:
    """A realistic mix: runs of tool turns (model call, assistant with a call, tool start/end,
    tool result), each run opened by a prompt and closed by an answer."""
    produced = 0
    turn = 0
    while produced < count:
        for spec in _run(turn):
            if produced == count:
                return
            yield spec
            produced += 1
        turn += 1


def _run(number: int) -> Iterator[Spec]:
    usage = {"input_tokens": 1200, "output_tokens": 80, "cached_tokens": 0, "reasoning_tokens": 0}
    yield "run_start", {"run": number + 1, "prompt": f"Task {number}: look around and report."}
    yield "message", {"role": "user", "content": f"Task {number}: look around and report."}
    for step in range(4):
        call_id = f"call_{number}_{step}"
        arguments = {"command": f"ls -la src/module_{step}", "timeout": 30}
        yield "model_call", {"model": "gpt-5-mini", "usage": usage, "cost_usd": 0.0002}
        yield (
            "message",
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "bash", "arguments": json.dumps(arguments)},
                    }
                ],
            },
        )
        yield "tool_start", {"call_id": call_id, "tool_name": "bash", "arguments": arguments}
        yield "tool_end", {"call_id": call_id, "tool_name": "bash", "success": True, "metadata": {}}
        output = "\n".join(f"-rw-r--r-- 1 user user {n * 97} file_{n}.py" for n in range(12))
        yield "message", {"role": "tool", "tool_call_id": call_id, "content": output}
    yield "model_call", {"model": "gpt-5-mini", "usage": usage, "cost_usd": 0.0002}
    yield "message", {"role": "assistant", "content": f"Run {number} done: twelve files found."}
    yield "run_end", {"status": "completed", "usage": usage, "text": "done"}


BENCHMARK = Benchmark("7", "Trace cost", run)
