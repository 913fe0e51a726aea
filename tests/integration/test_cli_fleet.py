"""The CLI against a real fleet (Redis, worker processes, the scripted model server), run as a
user runs it: failure reasons everywhere, Ctrl+C, ``results``, ``--resume``, the workers choose
the model, tables that keep IDs whole, ``--json``."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rho_agent.testing import ScriptedModelServer, behaviour
from tests.cli_support import cli_env, rho, start_rho
from tests.integration.fleet import Fleet, free_port, running_fleet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, _shared_model_server: ScriptedModelServer
) -> Iterator[Fleet]:
    workers = {
        "up": {"OPENAI_BASE_URL": _shared_model_server.base_url},
        "down": {"OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"},
    }
    with running_fleet(tmp_path_factory.mktemp("cli-fleet"), workers) as started:
        yield started


def fleet_env(fleet: Fleet, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A dispatching shell: the fleet's settings, and no model key or URL."""
    env = fleet.env()
    keep = ("RHO_AGENT_BROKER_URL", "RHO_AGENT_KEY_PREFIX", "RHO_AGENT_QUEUE", "PYTHONPATH")
    return cli_env(tmp_path, **{name: env[name] for name in keep}, **extra)


def write_batch(path: Path, entries: list[Any]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")
    return path


def lines(path: Path) -> dict[int, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {row["index"]: row for row in rows}


def test_a_failed_job_says_why_in_results_jobs_and_watch(fleet: Fleet, tmp_path: Path) -> None:
    env = fleet_env(fleet, tmp_path)
    batch = write_batch(tmp_path / "b.jsonl", [{"prompt": "x", "queue": fleet.queue_of("down")}])
    out = tmp_path / "results.jsonl"
    done = rho(["dispatch", str(batch), "-o", str(out)], env)
    assert done.returncode == 3, done.stderr  # every failure: the model endpoint is unreachable
    line = lines(out)[0]
    assert line["status"] == "error"
    assert line["error"].startswith("ModelError: cannot reach the model API"), line
    listed = json.loads(rho(["jobs", "--json"], env).stdout)
    info = next(job for job in listed if job["job_id"] == line["job_id"])
    assert info["error"] == line["error"]
    table = rho(["jobs"], {**env, "COLUMNS": "400"}).stdout
    assert "cannot reach the model API" in table
    watched = rho(["watch", line["job_id"]], env)
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.rstrip().splitlines()[-1] == line["error"]


def test_ctrl_c_summary_then_results_then_resume(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo", delay=3.0)
    env = fleet_env(fleet, tmp_path)
    queue = fleet.queue_of("up")
    entries: list[Any] = [{"prompt": f"p{index}", "queue": queue} for index in range(3)]
    entries.append({"prompt": "continue", "session_id": "no-such-session", "queue": queue})
    batch = write_batch(tmp_path / "b.jsonl", entries)
    out = tmp_path / "results.jsonl"
    process = start_rho(["dispatch", str(batch), "-o", str(out)], env, tmp_path)
    deadline = time.monotonic() + 30
    while len(model_server.requests) < 3:  # every job that calls the model is running
        assert time.monotonic() < deadline, "the jobs did not start"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    batch_id = stderr.split("interrupted: batch ", 1)[1].split(":", 1)[0]
    assert "jobs are still queued or running on the fleet; they go on." in stderr
    assert f"rho-agent results {batch_id} -o {out}" in stderr
    assert f"rho-agent dispatch {batch} --resume {batch_id} -o {out}" in stderr

    early = rho(["results", batch_id], env)
    assert early.returncode == 1 and "still queued or running" in early.stderr

    collected = rho(["results", batch_id, "-o", str(out), "--wait"], env)
    assert collected.returncode == 1, collected.stderr  # one entry failed
    rows = lines(out)
    assert [rows[index]["status"] for index in range(4)] == ["completed"] * 3 + ["error"]
    assert [rows[index]["text"] for index in range(3)] == ["Echo: p0", "Echo: p1", "Echo: p2"]
    assert "no-such-session" in rows[3]["error"]

    calls = len(model_server.requests)
    resumed = rho(["dispatch", str(batch), "--resume", batch_id, "-o", str(out)], env)
    assert resumed.returncode == 1, resumed.stderr
    assert "(3 already completed in" in resumed.stderr
    again = lines(out)
    assert [again[index]["job_id"] for index in range(3)] == [rows[i]["job_id"] for i in range(3)]
    assert again[3]["job_id"] != rows[3]["job_id"], "the failed entry was not sent again"
    assert len(model_server.requests) == calls, "a completed entry ran again"


def test_with_a_broker_the_workers_choose_the_model(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo")
    env = fleet_env(fleet, tmp_path)  # no OPENAI_API_KEY here: the workers hold the keys
    batch = write_batch(tmp_path / "b.jsonl", [{"prompt": "hello", "queue": fleet.queue_of("up")}])
    done = rho(["dispatch", str(batch)], env)
    assert done.returncode == 0, done.stderr
    assert "offline" not in done.stderr
    assert json.loads(done.stdout)["text"] == "Echo: hello"
    assert len(model_server.requests) == 1, "the worker did not call its own model endpoint"
    refused = rho(["dispatch", str(batch), "--offline"], env)
    assert refused.returncode == 2 and "--offline" in refused.stderr


def test_tables_keep_ids_whole_at_any_width(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo", delay=8.0)  # running while the tables are read
    env = fleet_env(fleet, tmp_path)
    entry = {"prompt": "a long prompt " * 10, "queue": fleet.queue_of("up")}
    batch = write_batch(tmp_path / "b.jsonl", [entry])
    process = start_rho(["dispatch", str(batch)], env, tmp_path)
    deadline = time.monotonic() + 30
    while not model_server.requests:
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)
    try:
        narrow = {**env, "COLUMNS": "50"}
        status = json.loads(rho(["fleet", "status", "--json"], env).stdout)
        in_flight = [job["job_id"] for job in status["in_flight"]]
        assert in_flight, status
        shown = rho(["fleet", "status"], narrow).stdout
        assert all(job_id in shown for job_id in in_flight), shown
        assert all(worker["name"] in shown for worker in status["workers"]), shown
        listed = json.loads(rho(["jobs", "--json", "-n", "5"], env).stdout)
        table = rho(["jobs", "-n", "5"], narrow).stdout
        assert listed and all(job["job_id"] in table for job in listed), table
    finally:
        process.communicate(timeout=60)
