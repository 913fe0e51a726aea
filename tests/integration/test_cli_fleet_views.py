"""The CLI's fleet views, through the real command line, a real Redis and a real worker.

``rho-agent sessions [show|export] --broker`` (or ``$RHO_AGENT_BROKER_URL``) reads the sessions
dispatched jobs wrote; ``dispatch``, ``jobs``, ``watch`` and ``sessions`` print prompts, tool
output, answers and errors that look like rich markup verbatim.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, error, text, tool_call
from tests.integration.fleet import CANARY_KEY as CANARY
from tests.integration.fleet import REPO_ROOT, Fleet, running_fleet, wait_until

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-c", "from rho_agent.cli import main; main()"]
MARKUP = ("[/red]", "[bold]x[/]", "[link=file:///etc/passwd]")
PROMPT = "[/red] [bold]x[/] read notes [link=file:///etc/passwd]"
FAILING = "[/red] this one fails [bold]x[/]"
SLOW = "[/red] slow [bold]x[/] [link=file:///etc/passwd]"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("fleet"), {"wv": {}}) as started:
        yield started


def respond(body: dict[str, Any]) -> ScriptedResponse:
    messages = body["messages"]
    prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    if prompt == SLOW:
        return text("late", delay=8.0)
    if prompt == FAILING:
        return error(400, "[/red] refused [bold]x[/] [link=file:///etc/passwd]")
    if messages[-1]["role"] == "tool":
        return text("answer: [/red] [bold]x[/] [link=file:///etc/passwd]")
    return tool_call("read", {"path": "notes.txt"})


def rho(args: list[str], fleet: Fleet, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**fleet.env(), "COLUMNS": "1000", **env}
    return subprocess.run(
        [*CLI, *args], env=environment, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def assert_verbatim(output: str) -> None:
    for markup in MARKUP:
        assert markup in output, f"{markup!r} was eaten or changed in:\n{output}"
    assert "Traceback" not in output and "MarkupError" not in output


def test_dispatched_jobs_sessions_and_markup_through_the_cli(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = respond
    (tmp_path / "notes.txt").write_text(
        "[/red] closes nothing\n[bold]x[/] [link=file:///etc/passwd]\n"
    )
    config = tmp_path / "agent.yaml"
    config.write_text(f"base_url: {model_server.base_url}\nworking_dir: {tmp_path}\n")
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps({"prompt": PROMPT}) + "\n" + json.dumps({"prompt": FAILING}))

    dispatched = rho(["dispatch", str(batch), "-c", str(config), "--broker", fleet.url], fleet)
    assert dispatched.returncode == 1, dispatched.stderr  # the second job fails
    ok, failed = (json.loads(line) for line in dispatched.stdout.splitlines())
    assert ok["status"] == "completed" and failed["status"] == "error"
    assert "Traceback" not in dispatched.stderr

    jobs = rho(["jobs", "--broker", fleet.url], fleet)
    assert jobs.returncode == 0, jobs.stderr
    assert "[/red] [bold]x[/] read notes" in jobs.stdout and "Traceback" not in jobs.stdout

    watched = rho(["watch", ok["job_id"], "--broker", fleet.url], fleet)
    assert watched.returncode == 0, watched.stderr
    assert_verbatim(watched.stdout)  # the answer
    assert "[/red] closes nothing" in watched.stdout  # the tool result's first line
    watched_error = rho(["watch", failed["job_id"], "--broker", fleet.url], fleet)
    assert "[/red] refused [bold]x[/] [link=file:///etc/passwd]" in watched_error.stdout
    assert "Traceback" not in watched_error.stdout + watched_error.stderr

    unknown = rho(["watch", "[/red]", "--broker", fleet.url], fleet)
    assert unknown.returncode != 0 and "[/red]" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    # The sessions dispatched jobs wrote, read through RedisSessionStore: --broker, or the env.
    listed = rho(["sessions", "--broker", fleet.url], fleet)
    assert listed.returncode == 0, listed.stderr
    assert ok["session_id"] in listed.stdout and failed["session_id"] in listed.stdout
    assert PROMPT in listed.stdout
    from_env = rho(["sessions"], fleet, RHO_AGENT_BROKER_URL=fleet.url)
    assert ok["session_id"] in from_env.stdout

    shown = rho(["sessions", "show", ok["session_id"]], fleet)  # the env names the broker
    assert shown.returncode == 0, shown.stderr
    assert_verbatim(shown.stdout)
    assert "[/red] closes nothing" in shown.stdout and "run completed" in shown.stdout
    shown_error = rho(["sessions", "show", failed["session_id"]], fleet)
    assert "[/red] refused [bold]x[/]" in shown_error.stdout

    exported = rho(["sessions", "export", ok["session_id"], "--broker", fleet.url], fleet)
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    assert document["session_id"] == ok["session_id"]
    assert CANARY not in exported.stdout + shown.stdout


def test_sessions_without_a_reachable_broker_is_one_line(fleet: Fleet, tmp_path: Path) -> None:
    down = rho(["sessions", "--broker", "redis://127.0.0.1:1/0"], fleet)
    assert down.returncode == 3
    assert down.stderr.startswith("error: cannot read the fleet's sessions: Redis is unreachable")
    local = rho(["sessions", "--dir", str(tmp_path)], fleet)  # --dir wins over the env
    assert local.returncode == 0 and f"No sessions in {tmp_path}" in local.stdout


def test_fleet_status_shows_a_running_jobs_prompt_verbatim(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = respond
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    with fleet.dispatcher() as dispatcher:
        job = dispatcher.submit(SLOW, config)
        wait_until(lambda: job.info().status == "running", 20, "the job to start")
        status = rho(["fleet", "status", "--broker", fleet.url], fleet)
        job.cancel()
    assert status.returncode == 0, status.stderr
    assert job.id in status.stdout and SLOW in status.stdout
    assert "Traceback" not in status.stdout + status.stderr
