"""Batch files (JSONL and YAML) and run_batch: progress, JSONL results, failures counted."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from dispatch import Dispatcher, Job, JobInfo, JobSpecError
from dispatch.batch import BatchProgress, load_batch, run_batch
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, behaviour


def test_jsonl_entries_with_overrides(tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    lines = [
        json.dumps("plain prompt"),
        json.dumps({"prompt": "with model", "model": "gpt-5", "labels": {"row": "2"}}),
        "",
        json.dumps({"prompts": ["a", "b"], "config": {"profile": "developer"}, "timeout_s": 5}),
        json.dumps({"prompt": "go on", "session_id": "s-1", "priority": 3}),
    ]
    batch.write_text("\n".join(lines), encoding="utf-8")
    specs = load_batch(batch, AgentConfig(model="gpt-5-mini"))
    assert [spec.prompts for spec in specs] == [
        ["plain prompt"],
        ["with model"],
        ["a", "b"],
        ["go on"],
    ]
    assert [spec.model for spec in specs] == ["gpt-5-mini", "gpt-5", "gpt-5-mini", "gpt-5-mini"]
    assert specs[1].labels == {"row": "2"}
    assert specs[2].profile_label == "developer" and specs[2].timeout_s == 5
    assert specs[3].continue_session and specs[3].session_id == "s-1" and specs[3].priority == 3


def test_yaml_with_shared_config(tmp_path: Path) -> None:
    batch = tmp_path / "batch.yaml"
    batch.write_text(
        "config:\n  model: gpt-5-nano\n  profile: readonly\n"
        "jobs:\n  - first\n  - prompt: second\n    model: gpt-5\n",
        encoding="utf-8",
    )
    specs = load_batch(batch)
    assert [(spec.prompts[0], spec.model) for spec in specs] == [
        ("first", "gpt-5-nano"),
        ("second", "gpt-5"),
    ]
    plain = tmp_path / "list.yml"
    plain.write_text("- one\n- two\n", encoding="utf-8")
    assert len(load_batch(plain)) == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("b.jsonl", '{"prompt": "ok"}\n{broken', "line 2 is not valid JSON"),
        ("b.jsonl", '{"prompt": "x", "modle": "y"}', "unknown key(s) ['modle']"),
        ("b.jsonl", '{"model": "gpt-5"}', "give 'prompt'"),
        ("b.jsonl", '{"prompt": "x", "model": 5}', "field 'model'"),
        ("b.jsonl", "\n\n", "has no entries"),
        ("b.txt", "x", "must end in .jsonl"),
        ("b.yaml", "jobs: 3", "needs 'jobs'"),
        ("b.jsonl", '{"prompt": "x", "config": {"extras": {"api_key": "k"}}}', "secret"),
        ("b.jsonl", '{"prompt": "x", "config": [1]}', "'config' must be a mapping"),
        ("b.jsonl", '"caf\\udce9"', "not valid Unicode text"),
        ("b.yaml", "- {prompt: x, config: text}", "'config' must be a mapping"),
    ],
)
def test_bad_batch_files_say_where(tmp_path: Path, name: str, content: str, message: str) -> None:
    batch = tmp_path / name
    batch.write_text(content, encoding="utf-8")
    with pytest.raises(JobSpecError) as caught:
        load_batch(batch)
    assert message in str(caught.value)
    assert name in str(caught.value)


def test_a_batch_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    batch = tmp_path / "latin1.jsonl"
    batch.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(JobSpecError) as caught:
        load_batch(batch)
    assert "latin1.jsonl" in str(caught.value) and "UTF-8" in str(caught.value)


def test_run_batch_reports_progress_and_writes_results(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo")
    batch = tmp_path / "batch.jsonl"
    entries = [{"prompt": f"p{index}"} for index in range(6)]
    entries.append({"prompt": "continue", "session_id": "missing-session"})
    batch.write_text("\n".join(json.dumps(entry) for entry in entries), encoding="utf-8")
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    seen: list[BatchProgress] = []
    output = io.StringIO()
    with Dispatcher(concurrency=3) as dispatcher:
        outcome = run_batch(
            dispatcher, load_batch(batch, config), on_progress=seen.append, output=output,
            poll_s=0.02,
        )  # fmt: skip
    assert not outcome.ok
    assert (outcome.progress.completed, outcome.progress.failed) == (6, 1)
    assert [result.text for result in outcome.results[:6]] == [f"Echo: p{i}" for i in range(6)]
    assert seen[-1].finished == 7 and seen[-1].input_tokens > 0 and seen[-1].cost_usd > 0
    lines = [json.loads(line) for line in output.getvalue().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(7))
    failed = next(line for line in lines if line["index"] == 6)
    assert failed["status"] == "error" and "missing-session" in failed["error"]


@pytest.mark.timeout(10)
def test_a_batch_job_lost_for_good_is_written_as_an_error(tmp_path: Path) -> None:
    """A job whose record Redis lost, and that the fan-in gave up on, ends the batch's wait on
    it with an error line (polling its missing record would wait forever)."""
    from dispatch.batch_run import BatchRun
    from dispatch.errors import JobLost

    class Forgetful(Dispatcher):
        def infos(self, job_ids: Sequence[str]) -> list[JobInfo | None]:
            return [None for _ in job_ids]

        def resend_vanished(self, jobs: Sequence[Job]) -> dict[str, JobLost]:
            return {job.id: JobLost(f"job {job.id} is lost: gone; submit it again") for job in jobs}

    output = io.StringIO()
    with Forgetful() as dispatcher:
        batch = BatchRun(dispatcher, 1, output=output, poll_s=0.01)
        job = Job("j-1", "s-1", dispatcher._core)
        batch.pending[0] = batch.jobs[0] = job
        outcome = batch.wait()
    [line] = [json.loads(text) for text in output.getvalue().splitlines()]
    assert (line["status"], line["error"]) == ("error", "job j-1 is lost: gone; submit it again")
    [result] = outcome.results
    assert result.error is not None and result.error.type == "JobLost"
    assert outcome.progress.failed == 1
