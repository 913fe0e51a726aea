"""LocalFleet: a whole fleet on one machine, child processes on 127.0.0.1 (``rho-agent fleet up``).

It uses the Redis at ``127.0.0.1:{redis_port}`` or starts ``redis-server`` there (no persistence)
when none answers, then starts N workers (``celery -A workers worker``) and Flower, each logging to
its own file in the run directory. All children share one process group of their own, so the
terminal's Ctrl+C reaches only ``fleet up``, which stops them in order: workers first (SIGTERM:
they drain, see ``workers.shutdown``), then Flower, then the Redis it started.

While it runs, ``supervise`` restarts a worker that exits (crashed, killed, or its consumer ended)
after a backoff of 1 s doubling to 30 s, at most ``max_restarts`` times per worker, without
touching the others; the restarted worker's heartbeat carries its restart count, which
``rho-agent fleet status`` shows. Its jobs come back through their leases meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatch.errors import FleetUnavailable, SettingsError
from dispatch.settings import BROKER_URL, FleetSettings
from dispatch.urls import redact_url
from workers.health import HEALTH_DIR, WORKER_NAME, WORKER_RESTARTS
from workers.ops.launch import FLOWER_TASK_COLUMNS
from workers.worker_settings import CONCURRENCY, SHUTDOWN_GRACE, WORKER

_POLL_S = 0.2
_FIRST_RESTART_S = 1.0
_LAST_RESTART_S = 30.0
_STOP_MARGIN_S = 15.0
_INSTALL_REDIS = (
    "install it (Debian/Ubuntu: sudo apt install redis-server; macOS: brew install redis), "
    "or point --broker at a Redis you already run"
)


class LocalFleetError(FleetUnavailable):
    """A local fleet could not start (the message says which part and where its log is)."""


@dataclass(frozen=True)
class LocalFleetOptions:
    """What to start. ``flower_port`` 0 picks a free port; ``None`` starts no Flower."""

    workers: int = 2
    concurrency: int = 100
    redis_port: int = 6379
    broker_url: str | None = None
    flower_port: int | None = 5555
    run_dir: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 90.0
    max_restarts: int = 5

    def __post_init__(self) -> None:
        if self.workers < 1 or self.concurrency < 1:
            raise SettingsError(
                f"--workers and --concurrency must be >= 1, got {self.workers} and "
                f"{self.concurrency}"
            )


@dataclass
class Child:
    """One process of the fleet and the file it logs to."""

    name: str
    role: str  # "redis", "worker" or "flower"
    process: subprocess.Popen[bytes]
    log: Path
    command: list[str] = field(default_factory=list)
    restarts: int = 0
    restart_at: float | None = None

    def tail(self, lines: int = 15) -> str:
        """The end of its log, for error messages."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Endpoints:
    """Where to look once the fleet is up."""

    broker_url: str
    started_redis: bool
    flower_url: str | None
    run_dir: Path
    process_group: int
    worker_names: tuple[str, ...]


class LocalFleet:
    """Start with ``start()``; always ``stop()`` (or use it as a context manager)."""

    def __init__(self, options: LocalFleetOptions) -> None:
        self.options = options
        self.run_dir = options.run_dir or Path(tempfile.mkdtemp(prefix="rho-fleet-"))
        self.children: list[Child] = []
        self._group = 0
        self._env = {**os.environ, **options.env}
        self._stopping = False

    # -- starting ---------------------------------------------------------------------------------

    def start(self) -> Endpoints:
        """Start every process and wait until each one answers (LocalFleetError if not)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        broker_url, started_redis = self._broker()
        self._env.update(
            {
                BROKER_URL.name: broker_url,
                HEALTH_DIR.name: str(self.run_dir / "health"),
                CONCURRENCY.name: str(self.options.concurrency),
            }
        )
        names = tuple(f"{socket.gethostname()}-{i}" for i in range(1, self.options.workers + 1))
        for name in names:
            worker = _celery("worker", f"--hostname=rho@{name}", "--loglevel=INFO")
            self._spawn(name, "worker", worker, name)
        flower_url = None
        if self.options.flower_port is not None:
            port = self.options.flower_port or _free_port()
            flower = _celery(
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
                f"--tasks_columns={FLOWER_TASK_COLUMNS}",
            )
            self._spawn("flower", "flower", flower)
            flower_url = f"http://127.0.0.1:{port}"
        self._await_workers(broker_url, names)
        if flower_url:
            self._await(lambda: _http_ok(f"{flower_url}/healthcheck"), "flower")
        return Endpoints(broker_url, started_redis, flower_url, self.run_dir, self._group, names)

    def _broker(self) -> tuple[str, bool]:
        if self.options.broker_url:
            # The bus must answer: the broker's Redis, or RHO_AGENT_REDIS_URL's for an amqp://
            # broker (RabbitMQ itself is checked by the workers, which fail fast without it).
            fleet = FleetSettings.from_env(self._env, broker_url=self.options.broker_url)
            bus = fleet.bus_url or self.options.broker_url
            if not _redis_answers(bus, fleet.sentinel_master):
                raise LocalFleetError(f"no Redis answers at {redact_url(bus)}")
            return self.options.broker_url, False
        url = f"redis://127.0.0.1:{self.options.redis_port}/0"
        if _redis_answers(url):
            return url, False
        server = shutil.which("redis-server")
        if server is None:
            raise LocalFleetError(
                f"no Redis at {url} and redis-server is not installed: {_INSTALL_REDIS}"
            )
        command = [
            server,
            "--port", str(self.options.redis_port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.run_dir),
        ]  # fmt: skip
        self._spawn("redis", "redis", command)
        self._await(lambda: _redis_answers(url), "redis")
        return url, True

    def _spawn(self, name: str, role: str, command: list[str], worker_name: str = "") -> Child:
        log = self.run_dir / f"{name}.log"
        child = Child(name, role, self._popen(command, log, worker_name, 0), log, command)
        self.children.append(child)
        return child

    def _popen(
        self, command: list[str], log: Path, worker_name: str, restarts: int
    ) -> subprocess.Popen[bytes]:
        env = dict(self._env)
        if worker_name:
            env[WORKER_NAME.name] = worker_name
            env[WORKER_RESTARTS.name] = str(restarts)
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=self._group,  # 0 for the first child: a new group, its pid
            )
        self._group = self._group or process.pid
        return process

    def _await_workers(self, broker_url: str, names: tuple[str, ...]) -> None:
        from dispatch.fleet.celery_broker import CeleryBroker

        broker = CeleryBroker(FleetSettings.from_env(self._env, broker_url=broker_url))
        expected = {f"rho@{name}" for name in names}
        seen: set[str] = set()

        def all_answer() -> bool:
            for reply in broker.app.control.ping(timeout=0.5):
                seen.update(reply)
            return expected <= seen

        try:
            self._await(all_answer, "workers")
        finally:
            broker.close()

    def _await(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.options.ready_timeout_s
        while not ready():
            dead = self.dead()
            if dead is not None:
                raise LocalFleetError(
                    f"{dead.name} exited with code {dead.process.returncode} while starting; "
                    f"the end of {dead.log}:\n{dead.tail()}"
                )
            if time.monotonic() > deadline:
                raise LocalFleetError(
                    f"{what} did not answer within {self.options.ready_timeout_s:g} s; "
                    f"see the logs in {self.run_dir}"
                )
            time.sleep(_POLL_S)

    # -- running and stopping ---------------------------------------------------------------------

    def dead(self) -> Child | None:
        """The first child that exited, if any."""
        return next((child for child in self.children if child.process.poll() is not None), None)

    def supervise(self, say: Callable[[str], None] = lambda _: None) -> Child | None:
        """Restart workers that exited, each after its backoff; call it every fraction of a
        second. Returns the child that cannot be restarted (Redis, Flower, or a worker past
        ``max_restarts``), which should stop the fleet; None while all is well."""
        now = time.monotonic()
        for child in self.children:
            if self._stopping or child.process.poll() is None:
                continue
            if child.role != "worker" or child.restarts >= self.options.max_restarts:
                return child
            if child.restart_at is None:
                delay = min(_FIRST_RESTART_S * 2**child.restarts, _LAST_RESTART_S)
                child.restart_at = now + delay
                say(
                    f"worker {child.name} exited with code {child.process.returncode}; "
                    f"restarting it in {delay:g} s (restart {child.restarts + 1} of "
                    f"{self.options.max_restarts}); the end of {child.log}:\n{child.tail(5)}"
                )
            elif now >= child.restart_at:
                child.restarts += 1
                child.restart_at = None
                child.process = self._popen(child.command, child.log, child.name, child.restarts)
                say(f"worker {child.name} restarted (pid {child.process.pid})")
        return None

    @property
    def shutdown_grace_s(self) -> float:
        """How long the workers let running jobs finish when stopped (their environment's)."""
        return WORKER.value(SHUTDOWN_GRACE, self._env)

    def stop(self, hurry: Callable[[], bool] = lambda: False) -> None:
        """Stop workers (they drain), then Flower, then Redis; kill what is left of the group.

        ``hurry`` turning true (a second Ctrl+C) makes workers hand their jobs back at once.
        """
        self._stopping = True
        try:
            self._stop_role("worker", self.shutdown_grace_s + _STOP_MARGIN_S, hurry)
            self._stop_role("flower", _STOP_MARGIN_S, hurry)
            self._stop_role("redis", _STOP_MARGIN_S, hurry)
        finally:
            if self._group:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._group, signal.SIGKILL)
            for child in self.children:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(5)

    def _stop_role(self, role: str, timeout_s: float, hurry: Callable[[], bool]) -> None:
        children = [child for child in self.children if child.role == role]
        _signal(children, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        hurried = False
        while any(child.process.poll() is None for child in children):
            if hurry() and not hurried:
                hurried = True
                _signal(children, signal.SIGQUIT)  # Celery's cold shutdown: hand back now
                deadline = min(deadline, time.monotonic() + _STOP_MARGIN_S)
            if time.monotonic() > deadline:
                _signal(children, signal.SIGKILL)
                break
            time.sleep(_POLL_S)

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers", *args]


def _signal(children: list[Child], signum: int) -> None:
    for child in children:
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signum)


def _redis_answers(url: str, master_name: str = "mymaster") -> bool:
    import redis

    from dispatch.fleet.redis_clients import sync_client

    try:
        client = sync_client(
            url, master_name=master_name, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        with client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            status: Any = response.status
            return bool(status == 200)
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
