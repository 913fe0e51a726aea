"""Fan-out analysis on the fleet: real Redis, real workers, the scripted model server.

300 files mapped with a schema (5 answers fixed by the corrective turn, 2 that stay invalid), a
reduce that must go hierarchical, and the same analysis in embedded mode giving the same answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch import Dispatcher
from dispatch.batch_run import new_batch_id
from dispatch.report import report_from_fleet
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer
from tests.analysis_support import Finding, Summary, analyst, file_names, severity
from tests.integration.fleet import Fleet, running_fleet

pytestmark = pytest.mark.integration

FILES = 300


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workers = {"wa": {"RHO_AGENT_WORKER_CONCURRENCY": "150"}}
    with running_fleet(tmp_path_factory.mktemp("analysis"), workers) as started:
        yield started


@pytest.fixture
def config(model_server: ScriptedModelServer, tmp_path: Path) -> AgentConfig:
    model_server.responder = analyst
    return AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))


def small_window(config: AgentConfig) -> AgentConfig:
    return AgentConfig(
        base_url=config.base_url,
        working_dir=config.working_dir,
        profile="readonly",
        extras={"context_window": 12_000},
    )


def analyse(dispatcher: Dispatcher, config: AgentConfig) -> dict[str, Any]:
    names = file_names(FILES)
    batch_id = new_batch_id()
    jobs = dispatcher.map(
        [f"Review file {name}" for name in names],
        config,
        output_schema=Finding,
        labels={"batch": batch_id, "level": "map"},
    )
    reduction = dispatcher.reduce(
        jobs,
        "Summarise the findings.",
        small_window(config),
        output_schema=Summary,
        batch_id=batch_id,
    )
    final = reduction.result(timeout=240)
    results = dispatcher.gather(jobs, timeout=10)
    return {"names": names, "jobs": jobs, "results": results, "final": final, "tree": reduction}


def reducer_sources(server: ScriptedModelServer) -> set[str]:
    seen: set[str] = set()
    for request in server.requests:
        first = next(m for m in request.body["messages"] if m["role"] == "user")
        seen.update(re.findall(r"^### (\S+) \(", first["content"], re.M))
    return seen


def check(run: dict[str, Any]) -> tuple[list[tuple[str, int] | str], Summary]:
    """The analysis's answer (per-file findings or failure, and the summary), checked."""
    answers: list[tuple[str, int] | str] = []
    for name, result in zip(run["names"], run["results"], strict=True):
        if "bad-twice" in name:
            assert result.status == "invalid_output", result
            assert result.error is not None and "is not of type 'integer'" in result.error.message
            answers.append(result.status)
        else:
            assert result.status == "completed", result
            assert isinstance(result.output, Finding)
            assert result.output.severity == severity(name)
            answers.append((result.output.path, result.output.severity))
    final = run["final"]
    assert final.status == "completed", final.error
    assert isinstance(final.output, Summary)
    assert final.output.count == FILES
    failed = [
        job.id for job, name in zip(run["jobs"], run["names"], strict=True) if "bad-twice" in name
    ]
    assert sorted(final.output.failed) == sorted(failed)
    levels = run["tree"].levels
    assert (levels[0].kind, levels[-1].kind) == ("map", "final")
    assert any(level.kind == "reduce" for level in levels), "the reduce did not go hierarchical"
    return answers, final.output.model_copy(update={"failed": []})


def test_fleet_and_embedded_give_the_same_analysis(
    fleet: Fleet, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    with fleet.dispatcher() as dispatcher:
        on_fleet = analyse(dispatcher, config)
        report = report_from_fleet(dispatcher, on_fleet["tree"].id, scan=5_000)
    fleet_answers, fleet_summary = check(on_fleet)
    # 300 first answers + one correction for each of the 7 bad files, then the reducers
    map_calls = FILES + 7
    reducers = sum(len(level.job_ids) for level in on_fleet["tree"].levels[1:])
    assert len(model_server.requests) == map_calls + reducers
    assert {job.id for job in on_fleet["jobs"]} <= reducer_sources(model_server)
    tree = on_fleet["tree"]
    assert [level.name for level in report.levels] == [
        "map",
        *[f"reduce-{level.depth}" for level in tree.levels[1:-1]],
        "final",
    ]
    assert len(report.rows) == FILES + sum(len(level.job_ids) for level in tree.levels[1:])
    assert report.levels[0].failed == 2 and all(row.worker for row in report.rows)
    assert report.final is not None and report.final["output"]["count"] == FILES
    with fleet.dispatcher() as reader:
        infos = reader.infos([on_fleet["jobs"][0].id, on_fleet["tree"].levels[-1].job_ids[0]])
    assert all(info is not None and info.worker and info.worker.startswith("wa") for info in infos)

    model_server.reset()
    with Dispatcher(concurrency=64) as embedded:
        in_process = analyse(embedded, config)
    embedded_answers, embedded_summary = check(in_process)
    assert {job.id for job in in_process["jobs"]} <= reducer_sources(model_server)
    assert embedded_answers == fleet_answers
    assert embedded_summary == fleet_summary
