"""Benchmark 9: what the reduce plumbing adds over the map alone.

A map of N typed one-turn jobs is reduced with a small context window, so the tree has a reduce
level and a final level. Every model answer waits ``MODEL_DELAY`` s, so the reducers' own model
calls are visible. The plumbing of a level is the time between the level below finishing and
this level finishing, less the longest of its own jobs (its model calls, which run in parallel);
the last level also counts until ``Reduction.result()`` returns. Measured in embedded mode and on
a one-worker fleet (real Redis). Target: at most 50 ms per level.

As a cross-check, the details hold the end-to-end difference: (map + reduce) minus (map alone)
minus the reducers' own time, median over repetitions (noisier: it subtracts two runs).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from dispatch import Dispatcher, FleetSettings
from dispatch.reduce import Reduction
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, ScriptedResponse
from tests.analysis_support import Finding, Summary, analyst, file_names
from tests.bench.harness import Benchmark, Row, Settings, median, spread
from tests.integration.fleet import running_fleet

MODEL_DELAY = 0.05
PER_LEVEL_TARGET_MS = 50.0
WINDOW = 8_000
"""Small enough that the reduce needs a reduce level and a final level."""


def run(settings: Settings) -> list[Row]:
    files, repetitions = (120, 3) if settings.quick else (400, 5)

    def delayed(body: dict[str, Any]) -> ScriptedResponse:
        return dataclasses.replace(analyst(body), delay=MODEL_DELAY)

    rows = []
    with ScriptedModelServer(responder=delayed, record=False) as server:
        config = AgentConfig(base_url=server.base_url, working_dir=settings.workdir)
        with Dispatcher(settings=FleetSettings(broker_url=None), concurrency=200) as embedded:
            rows.append(_measure("embedded", embedded, config, files, repetitions))
        workers = {
            "w0": {
                "RHO_AGENT_WORKER_CONCURRENCY": "200",
                "RHO_AGENT_ALLOWED_BASE_URLS": server.base_url,  # the key goes only there
            }
        }
        with running_fleet(Path(settings.workdir), workers) as fleet, fleet.dispatcher() as fd:
            rows.append(_measure("fleet", fd, config, files, repetitions))
    return rows


def _measure(
    mode: str, dispatcher: Dispatcher, config: AgentConfig, files: int, repetitions: int
) -> Row:
    small = AgentConfig(
        base_url=config.base_url,
        working_dir=config.working_dir,
        profile="readonly",
        extras={"context_window": WINDOW},
    )
    prompts = [f"Review file {name}" for name in file_names(files)]
    _map_reduce(dispatcher, prompts, config, small)  # warm up
    per_level: list[float] = []
    end_to_end: list[float] = []
    levels = 0
    for _ in range(repetitions):
        started = time.monotonic()
        dispatcher.gather(dispatcher.map(prompts, config, output_schema=Finding), timeout=120)
        map_alone = time.monotonic() - started
        started = time.monotonic()
        reduction, returned_at = _map_reduce(dispatcher, prompts, config, small)
        both = time.monotonic() - started
        gaps, own = _plumbing(dispatcher, reduction, returned_at)
        levels = len(gaps)
        per_level.append(1000 * sum(gaps) / len(gaps))
        end_to_end.append(1000 * (both - map_alone - own) / len(gaps))
    figure = median(per_level)
    return Row(
        name=f"9. reduce plumbing per level, {mode} ({files} typed jobs, {levels} levels)",
        figure=figure,
        unit="ms",
        baseline=None,
        target=f"<= {PER_LEVEL_TARGET_MS:g} ms per level beyond the reducers' model calls",
        met=figure <= PER_LEVEL_TARGET_MS,
        details={
            "per_level_ms": spread(per_level),
            "end_to_end_difference_per_level_ms": spread(end_to_end),
            "model_delay_s": MODEL_DELAY,
            "levels": levels,
        },
    )


def _map_reduce(
    dispatcher: Dispatcher, prompts: list[str], config: AgentConfig, small: AgentConfig
) -> tuple[Reduction, float]:
    jobs = dispatcher.map(prompts, config, output_schema=Finding)
    reduction = dispatcher.reduce(jobs, "Summarise the findings.", small, output_schema=Summary)
    result = reduction.result(timeout=120)
    returned_at = time.time()
    if result.status != "completed" or len(reduction.levels) < 3:
        raise AssertionError(f"the reduce did not run as planned: {result} {reduction.levels}")
    return reduction, returned_at


def _plumbing(
    dispatcher: Dispatcher, reduction: Reduction, returned_at: float
) -> tuple[list[float], float]:
    """Per reduce level: seconds beyond its longest job; and the reducers' own seconds."""
    previous_end = _last_finish(dispatcher, reduction.levels[0].job_ids)[0]
    gaps, own = [], 0.0
    for level in reduction.levels[1:]:
        end, longest = _last_finish(dispatcher, level.job_ids)
        if level is reduction.levels[-1]:
            end = returned_at
        gaps.append(end - previous_end - longest)
        own += longest
        previous_end = end
    return gaps, own


def _last_finish(dispatcher: Dispatcher, job_ids: list[str]) -> tuple[float, float]:
    """The last ``finished_at`` of the jobs, and the longest run among them."""
    infos = [info for info in dispatcher.infos(job_ids) if info is not None]
    last = max(float(info.finished_at or 0.0) for info in infos)
    longest = max(float(info.duration_s or 0.0) for info in infos)
    return last, longest


BENCHMARK = Benchmark("9", "Reduce plumbing over the map alone", run)
