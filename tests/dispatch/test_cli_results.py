"""Results are never lost (embedded mode, the real ``rho-agent`` process): Ctrl+C records the
unfinished jobs as ``cancelled`` and says how to go on, and ``--resume`` sends only what did not
complete. (A failed run leaving ``-o`` untouched: tests/dispatch/test_cli_errors.py.)"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from rho_agent.testing import ScriptedModelServer, behaviour
from tests.cli_support import cli_env, rho, start_rho


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_ctrl_c_records_unfinished_jobs_as_cancelled_and_resume_finishes_the_batch(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo", delay=0.6)
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(f'"p{index}"\n' for index in range(4)), encoding="utf-8")
    out = tmp_path / "results.jsonl"
    env = cli_env(tmp_path, OPENAI_API_KEY="sk-test")
    args = ["dispatch", str(batch), "-o", str(out), "--base-url", model_server.base_url]
    process = start_rho([*args, "--concurrency", "1"], env, tmp_path)
    deadline = time.monotonic() + 30
    while len(model_server.requests) < 2:  # the first job is done, the second one running
        assert time.monotonic() < deadline, "the batch did not start"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl+C in a terminal does
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    first = lines(out)
    assert sorted(line["index"] for line in first) == [0, 1, 2, 3]
    statuses = {line["index"]: line["status"] for line in first}
    assert statuses[0] == "completed" and statuses[3] == "cancelled"
    cancelled = [line for line in first if line["status"] == "cancelled"]
    assert all("interrupted" in line["error"] for line in cancelled)
    batch_id = first[0]["batch"]
    assert all(line["batch"] == batch_id for line in first)
    assert f"interrupted: batch {batch_id}" in stderr
    assert f"{len(cancelled)} jobs that had not finished are recorded as cancelled" in stderr
    assert f"--resume {batch_id} -o {out}" in stderr

    sent_before = len(model_server.requests)
    model_server.responder = behaviour("echo")
    done = rho([*args, "--resume", batch_id], env)
    assert done.returncode == 0, done.stderr
    second = {line["index"]: line for line in lines(out)}
    assert sorted(second) == [0, 1, 2, 3]
    assert all(line["status"] == "completed" for line in second.values())
    kept = [line for line in first if line["status"] == "completed"]
    assert all(second[line["index"]]["job_id"] == line["job_id"] for line in kept)
    assert len(model_server.requests) - sent_before == len(cancelled), "completed jobs re-ran"


def test_a_results_file_is_not_replaced_when_no_result_was_written(tmp_path: Path) -> None:
    """A fleet batch interrupted before any job finished (or `results` while all still run)
    leaves an existing -o file as it was: it is replaced only once results exist."""
    from rho_agent.cli._results_file import ResultsFile

    out = tmp_path / "results.jsonl"
    out.write_text('{"index": 0, "batch": "earlier", "status": "completed"}\n', encoding="utf-8")
    before = out.read_bytes()
    ResultsFile(out, "b-new").commit()
    assert out.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["results.jsonl"]
