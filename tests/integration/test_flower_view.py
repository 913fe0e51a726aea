"""Flower as a user sees it: a real Flower on two real workers, read by headless Chromium.

Each worker must show once, under its Celery node name (``wa@host``), also while its jobs send
progress events; each task row must show the prompt's start and the labels in the args column.
The test checks Flower's HTTP API and the pages' DOM after their scripts ran, and leaves PNG
screenshots of both pages in its temporary directory for a human look.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from dispatch import Dispatcher
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, text, tool_call
from tests.integration.fleet import (
    CANARY_KEY,
    REPO_ROOT,
    Fleet,
    free_port,
    running_fleet,
    wait_until,
)

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
PROMPTS = {
    "wa": "Summarise the quarterly report for Acme and list three risks in it",
    "wb": "Compare the two onboarding guides sk-abcdefghijklmnopqrstuvwx and merge them",
}
NODES = {name: f"{name}@{socket.gethostname()}" for name in PROMPTS}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("flower"), {"wa": {}, "wb": {}}) as started:
        yield started


@pytest.fixture(scope="module")
def flower(fleet: Fleet) -> Iterator[str]:
    port = free_port()
    code = f"from workers.ops.launch import run_flower; run_flower(port={port})"
    log = (fleet.tmp / "flower.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=fleet.env(FLOWER_UNAUTHENTICATED_API="true"),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get(f"{url}/healthcheck") == "OK", 30, "Flower start")
        # Flower asks the workers to send task events every few seconds: wait until both do.
        wait_until(lambda: set(NODES.values()) <= set(api(f"{url}/api/workers?status=1")), 30)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
        log.close()


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def api(url: str) -> Any:
    return json.loads(get(url) or "{}")


def chromium(url: str, tmp: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (and a screenshot if asked), from headless Chromium."""
    assert CHROMIUM, "install Debian's chromium (apt-get install -y chromium); .ci/run does"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1400,900",
        "--virtual-time-budget=5000",
        f"--screenshot={screenshot}" if screenshot else "--dump-dom", url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def worker_names(dom: str) -> set[str]:
    """The workers a page links to (Flower links each worker name to ``/worker/<name>``)."""
    links = re.findall(r'class="worker-name-link" href="[^"]*/worker/([^"]+)"', dom)
    return {unquote(html.unescape(link)) for link in links}


def warm_up(dispatcher: Dispatcher, queue: str, config: AgentConfig, flower: str) -> None:
    """Workers send task events once Flower has asked them to: send jobs until Flower names one."""
    for _ in range(30):
        job = dispatcher.submit("warm up", config, queue=queue)
        job.result(timeout=20)
        time.sleep(0.3)
        if api(f"{flower}/api/tasks").get(job.id, {}).get("name"):
            return
    raise AssertionError(f"Flower never showed a task of queue {queue}")


def slow_answer(body: dict[str, Any]) -> ScriptedResponse:
    """A tool call, then an answer after 4 s: long enough for progress events (every 2 s)."""
    if body["messages"][-1]["content"] == "warm up":
        return text("warm")
    if body["messages"][-1]["role"] == "tool":
        return text("done", delay=4.0)
    return tool_call("list", {"path": "."})


def test_flower_shows_each_worker_once_and_every_task_by_its_prompt(
    fleet: Fleet, flower: str, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = slow_answer
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    with fleet.dispatcher() as dispatcher:
        for name in PROMPTS:
            warm_up(dispatcher, fleet.queue_of(name), config, flower)
        jobs = {
            name: dispatcher.submit(
                prompt, config, labels={"team": f"docs-{name}"}, queue=fleet.queue_of(name)
            )
            for name, prompt in PROMPTS.items()
        }

        def shown(name: str) -> dict[str, Any]:
            return dict(api(f"{flower}/api/tasks").get(jobs[name].id) or {})

        # While the jobs run, their progress events name the real node, not a phantom.
        for name in PROMPTS:
            wait_until(lambda n=name: shown(n).get("state") == "PROGRESS", 20, f"{name} progress")
            assert shown(name)["worker"] == NODES[name]
        running_dom = chromium(f"{flower}/tasks", tmp_path)
        for job in jobs.values():
            assert job.result(timeout=30).status == "completed"
    for name in PROMPTS:
        wait_until(lambda n=name: shown(n).get("state") == "SUCCESS", 10, f"{name} success")

    assert set(api(f"{flower}/api/workers?status=1")) == set(NODES.values())
    listed = api(f"{flower}/workers?json=1")["data"]
    assert sorted(row["hostname"] for row in listed) == sorted(NODES.values())

    task = shown("wa")
    assert task["name"] == "rho_agent.run_job" and task["worker"] == NODES["wa"]
    assert (
        task["args"]
        == "'Summarise the quarterly report for Acme and list three risk…' team=docs-wa"
    )
    assert shown("wb")["args"].startswith(
        "'Compare the two onboarding guides sk-*** and merge them'"
    )
    assert "sk-abcdefghijklmnopqrstuvwx" not in (get(f"{flower}/api/tasks") or "")

    tasks_dom = chromium(f"{flower}/tasks", tmp_path)
    workers_dom = chromium(f"{flower}/workers", tmp_path)
    chromium(f"{flower}/tasks", tmp_path, tmp_path / "flower-tasks.png")
    chromium(f"{flower}/workers", tmp_path, tmp_path / "flower-workers.png")
    for dom in (running_dom, tasks_dom):
        assert worker_names(dom) == set(NODES.values())
    assert worker_names(workers_dom) == set(NODES.values())
    assert "Summarise the quarterly report for Acme" in tasks_dom and "team=docs-wa" in tasks_dom
    assert "Compare the two onboarding guides sk-***" in tasks_dom
    for page in (tasks_dom, workers_dom):
        assert CANARY_KEY not in page and "sk-abcdefghijklmnopqrstuvwx" not in page
    for png in ("flower-tasks.png", "flower-workers.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / png).stat().st_size > 20_000
