"""Approvals on a real fleet: real Redis, real worker processes, decisions from other processes.

A job whose ``mark`` call needs approval parks as ``awaiting_approval``; the worker that ran it is
killed; ``rho-agent approve`` in a subprocess decides, and the job completes on the other worker
with the tool run exactly once. Denials, expiry and racing or wrong decisions are checked too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch import Job
from rho_agent import AgentConfig
from rho_agent.permissions.profile import PermissionProfile
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, text, tool_call
from tests.cli_support import CLI, one_line_error, rho
from tests.integration.fleet import Fleet, WorkerProcess, running_fleet, wait_until

pytestmark = pytest.mark.integration

APPROVE_MARK = PermissionProfile("approve-mark", approval={"mark"})
SHORT_TTL_WORKER = "wx"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("approvals"), {"wa": {}, "wb": {}}) as started:
        yield started


def short_ttl_worker(fleet: Fleet) -> WorkerProcess:
    """A worker with a 2 s approval time that consumes only its own queue."""
    name = SHORT_TTL_WORKER
    env = fleet.env(RHO_AGENT_WORKER_NAME=name, RHO_AGENT_APPROVAL_TTL="2")
    worker = WorkerProcess(name, env, fleet.queue_of(name), fleet.tmp / f"worker-{name}.log")
    fleet.workers[name] = worker.start()
    worker.wait_ready()
    return worker


def tool_results(body: dict[str, Any]) -> ScriptedResponse:
    """The final answer repeats what the tools answered: the test sees what the model read."""
    return text(" | ".join(m["content"] for m in body["messages"] if m["role"] == "tool"))


def config(server: ScriptedModelServer, tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        base_url=server.base_url, working_dir=str(tmp_path), profile=APPROVE_MARK,
        auto_approve=False,
    )  # fmt: skip


def parked(fleet: Fleet, server: ScriptedModelServer, tmp_path: Path, **options: Any) -> Job:
    """A job whose first ``mark`` call (id ``m1``) waits for approval."""
    server.script(tool_call("mark", {"path": str(tmp_path / "marks"), "n": 1}, id="m1"))
    server.responder = tool_results
    with fleet.dispatcher() as dispatcher:
        job = dispatcher.submit("mark once", config(server, tmp_path), **options)
        assert job.result(timeout=30).status == "awaiting_approval"
    return job


def cli(fleet: Fleet, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return rho([*args, "--broker", fleet.url], fleet.env(), cwd=tmp_path)


def final(fleet: Fleet, job_id: str) -> Any:
    with fleet.dispatcher() as dispatcher:
        job = dispatcher.job(job_id)
        unfinished = ("queued", "running", "awaiting_approval")
        wait_until(lambda: job.info().status not in unfinished, 30, "the job's end")
        return job.result(timeout=5), job.info(), job.state()


def test_approved_from_another_process_after_the_worker_died_it_completes_elsewhere(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    job = parked(fleet, model_server, tmp_path)
    with fleet.dispatcher() as dispatcher:
        info = dispatcher.job(job.id).info()
    assert info.status == "awaiting_approval" and info.attempt == 1
    assert [(c.call_id, c.tool_name, c.arguments) for c in info.pending_approvals] == [
        ("m1", "mark", {"path": str(tmp_path / "marks"), "n": 1})
    ]
    victim = info.worker or ""
    fleet.workers[victim].kill(signal.SIGKILL)
    listed = cli(fleet, tmp_path, "approvals", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["job_id"], r["call_id"], r["tool_name"]) for r in rows] == [(job.id, "m1", "mark")]
    table = cli(fleet, tmp_path, "approvals")
    assert table.returncode == 0 and job.id in table.stdout and "  m1 " in table.stdout
    assert not (tmp_path / "marks").exists(), "nothing ran before the decision"

    decided_at = time.monotonic()
    approved = cli(fleet, tmp_path, "approve", job.id)
    assert approved.returncode == 0, approved.stderr
    result, info, state = final(fleet, job.id)
    print(f"\napprove (CLI process) to completed elsewhere: {time.monotonic() - decided_at:.2f} s")
    assert (result.status, result.text) == ("completed", "marked 1")
    assert (info.attempt, info.worker) == (2, "wb" if victim == "wa" else "wa")
    assert (tmp_path / "marks").read_text() == "1\n", "the approved tool ran exactly once"
    assert [r["type"] for r in state.records].count("tool_start") == 1
    ends = [r["status"] for r in state.records if r["type"] == "run_end"]
    assert ends == ["interrupted", "completed"], "one session, its history intact"
    assert [m["role"] for m in state.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    again = cli(fleet, tmp_path, "approve", job.id)
    assert again.returncode == 2
    assert "is not awaiting approval (it is completed)" in one_line_error(again.stderr)
    fleet.add_worker(victim).wait_ready()


def test_a_denial_reaches_the_model_with_its_reason(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    job = parked(fleet, model_server, tmp_path)
    unknown = cli(fleet, tmp_path, "approve", job.id, "--deny", "nope")
    assert unknown.returncode == 2
    assert "call nope is not pending" in one_line_error(unknown.stderr)
    denied = cli(fleet, tmp_path, "approve", job.id, "--deny", "m1", "--reason", "not today")
    assert denied.returncode == 0, denied.stderr
    result, _, state = final(fleet, job.id)
    assert (result.status, result.text) == ("completed", "Blocked: not today")
    assert not (tmp_path / "marks").exists()
    assert [r["reason"] for r in state.records if r["type"] == "tool_blocked"] == ["not today"]


def test_two_processes_approving_at_once_exactly_one_wins(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    job = parked(fleet, model_server, tmp_path)
    racers = [
        subprocess.Popen(
            [*CLI, "approve", job.id, "--broker", fleet.url],
            env=fleet.env(),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [(racer.wait(60), racer.communicate()[1]) for racer in racers]
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes
    loser = next(stderr for code, stderr in outcomes if code == 2)
    assert "is not awaiting approval" in one_line_error(loser)
    result, info, _ = final(fleet, job.id)
    assert result.status == "completed" and info.attempt == 2
    assert (tmp_path / "marks").read_text() == "1\n", "one decision, one run"


def test_an_expired_approval_is_denied_and_the_job_goes_on(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    short_ttl_worker(fleet)
    job = parked(fleet, model_server, tmp_path, queue=fleet.queue_of(SHORT_TTL_WORKER))
    started = time.monotonic()
    result, info, state = final(fleet, job.id)
    waited = time.monotonic() - started
    print(f"\nparked to completed after expiry (2 s approval time): {waited:.2f} s")
    assert result.status == "completed" and result.text.startswith("Blocked: the approval expired")
    assert not (tmp_path / "marks").exists() and info.attempt == 2
    blocked = [r["reason"] for r in state.records if r["type"] == "tool_blocked"]
    assert len(blocked) == 1 and "RHO_AGENT_APPROVAL_TTL" in blocked[0]
    assert waited < 2 + 0.5 + 5, "TTL + sweep interval + margin"
    late = cli(fleet, tmp_path, "approve", job.id)
    assert late.returncode == 2 and "not awaiting approval" in one_line_error(late.stderr)
