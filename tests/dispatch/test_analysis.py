"""Typed fan-out and map-reduce in embedded mode (the same code paths the fleet runs)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch import Dispatcher, FleetError, JobSpecError, JobTimeout
from dispatch.batch import load_batch
from dispatch.spec import JobSpec
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, error, structured
from tests.analysis_support import Finding, Summary, analyst, file_names, severity


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    with Dispatcher(concurrency=64) as embedded:
        yield embedded


@pytest.fixture
def config(model_server: ScriptedModelServer, tmp_path: Path) -> AgentConfig:
    model_server.responder = analyst
    return AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))


def map_files(dispatcher: Dispatcher, config: AgentConfig, total: int) -> tuple[list[str], Any]:
    names = file_names(total)
    jobs = dispatcher.map([f"Review file {name}" for name in names], config, output_schema=Finding)
    return names, jobs


def reducer_prompts(server: ScriptedModelServer) -> list[str]:
    prompts = []
    for request in server.requests:
        first = next(m for m in request.body["messages"] if m["role"] == "user")
        if "### " in first["content"]:
            prompts.append(first["content"])
    return prompts


def test_300_files_mapped_with_a_schema(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    names, jobs = map_files(dispatcher, config, 300)
    results = dispatcher.gather(jobs, timeout=120)
    by_status: dict[str, int] = {}
    for result in results:
        by_status[result.status] = by_status.get(result.status, 0) + 1
    assert by_status == {"completed": 298, "invalid_output": 2}
    for name, result in zip(names, results, strict=True):
        if "bad-twice" in name:
            assert result.output is None and result.error is not None
            assert result.error.type == "invalid_output"
            assert "'high' is not of type 'integer'" in result.error.message
            continue
        assert isinstance(result.output, Finding)
        assert (result.output.path, result.output.severity) == (name, severity(name))
    # 300 first answers, one correction for each of the 5 + 2 bad files, nothing more
    assert len(model_server.requests) == 307


def test_a_reduce_that_must_go_hierarchical(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    names, jobs = map_files(dispatcher, config, 120)
    small = AgentConfig(
        base_url=config.base_url,
        working_dir=config.working_dir,
        profile="readonly",
        extras={"context_window": 6000},
    )
    reduction = dispatcher.reduce(jobs, "Summarise the findings.", small, output_schema=Summary)
    final = reduction.result(timeout=120)
    assert final.status == "completed", final.error
    assert isinstance(final.output, Summary)
    assert final.output.count == 120
    bad = [job.id for job, name in zip(jobs, names, strict=True) if "bad-twice" in name]
    assert sorted(final.output.failed) == sorted(bad)
    kinds = [level.kind for level in reduction.levels]
    assert kinds[0] == "map" and kinds[-1] == "final" and "reduce" in kinds
    first_level = reduction.levels[1]
    assert len(first_level.job_ids) > 1
    prompts = reducer_prompts(model_server)
    seen = {job_id for prompt in prompts for job_id in re.findall(r"^### (\S+) ", prompt, re.M)}
    assert {job.id for job in jobs} <= seen  # every map result reached a reducer
    assert sum(len(group) for group in first_level.groups) == len(jobs)
    assert reduction.progress()[-1] == ("final", 1, 1)


def test_a_failed_reducer_is_listed_to_the_final_one(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    _, jobs = map_files(dispatcher, config, 60)
    doomed = jobs[0].id

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        first = next(m for m in body["messages"] if m["role"] == "user")["content"]
        if f"### {doomed} " in first and "part 1 of" in first:
            return error(400, "the reducer's model refused")
        return analyst(body)

    model_server.responder = respond
    small = AgentConfig(
        base_url=config.base_url, working_dir=config.working_dir, extras={"context_window": 6000}
    )
    reduction = dispatcher.reduce(jobs, "Summarise.", small, output_schema=Summary)
    final = reduction.result(timeout=60)
    first_level = reduction.levels[1]
    assert first_level.failed == 1 and len(first_level.job_ids) > 1
    assert isinstance(final.output, Summary)
    assert first_level.job_ids[0] in final.output.failed  # the failed reducer, named
    assert final.output.count == 60 - len(first_level.groups[0]) + 1
    final_prompt = reducer_prompts(model_server)[-1]
    assert f"### {first_level.job_ids[0]} (FAILED: error)" in final_prompt
    assert "refused" in final_prompt


def test_everything_that_fits_is_reduced_once(dispatcher: Dispatcher, config: AgentConfig) -> None:
    _, jobs = map_files(dispatcher, config, 20)
    reduction = dispatcher.reduce(jobs, "Summarise.", config, output_schema=Summary)
    final = reduction.result(timeout=60)
    assert [level.kind for level in reduction.levels] == ["map", "final"]
    assert isinstance(final.output, Summary) and final.output.count == 20


def test_reduce_takes_results_too(dispatcher: Dispatcher, config: AgentConfig) -> None:
    _, jobs = map_files(dispatcher, config, 10)
    results = dispatcher.gather(jobs, timeout=60)
    final = dispatcher.reduce(results, "Summarise.", config, output_schema=Summary).result(60)
    assert isinstance(final.output, Summary) and final.output.count == 10
    assert final.output.failed == ["result-8", "result-9"]  # the two bad-twice files


def test_cancel_stops_the_whole_tree(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = lambda body: structured(
        {"path": "x", "severity": 1, "note": ""}, delay=30
    )
    jobs = dispatcher.map(["Review file a", "Review file b"], config, output_schema=Finding)
    reduction = dispatcher.reduce(jobs, "Summarise.", config)
    assert reduction.cancel() == 2
    final = reduction.result(timeout=20)
    assert final.status == "cancelled"
    assert [level.kind for level in reduction.levels] == ["map"]
    assert {job.status() for job in jobs} == {"cancelled"}


def test_an_async_wait_that_times_out_leaves_the_tree_running(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = lambda body: structured(
        {"path": "x", "severity": 1, "note": ""}, delay=0.5
    )
    jobs = dispatcher.map(["Review file a"], config, output_schema=Finding)
    reduction = dispatcher.reduce(jobs, "Summarise.", config)
    with pytest.raises(JobTimeout, match="keeps running"):
        asyncio.run(reduction.aresult(timeout=0.05))
    assert reduction.result(timeout=30).status == "completed"


def test_bad_reduce_calls_fail_at_once(dispatcher: Dispatcher, config: AgentConfig) -> None:
    with pytest.raises(FleetError, match="at least one job"):
        dispatcher.reduce([], "Summarise.", config)
    with pytest.raises(FleetError, match="needs a prompt"):
        dispatcher.reduce([], " ", config)
    with pytest.raises(JobSpecError, match="priority"):
        dispatcher.reduce([], "Summarise.", config, priority=99)


def test_a_job_spec_carries_the_schema_as_content(tmp_path: Path) -> None:
    schema_file = tmp_path / "finding.json"
    schema_file.write_text('{"type": "object", "required": ["path"]}')
    batch = tmp_path / "batch.jsonl"
    batch.write_text(
        '{"prompt": "a", "output_schema": "finding.json"}\n'
        '{"prompt": "b", "output_schema": {"type": "array"}}\n'
        '"c"\n'
    )
    specs = load_batch(batch, AgentConfig(), output_schema={"type": "string"})
    assert [spec.output_schema for spec in specs] == [
        {"type": "object", "required": ["path"]},
        {"type": "array"},
        {"type": "string"},
    ]
    with pytest.raises(JobSpecError, match="not a valid JSON schema"):
        JobSpec.decode({**specs[0].encode(), "output_schema": {"type": 5}})
