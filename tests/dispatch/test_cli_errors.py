"""CLI failures are one line with a documented exit code: broker down, Redis dying mid-run, a
non-Redis broker URL, the model endpoint down. Every test runs the real ``rho-agent`` process."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.cli_support import cli_env, one_line_error, rho, start_rho
from tests.integration.fleet import free_port

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    path = tmp_path / "batch.jsonl"
    path.write_text('"first"\n"second"\n', encoding="utf-8")
    return path


def fleet_commands(batch: Path, out: Path) -> list[list[str]]:
    return [
        ["dispatch", str(batch), "-o", str(out)],
        ["jobs"],
        ["watch", "j-1"],
        ["results", "b-1", "-o", str(out)],
        ["fleet", "status"],
        ["report", "b-1"],
    ]


@pytest.mark.parametrize(
    "which", range(6), ids=["dispatch", "jobs", "watch", "results", "status", "report"]
)
def test_a_closed_broker_port_is_one_line_and_exit_3(
    which: int, batch: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text('{"index": 0, "batch": "earlier", "status": "completed"}\n', encoding="utf-8")
    before = out.read_bytes()
    command = fleet_commands(batch, out)[which]
    started = time.monotonic()
    done = rho([*command, "--broker", f"redis://127.0.0.1:{free_port()}/0"], cli_env(tmp_path))
    assert done.returncode == 3, done.stderr
    # at once: a Redis that never answered is not an outage to ride out for a minute
    assert time.monotonic() - started < 20
    assert "reach" in one_line_error(done.stderr)
    assert out.read_bytes() == before, "a failed run must not touch the results file"
    assert sorted(path.name for path in tmp_path.iterdir() if "partial" in path.name) == []


@pytest.mark.parametrize(
    "which", range(6), ids=["dispatch", "jobs", "watch", "results", "status", "report"]
)
def test_a_non_redis_broker_url_is_a_usage_error(which: int, batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text('{"index": 0, "batch": "earlier", "status": "completed"}\n', encoding="utf-8")
    before = out.read_bytes()
    command = fleet_commands(batch, out)[which]
    done = rho([*command, "--broker", "http://127.0.0.1:8080/"], cli_env(tmp_path))
    assert done.returncode == 2, done.stderr
    line = one_line_error(done.stderr)
    assert "redis://" in line and "http" in line
    assert out.read_bytes() == before, "a failed run must not touch the results file"


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    broker = f"redis://127.0.0.1:{free_port()}/0"
    done = rho(["--debug", "jobs", "--broker", broker], cli_env(tmp_path))
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "ConnectionError" in done.stderr


def test_redis_dying_mid_run_is_one_line_exit_3_and_keeps_the_results_file(
    batch: Path, tmp_path: Path
) -> None:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out = tmp_path / "results.jsonl"
    out.write_text('{"index": 0, "batch": "earlier", "status": "completed"}\n', encoding="utf-8")
    before = out.read_bytes()
    try:
        client = redis.Redis(port=port, decode_responses=True)
        _wait(lambda: _answers(client), "redis-server to start")
        url = f"redis://127.0.0.1:{port}/0"
        env = cli_env(tmp_path, RHO_AGENT_REDIS_OUTAGE_LIMIT="3")  # Redis is not coming back
        process = start_rho(["dispatch", str(batch), "-o", str(out), "--broker", url],
                            env, tmp_path)  # fmt: skip
        _wait(lambda: bool(client.keys("rho:batch:*")), "the batch to be recorded")
        batch_id = client.keys("rho:batch:*")[0].removeprefix("rho:batch:")
        time.sleep(1.0)  # the dispatcher is polling its jobs (no worker takes them)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(10)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stderr
    assert "reach the job bus's Redis" in one_line_error(stderr)
    assert f"rho-agent results {batch_id} -o {out}" in stderr
    assert f"--resume {batch_id}" in stderr
    assert out.read_bytes() == before


def test_model_endpoint_down_every_result_says_why(batch: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    closed = f"http://127.0.0.1:{free_port()}/v1"
    env = cli_env(tmp_path, OPENAI_API_KEY="sk-test")
    done = rho(["dispatch", str(batch), "-o", str(out), "--base-url", closed], env)
    assert done.returncode == 3, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["error", "error"]
    assert all(line["error"].startswith("ModelError: cannot reach the model API") for line in lines)
    assert "Traceback" not in done.stderr


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _wait(condition: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s} s"
        time.sleep(0.05)


@pytest.mark.parametrize("option", ["--schema", "-o"])
def test_a_file_option_that_is_not_utf8_is_a_usage_error(
    option: str, batch: Path, tmp_path: Path
) -> None:
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"caf\u00e9": 1}\n'.encode("latin-1"))
    before = latin1.read_bytes()
    done = rho(["dispatch", str(batch), "--offline", option, str(latin1)], cli_env(tmp_path))
    assert done.returncode == 2, done.stderr
    line = one_line_error(done.stderr)
    assert str(latin1) in line and "UTF-8" in line
    assert latin1.read_bytes() == before
