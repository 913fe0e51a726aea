"""Fleet pieces for benchmarks 3-6: a running fleet, bare Celery workers, the stamp tool.

Both use a real Redis server (``--redis``, by default 127.0.0.1:6379), each in a database of its
own (claimed as the integration tests claim theirs), and worker subprocesses killed with their
process group. With ``--broker amqp://...`` RabbitMQ carries the jobs (the fleet's and the bare
tasks'), each side in a fresh vhost deleted afterwards, and Redis holds the bus and the bare
results.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from dispatch import Dispatcher
from rho_agent import Agent, AgentConfig, ToolHandler, ToolInvocation, ToolOutput
from tests.bench import bare_celery
from tests.bench.harness import DEFAULT_REDIS, REPO_ROOT, spawned_server
from tests.integration.fleet import RABBITMQ_HOST, Fleet, claimed_db, rabbitmq_vhost

WORKER_START_TIMEOUT = 60.0
PRODUCTION_LEASES = {"RHO_AGENT_LEASE_TTL": "20", "RHO_AGENT_SWEEP_INTERVAL": "5"}
"""The workers' default lease and sweep periods: the integration fleet's short ones (2 s, for
fast failover tests) would make a loaded benchmark measure lease churn, not the fleet."""
STAMP_FACTORY = "tests.bench.fleet_support:agent_with_stamp_tool"


@dataclass
class RunningFleet:
    """Workers up, a dispatcher connected, and the config that points jobs at the model server."""

    fleet: Fleet
    dispatcher: Dispatcher
    config: AgentConfig

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self.fleet.workers.values() if w.process is not None]


@contextlib.contextmanager
def running_fleet(
    workdir: str,
    workers: int,
    behaviour: str,
    delay: float = 0.0,
    factory: str = "",
    redis: str = DEFAULT_REDIS,
    also_allow: tuple[str, ...] = (),
    broker: str | None = None,
    **env: str,
) -> Iterator[RunningFleet]:
    """``workers`` fleet worker processes on a claimed database of ``redis`` (and a vhost of
    ``broker``, the RabbitMQ server, if given), with a model server."""
    tmp = Path(tempfile.mkdtemp(prefix="fleet-", dir=workdir))
    with (
        claimed_db(redis) as db,
        _vhost(broker) as vhost,
        spawned_server(behaviour, workdir, delay) as server,
    ):
        fleet = Fleet(db, tmp, vhost, host=redis, amqp_host=broker or RABBITMQ_HOST)
        try:
            for index in range(workers):
                fleet.add_worker(
                    f"w{index}",
                    "WARNING",
                    RHO_AGENT_AGENT_FACTORY=factory,
                    RHO_AGENT_ALLOWED_BASE_URLS=",".join((server.base_url, *also_allow)),
                    **{**PRODUCTION_LEASES, **env},
                )
            for worker in fleet.workers.values():
                worker.wait_ready(WORKER_START_TIMEOUT)
            config = AgentConfig(base_url=server.base_url, working_dir=str(tmp))
            with fleet.dispatcher() as dispatcher:
                yield RunningFleet(fleet, dispatcher, config)
        finally:
            fleet.stop()


@contextlib.contextmanager
def bare_workers(
    workdir: str,
    workers: int,
    concurrency: int,
    pool: str = "threads",
    redis: str = DEFAULT_REDIS,
    app: str = "tests.bench.bare_celery:app",
    broker: str | None = None,
) -> Iterator[Celery]:
    """Bare Celery worker processes (``pool``: threads or prefork; Celery app ``app``) on a
    claimed database of ``redis`` (the broker too, unless ``broker``, a RabbitMQ server, carries
    the tasks in a vhost of their own); yields a client app."""
    with claimed_db(redis) as db, _vhost(broker) as vhost:
        results = f"{redis}/{db}"
        url = f"{broker}/{vhost}" if vhost else results
        env = {
            **os.environ,
            bare_celery.BROKER_ENV: url,
            bare_celery.RESULT_ENV: results,
            "PYTHONPATH": str(REPO_ROOT),
        }
        processes = [
            _start_bare(
                index, concurrency, pool, app, env, Path(workdir) / f"bare-{db}-{index}.log"
            )
            for index in range(workers)
        ]
        app = bare_celery.client_app(url, results)
        try:
            for index in range(workers * 4):  # every worker up and its connections warm
                app.send_task(bare_celery.NOOP, args=[index]).get(timeout=WORKER_START_TIMEOUT)
            yield app
        finally:
            app.close()
            for process in processes:
                _stop_group(process)


@contextlib.contextmanager
def _vhost(broker: str | None) -> Iterator[str | None]:
    """A fresh vhost on the RabbitMQ server ``broker`` (None without one)."""
    if broker is None:
        yield None
        return
    with rabbitmq_vhost() as vhost:
        yield vhost


def _start_bare(
    index: int, concurrency: int, pool: str, app: str, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-P", pool, "-c", str(concurrency), "-Q", bare_celery.QUEUE,
        "--loglevel=WARNING", "--without-mingle", "--without-gossip",
        f"--hostname=bare{index}@%h",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker's process group, then SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)


def rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (Linux ``/proc``; 0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


class StampTool(ToolHandler):
    """``noop`` that answers the wall-clock time it ran at: the tool_end event then carries the
    moment it was emitted, so a reader in another process can time its delivery."""

    name = "noop"
    description = "Does nothing and answers the current time."

    def __init__(self) -> None:
        self.parameters = {"type": "object", "properties": {}}

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        return ToolOutput(repr(time.time()))


def agent_with_stamp_tool(config: AgentConfig) -> Agent:
    """The workers' agent factory for benchmark 6: the normal Agent plus the stamp tool."""
    agent = Agent(config)
    agent.registry.register(StampTool())
    return agent
