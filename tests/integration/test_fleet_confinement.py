"""Confinement on the fleet: a job's bash reaches neither Redis nor the worker's environment.

A real worker (threads pool) with canaries in its environment runs a victim job and then two
batches of attacking jobs whose scripted model makes them run, through the bash tool, commands
that read Redis (``redis-cli``, bash ``/dev/tcp``, a Python socket, the quoted-data class from
issue 12) or the worker's environment (``printenv``, ``/proc/<worker>/environ``, the parent's
environ). One batch is ``readonly`` (checker, then the OS); the other a profile with no command
checker (``shell: allowed, write: none``), so the OS alone holds. Afterwards no attacking job
saw the victim's conversation or keys, and no canary is in any Redis key of the test's database
(traces and events live there), nor in the worker's log.

A control runs the same commands from the test process, unconfined: they do read the victim's
keys and the worker's environment, so the attempts are real. They only read.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch import Dispatcher
from rho_agent import AgentConfig
from rho_agent.permissions import PermissionProfile
from rho_agent.sandbox import probe
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, text, tool_call
from tests.integration.fleet import CANARY_KEY, Fleet, running_fleet

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(probe().problem is not None, reason=f"no OS confinement: {probe().problem}"),
]

NOTE = f"plain-canary-{secrets.token_hex(8)}"
"""A value that does not look secret: only the environment allowlist keeps it from tools."""
PASSWORD = f"pw-canary-{secrets.token_hex(8)}"
VICTIM_WORD = f"victim-word-{secrets.token_hex(8)}"
WORKER_ENV = {"DEPLOY_NOTE": NOTE, "SERVICE_PASSWORD": PASSWORD}
CANARIES = (CANARY_KEY, NOTE, PASSWORD)

REDIS_ATTACKS = (
    "redis-cli -n {db} --scan",
    "redis-cli -n {db} keys '*'",
    "exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'SELECT {db}\\r\\nKEYS *\\r\\n' >&3 && "
    "timeout 2 cat <&3",
    "python3 -c \"import socket, time; s = socket.create_connection(('127.0.0.1', 6379)); "
    "s.sendall(b'SELECT {db}\\r\\nKEYS *\\r\\n'); time.sleep(0.5); print(s.recv(65536))\"",
    "x='a[$(redis-cli -n {db} keys \"*\" >&2)]'; echo $((x))",
    "redis-cli -s /run/redis/redis-server.sock -n {db} keys '*'; "
    "redis-cli -s /var/run/redis/redis.sock -n {db} keys '*'",
)
ENV_ATTACKS = (
    "printenv",
    "env",
    "cat /proc/{worker}/environ",
    "tr '\\0' '\\n' < /proc/{worker}/environ",
    "cat /proc/$PPID/environ; tr '\\0' '\\n' < /proc/self/environ",
    "for p in $(pgrep -f celery); do tr '\\0' '\\n' < /proc/$p/environ; done",
    "x='a[$(cat /proc/{worker}/environ >&2)]'; echo $((x))",
    'python3 -c "import os; print(dict(os.environ))"',
    "cat /proc/1/environ; xargs -0 -n1 < /proc/{worker}/environ",
)
CONTROLS = (REDIS_ATTACKS[1], REDIS_ATTACKS[2], REDIS_ATTACKS[3], ENV_ATTACKS[2])
"""Run unconfined from the test: each reads keys or the environment (and changes nothing)."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("confined-fleet"), {"wc": WORKER_ENV}) as started:
        yield started


def _attacks(fleet: Fleet) -> list[str]:
    worker = fleet.workers["wc"].process
    assert worker is not None
    values = {"db": fleet.db, "worker": worker.pid}
    return [command.format(**values) for command in (*REDIS_ATTACKS, *ENV_ATTACKS)]


def _responder(commands: list[str]) -> Any:
    """``attack N`` runs command N with bash, then answers with what the tool printed."""

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        if messages[-1].get("role") == "tool":
            return text(f"The command printed: {messages[-1].get('content')}")
        prompt = next(str(m.get("content")) for m in messages if m.get("role") == "user")
        if prompt.startswith("attack "):
            return tool_call("bash", {"command": commands[int(prompt.split()[1])]})
        return text(f"Noted: {prompt}")

    return respond


def _everything_in_redis(fleet: Fleet) -> list[str]:
    client = fleet.redis()
    dumped = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            dumped.append(client.get(key))
        elif kind == "hash":
            dumped.append(json.dumps(client.hgetall(key)))
        elif kind == "list":
            dumped.append(json.dumps(client.lrange(key, 0, -1)))
        elif kind == "stream":
            dumped.append(json.dumps(client.xrange(key)))
        elif kind == "zset":
            dumped.append(json.dumps(client.zrange(key, 0, -1)))
        elif kind == "set":
            dumped.append(json.dumps(sorted(client.smembers(key))))
        dumped.append(key)
    return [value for value in dumped if value]


def _unconfined(command: str) -> str:
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, timeout=20, check=False
    )  # fmt: skip
    return (done.stdout + done.stderr).decode(errors="replace")


@pytest.mark.parametrize(
    "profile",
    [
        "readonly",
        PermissionProfile("os-only", shell="allowed", write="none"),
    ],
    ids=["readonly", "os-only"],
)
def test_a_job_reads_neither_redis_nor_the_worker_environment(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path, profile: Any
) -> None:
    commands = _attacks(fleet)
    model_server.responder = _responder(commands)
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path), profile=profile)
    with fleet.dispatcher() as dispatcher:
        victim = dispatcher.submit(f"remember {VICTIM_WORD}", config)
        assert victim.result(timeout=30).status == "completed"
        for control in CONTROLS:  # the attempts are real: unconfined, they read it all
            seen = _unconfined(control.format(db=fleet.db, worker=_worker_pid(fleet)))
            assert victim.id in seen or NOTE in seen, f"control read nothing: {control}"
        jobs = dispatcher.map([f"attack {index}" for index in range(len(commands))], config)
        results = dispatcher.gather(jobs, timeout=120)
        seen_by_attackers = _attackers_view(dispatcher, jobs, results)
    ran = sum('"role": "tool"' in view for view in seen_by_attackers)
    assert ran == len(commands), "every attack ran its command and got its output back"
    for command, view in zip(commands, seen_by_attackers, strict=True):
        assert victim.id not in view and VICTIM_WORD not in view, f"read the victim: {command}"
        assert not [c for c in CANARIES if c in view], f"read the worker env: {command}"
    stored = _everything_in_redis(fleet)
    assert len(stored) > 20 and any(VICTIM_WORD in value for value in stored)
    assert not [c for c in CANARIES for value in stored if c in value], "a canary is in Redis"
    log = fleet.workers["wc"].log()
    assert not [c for c in CANARIES if c in log], "a canary is in the worker log"


def _worker_pid(fleet: Fleet) -> int:
    worker = fleet.workers["wc"].process
    assert worker is not None
    return worker.pid


def _attackers_view(dispatcher: Dispatcher, jobs: list[Any], results: list[Any]) -> list[str]:
    """Everything each attacking job produced: its result, events and session records."""
    views = []
    for job, result in zip(jobs, results, strict=True):
        events = [event.__dict__ if hasattr(event, "__dict__") else event for event in job.events()]
        records = job.state().records
        views.append(json.dumps([result.text, result.status, events, records], default=str))
    return views
