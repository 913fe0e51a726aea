"""Helpers for tests that use the real Redis on 127.0.0.1:6379 and real worker processes.

Each test module claims a whole Redis database (1-15, from the top) with a lock key in db 0, so
Celery's own keys (queues, ``unacked``) never mix with another run's; the database is flushed when
released. A fleet on RabbitMQ (``broker="amqp"``, 127.0.0.1:5672, guest/guest) also gets a vhost
of its own, deleted afterwards; Redis then holds only the job bus. Workers run as subprocesses in
their own process group and are killed with it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
import redis

from dispatch import Dispatcher, FleetSettings
from rho_agent import Agent, AgentConfig, ToolHandler, ToolInvocation, ToolOutput

REDIS_HOST = "redis://127.0.0.1:6379"
RABBITMQ_HOST = "amqp://guest:guest@127.0.0.1:5672"
Broker = Literal["redis", "amqp"]
BROKERS: tuple[Broker, ...] = ("redis", "amqp")
on_both_brokers = pytest.mark.parametrize("broker", BROKERS, indirect=True, scope="module")
"""Runs a test on a Redis-brokered fleet and on a RabbitMQ-brokered one (its module's ``fleet``
fixture takes the ``broker`` fixture)."""
on_redis_broker = pytest.mark.parametrize("broker", ["redis"], indirect=True, scope="module")
"""Runs a test on the Redis-brokered fleet only (the one ``on_both_brokers`` tests share)."""
on_amqp_broker = pytest.mark.parametrize("broker", ["amqp"], indirect=True, scope="module")
"""Runs a test on the RabbitMQ-brokered fleet only."""


def rabbitmq_queues(vhost: str) -> dict[str, str]:
    """The queues of ``vhost`` and their types (classic, quorum)."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type", "--no-table-headers"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split("\t")[:2] for line in listing.splitlines() if "\t" in line)


REPO_ROOT = Path(__file__).resolve().parents[2]
CANARY_KEY = "sk-canary-" + "f1ee7" * 8
"""The API key workers (and the test's dispatcher) have: it must never reach Redis or Flower."""


@contextlib.contextmanager
def claimed_db(host: str = REDIS_HOST) -> Iterator[int]:
    """An empty Redis database on ``host`` reserved for this test module; flushed and freed
    afterwards."""
    locks = redis.Redis.from_url(f"{host}/0")
    for number in range(15, 0, -1):
        lock = f"rho-agent-tests:db:{number}"
        if not locks.set(lock, os.getpid(), nx=True, ex=900):
            continue
        database = redis.Redis.from_url(f"{host}/{number}")
        if database.dbsize():
            locks.delete(lock)
            continue
        try:
            yield number
        finally:
            database.flushdb()
            locks.delete(lock)
            database.close()
            locks.close()
        return
    raise RuntimeError("no free Redis database (1-15) for the fleet tests")


@contextlib.contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh RabbitMQ vhost that guest may use; deleted (queues and all) afterwards."""
    name = f"rho-test-{secrets.token_hex(4)}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield name
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True)


PORT_BLOCKS = range(20_000, 32_000, 1_000)
"""Ports tests hand to the servers they start: below Linux's default ephemeral range (32768 up),
so no outgoing connection takes one as its source port between the test choosing it and its
server binding it; a block of its own per pytest-xdist process (up to 12 of them), so two
processes never choose alike."""
_next_port = itertools.count(random.randrange(PORT_BLOCKS.step))
"""From a random place in the block: two runs without xdist (both "gw0") rarely meet."""


def free_port() -> int:
    """A port of this process's block that nothing listens on now."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    block = PORT_BLOCKS[int(worker) % len(PORT_BLOCKS) if worker.isdigit() else 0]
    for _ in range(PORT_BLOCKS.step):
        port = block + next(_next_port) % PORT_BLOCKS.step
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {block}-{block + PORT_BLOCKS.step - 1}")


@dataclass
class WorkerProcess:
    """One ``celery -A workers worker`` subprocess."""

    name: str
    env: dict[str, str]
    queues: str
    log_path: Path
    loglevel: str = "INFO"
    app: str = "workers"
    launcher: tuple[str, ...] = ()
    """A command prefix, e.g. ``ip netns exec <namespace>`` (tests/chaos/topology.py)."""
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        command = [
            *self.launcher, sys.executable, "-m", "celery", "-A", self.app, "worker",
            f"--loglevel={self.loglevel}",
            f"--hostname={self.name}@%h", "-Q", self.queues, "--without-mingle",
            "--without-gossip",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=REPO_ROOT,
            )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log_path.read_text(errors="replace") or self._pinged():
                return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} did not start:\n{self.log()[-3000:]}")

    def _pinged(self) -> bool:
        """At quiet log levels the worker logs nothing: ask it over Celery's control instead."""
        if self.loglevel == "INFO":
            return False
        from dispatch.fleet.celery_broker import CeleryBroker
        from dispatch.settings import FleetSettings

        settings = FleetSettings(
            broker_url=self.env["RHO_AGENT_BROKER_URL"],
            redis_url=self.env.get("RHO_AGENT_REDIS_URL"),
        )
        broker = CeleryBroker(settings)
        try:
            replies = broker.app.control.ping(timeout=0.5) or []
        finally:
            broker.close()
        return any(self.name in name for reply in replies for name in reply)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.process.wait(10)


@dataclass
class Fleet:
    """A Redis database, a key prefix, a queue and worker processes, for one test module."""

    db: int
    tmp: Path
    vhost: str | None = None
    """The RabbitMQ vhost of the jobs' queues; None: Redis is the broker too."""
    prefix: str = field(default_factory=lambda: f"t{secrets.token_hex(3)}:")
    queue: str = field(default_factory=lambda: f"q{secrets.token_hex(3)}")
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    retired: list[WorkerProcess] = field(default_factory=list)
    host: str = REDIS_HOST
    """The Redis server (``redis://host:port``) that holds database ``db``."""
    amqp_host: str = RABBITMQ_HOST
    """The RabbitMQ server (``amqp://user:password@host:port``) that holds ``vhost``."""

    @property
    def url(self) -> str:
        """The Redis of the job bus (and of the jobs' queues, without a vhost)."""
        return f"{self.host}/{self.db}"

    @property
    def broker_url(self) -> str:
        return f"{self.amqp_host}/{self.vhost}" if self.vhost else self.url

    @property
    def redis_url(self) -> str | None:
        """``RHO_AGENT_REDIS_URL``: set only when the broker is not this Redis."""
        return self.url if self.vhost else None

    @property
    def settings(self) -> FleetSettings:
        return FleetSettings(
            broker_url=self.broker_url,
            redis_url=self.redis_url,
            key_prefix=self.prefix,
            queue=self.queue,
        )

    def env(self, **overrides: str) -> dict[str, str]:
        python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        base = {
            **os.environ,
            "PYTHONPATH": python_path,
            "OPENAI_API_KEY": CANARY_KEY,
            "RHO_AGENT_BROKER_URL": self.broker_url,
            **({"RHO_AGENT_REDIS_URL": self.url} if self.vhost else {}),
            "RHO_AGENT_KEY_PREFIX": self.prefix,
            "RHO_AGENT_QUEUE": self.queue,
            "RHO_AGENT_LEASE_TTL": "2",
            "RHO_AGENT_SWEEP_INTERVAL": "0.5",
            "RHO_AGENT_MAX_PROFILE": "developer",
            "RHO_AGENT_AGENT_FACTORY": "tests.integration.fleet:agent_with_mark_tool",
        }
        return {**base, **overrides}

    def queue_of(self, worker: str) -> str:
        """The queue only ``worker`` consumes (to send a job to that worker)."""
        return f"{self.queue}-{worker}"

    def add_worker(
        self, name: str, loglevel: str = "INFO", app: str = "workers", **env: str
    ) -> WorkerProcess:
        """Start worker ``name`` (Celery app ``app``) on the shared queue and its own
        ``{queue}-{name}``."""
        # One log per process: a replacement reading its predecessor's "ready." would not wait.
        instance = sum(1 for worker in self.retired if worker.name == name)
        instance += name in self.workers
        worker = WorkerProcess(
            name,
            self.env(RHO_AGENT_WORKER_NAME=name, **{**self.worker_env(name), **env}),
            f"{self.queue},{self.queue_of(name)}",
            self.tmp / f"worker-{name}-{instance}.log",
            loglevel,
            app,
            self.launcher_of(name),
        )
        if name in self.workers:
            self.retired.append(self.workers[name])
        self.workers[name] = worker.start()
        return worker

    def worker_env(self, name: str) -> dict[str, str]:
        """Environment only worker ``name`` gets (a subclass's hook; none here)."""
        return {}

    def launcher_of(self, name: str) -> tuple[str, ...]:
        """The command prefix worker ``name`` runs under (a subclass's hook; none here)."""
        return ()

    def dispatcher(self) -> Dispatcher:
        return Dispatcher(settings=self.settings)

    def redis(self) -> Any:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def stop(self) -> None:
        for worker in [*self.workers.values(), *self.retired]:
            worker.stop()


@contextlib.contextmanager
def broker_vhost(broker: Broker) -> Iterator[str | None]:
    """A vhost of its own for an ``amqp`` fleet; None for a ``redis`` one."""
    if broker == "redis":
        yield None
        return
    with rabbitmq_vhost() as vhost:
        yield vhost


@contextlib.contextmanager
def running_fleet(
    tmp: Path, workers: dict[str, dict[str, str]], broker: Broker = "redis"
) -> Iterator[Fleet]:
    """A fleet with the named workers (each with its extra environment), torn down afterwards."""
    with (
        claimed_db() as db,
        broker_vhost(broker) as vhost,
        started(Fleet(db, tmp, vhost), workers) as fleet,
    ):
        yield fleet


F = TypeVar("F", bound="Fleet")


@contextlib.contextmanager
def started(fleet: F, workers: dict[str, dict[str, str]]) -> Iterator[F]:
    """``fleet`` with the named workers started and ready, stopped afterwards."""
    try:
        for name, env in workers.items():
            fleet.add_worker(name, **env)
        for worker in fleet.workers.values():
            worker.wait_ready()
        yield fleet
    finally:
        fleet.stop()


def wait_until(condition: Any, within_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within_s} s")
        time.sleep(0.02)


class MarkTool(ToolHandler):
    """Appends its ``n`` to the file ``path``: each line is one execution (to count re-runs)."""

    name = "mark"
    description = "Append a number to a file."

    def __init__(self) -> None:
        self.parameters = {
            "type": "object",
            "properties": {"path": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["path", "n"],
        }

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        path = invocation.arguments["path"]
        with open(path, "a", encoding="utf-8") as marks:  # noqa: ASYNC230 - one tiny append
            marks.write(f"{invocation.arguments['n']}\n")
        return ToolOutput(f"marked {invocation.arguments['n']}")


def agent_with_mark_tool(config: AgentConfig) -> Agent:
    """The workers' agent factory in these tests: the normal Agent plus ``mark``."""
    agent = Agent(config)
    agent.registry.register(MarkTool())
    return agent
