"""`rho-agent fleet up` for real: its own redis-server, two workers and Flower on 127.0.0.1, a
fan-out through them, `fleet status` (including a worker that stops heartbeating), and Ctrl+C
leaving nothing running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch import Dispatcher, FleetSettings
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, behaviour
from tests.integration._ops_support import (
    CLI,
    alive,
    kill_session,
    run_cli,
    session_pids,
    wait_for,
)
from tests.integration.fleet import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(150),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH"),
]

PREFIX = "rho-test-fleet-up:"


class _Output:
    """Collects a child's stdout lines in a thread, so the test can wait for one."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def fleet_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RHO_AGENT_BROKER_URL", None)
    env.update(
        RHO_AGENT_KEY_PREFIX=PREFIX,
        RHO_AGENT_HEARTBEAT_INTERVAL="0.5",
        RHO_AGENT_SHUTDOWN_GRACE="5",
    )
    return env


@pytest.fixture
def fleet_up(
    tmp_path: Path, fleet_env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[str], _Output, int, int]]:
    redis_port, flower_port = free_port(), free_port()
    command = [
        *CLI, "fleet", "up", "--workers", "2", "--concurrency", "20",
        "--redis-port", str(redis_port), "--flower-port", str(flower_port),
        "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env=fleet_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process, _Output(process), redis_port, flower_port
    finally:
        if process.poll() is None:
            process.kill()
        kill_session(process.pid)
        process.wait(10)


def test_fleet_up_runs_a_fan_out_reports_silent_workers_and_stops_cleanly(
    fleet_up: tuple[subprocess.Popen[str], _Output, int, int],
    fleet_env: dict[str, str],
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    process, output, redis_port, flower_port = fleet_up
    model_server.responder = behaviour("echo")
    wait_for(lambda: "Ctrl+C stops everything" in output.text, 90, f"fleet up:\n{output.text}")
    broker = f"redis://127.0.0.1:{redis_port}/0"
    assert f"broker  {broker}  (started here" in output.text
    assert f"flower  http://127.0.0.1:{flower_port}" in output.text
    assert _http(f"http://127.0.0.1:{flower_port}/healthcheck") == "OK"

    names = {f"{socket.gethostname()}-{index}" for index in (1, 2)}
    assert _fan_out(broker, model_server) <= names

    status = json.loads(run_cli(["fleet", "status", "--broker", broker, "--json"], fleet_env))
    assert {worker["name"] for worker in status["workers"]} == names
    assert all(worker["health"] == "ok" for worker in status["workers"]), status
    assert status["queued"] == 0 and status["in_flight"] == []

    health_dir = tmp_path / "run" / "health"
    _stopped_worker_is_reported(status["workers"][0], broker, fleet_env, health_dir)

    # Ctrl+C: everything the command started is gone, and Redis with it.
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0, output.text
    assert "fleet stopped." in output.text
    wait_for(lambda: not session_pids(process.pid), 10, "every child of fleet up to exit")
    assert not alive(status["workers"][0]["pid"])


def _fan_out(broker: str, model_server: ScriptedModelServer) -> set[str]:
    """Twelve jobs through the fleet; returns the names of the workers that ran them."""
    prompts = [f"item {index}" for index in range(12)]
    config = AgentConfig(model="scripted", base_url=model_server.base_url)
    settings = FleetSettings(broker_url=broker, key_prefix=PREFIX)
    with Dispatcher(settings=settings) as dispatcher:
        jobs = dispatcher.map(prompts, config)
        results = dispatcher.gather(jobs, timeout=60)
        infos = dispatcher.infos([job.id for job in jobs])
    assert [result.status for result in results] == ["completed"] * len(prompts)
    assert [result.text for result in results] == [f"Echo: {prompt}" for prompt in prompts]
    return {str(info.worker) for info in infos if info is not None}


def _stopped_worker_is_reported(
    worker: dict[str, object], broker: str, env: dict[str, str], health_dir: Path
) -> None:
    """Freeze one worker (its loop can no longer beat): the probe and `fleet status` say so."""
    name, pid = str(worker["name"]), int(str(worker["pid"]))
    probe = [*CLI[:1], "-m", "workers.health", "--dir", str(health_dir), "--name", name]
    assert subprocess.run([*probe, "--ready"], env=env, check=False).returncode == 0
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(
            lambda: subprocess.run([*probe, "--max-age", "2"], env=env, check=False).returncode,
            15,
            "the health probe to fail",
            step=0.5,
        )

        def silent() -> bool:
            report = json.loads(run_cli(["fleet", "status", "--broker", broker, "--json"], env))
            view = next(view for view in report["workers"] if view["name"] == name)
            return bool(view["silent"]) and str(view["health"]).startswith("silent")

        wait_for(silent, 20, f"fleet status to report {name} silent", step=1.0)
        table = run_cli(["fleet", "status", "--broker", broker], {**env, "COLUMNS": "200"})
        assert "1 silent" in table and "dead or stuck" in table
    finally:
        os.kill(pid, signal.SIGCONT)


def _http(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())
