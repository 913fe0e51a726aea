"""Many machines, simulated: Redis in one network namespace, each worker in one of its own.

Layout (``<tag>`` is random per topology, so parallel runs never share a name)::

    rhoch-<tag>-redis   redis-server on its 127.0.0.1; the proxy listens on each link's far end
    rhoch-<tag>-<w>     one per worker; veth rhoch<tag><i>w <-> rhoch<tag><i>r, a /30 of
                        10.213.<n>.0/24 (worker .2+4i, Redis side .1+4i); nothing is routed
                        beyond the two ends

Every worker reaches Redis over its own veth through the delaying proxy (``DelayProxy``), so the
latency is 1 ms +- 0.2 ms each way. The test process (the dispatcher) stays in the host namespace
and reaches Redis through a proxy route too; the scripted model server, also in the host
namespace, is reached from each worker namespace at the same ``127.0.0.1`` port through an
undelayed route. ``partition(w)`` sets the worker's veth down (``ip link set ... down``): its
connections hang, as they do when a cable is pulled; ``heal(w)`` sets it up again. Everything
(namespaces, veths, redis-server, proxy) is removed on exit, also after a failure. Root only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.chaos.delay_proxy import DelayProxy, Endpoint
from tests.integration.fleet import Fleet, WorkerProcess, free_port

PREFIX = "rhoch-"
REDIS_PORT = 6390


def available() -> str | None:
    """Why the topology cannot be built here (``None``: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("redis-server") is None:
        return "needs iproute2 (ip) and redis-server"
    return None


def ip(*args: str, namespace: str | None = None) -> None:
    inside = ["ip", "netns", "exec", namespace] if namespace is not None else []
    command = [*inside, "ip", *args]
    subprocess.run(command, check=True, capture_output=True, timeout=10)


@dataclass
class Topology:
    """The namespaces, links and proxy of one simulated cluster (see the module docstring)."""

    tmp: Path
    workers: tuple[str, ...]
    latency_ms: float = 1.0
    jitter_ms: float = 0.2
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: int = field(default_factory=lambda: secrets.randbelow(250) + 1)
    redis_port: int = 0
    """The host-namespace port at which the test process reaches Redis (through the proxy)."""
    proxy: DelayProxy | None = None
    namespaces: list[str] = field(default_factory=list)
    veths: list[tuple[str, str]] = field(default_factory=list)
    redis_process: subprocess.Popen[bytes] | None = None

    @property
    def redis_namespace(self) -> str:
        return f"{PREFIX}{self.tag}-redis"

    def namespace(self, worker: str) -> str:
        return f"{PREFIX}{self.tag}-{worker}"

    def veth(self, worker: str) -> str:
        """The worker-side end of ``worker``'s link (``ip link`` names: at most 15 characters)."""
        return f"rhoch{self.tag}{self.workers.index(worker)}w"

    def redis_address(self, worker: str) -> str:
        """Where ``worker`` reaches Redis: the Redis-side end of its own link."""
        return f"10.213.{self.subnet}.{4 * self.workers.index(worker) + 1}"

    def worker_url(self, worker: str, db: int = 0) -> str:
        return f"redis://{self.redis_address(worker)}:{REDIS_PORT}/{db}"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{db}"

    def start(self, model_port: int | None) -> Topology:
        self.proxy = DelayProxy(self.latency_ms, self.jitter_ms)
        self._add_namespace(self.redis_namespace)
        redis_local = free_port()
        self._start_redis(redis_local)
        for index, worker in enumerate(self.workers):
            namespace = self.namespace(worker)
            self._add_namespace(namespace)
            inside, outside = self.veth(worker), f"rhoch{self.tag}{index}r"
            ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            self.veths.append((inside, outside))
            ip("link", "set", inside, "netns", namespace)
            ip("link", "set", outside, "netns", self.redis_namespace)
            worker_ip = f"10.213.{self.subnet}.{4 * index + 2}"
            redis_ip = self.redis_address(worker)
            ip("addr", "add", f"{worker_ip}/30", "dev", inside, namespace=namespace)
            ip("addr", "add", f"{redis_ip}/30", "dev", outside, namespace=self.redis_namespace)
            ip("link", "set", inside, "up", namespace=namespace)
            ip("link", "set", outside, "up", namespace=self.redis_namespace)
            self.proxy.add(
                f"redis-{worker}",
                Endpoint(redis_ip, REDIS_PORT, self.redis_namespace),
                Endpoint("127.0.0.1", redis_local, self.redis_namespace),
            )
            if model_port is not None:  # the model API: outside the simulated cluster
                self.proxy.add(
                    f"model-{worker}",
                    Endpoint("127.0.0.1", model_port, namespace),
                    Endpoint("127.0.0.1", model_port),
                )
        self.redis_port = free_port()
        self.proxy.add(
            "redis-dispatcher",
            Endpoint("127.0.0.1", self.redis_port),
            Endpoint("127.0.0.1", redis_local, self.redis_namespace),
        )
        self._wait_for_redis()
        return self

    def partition(self, worker: str) -> None:
        ip("link", "set", self.veth(worker), "down", namespace=self.namespace(worker))

    def heal(self, worker: str) -> None:
        ip("link", "set", self.veth(worker), "up", namespace=self.namespace(worker))

    def launcher(self, worker: str) -> tuple[str, ...]:
        """The command prefix that runs a process in ``worker``'s namespace."""
        return ("ip", "netns", "exec", self.namespace(worker))

    def close(self) -> None:
        """Remove everything this topology made; each step runs even when another failed."""
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.close()
        if self.redis_process is not None:
            self.redis_process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.redis_process.wait(10)
        for namespace in reversed(self.namespaces):  # deleting a namespace deletes its veths
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=10)
        for inside, outside in self.veths:  # only left when a move into a namespace failed
            for name in (inside, outside):
                subprocess.run(["ip", "link", "delete", name], capture_output=True, timeout=10)

    def _add_namespace(self, namespace: str) -> None:
        ip("netns", "add", namespace)
        self.namespaces.append(namespace)
        ip("link", "set", "lo", "up", namespace=namespace)

    def _start_redis(self, port: int) -> None:
        log = (self.tmp / f"redis-{self.tag}.log").open("ab")
        self.redis_process = subprocess.Popen(
            ["ip", "netns", "exec", self.redis_namespace, "redis-server", "--port", str(port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()

    def _wait_for_redis(self) -> None:
        client = redis.Redis.from_url(self.url(), socket_timeout=1)
        deadline = time.monotonic() + 15
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            client.close()


@contextlib.contextmanager
def topology(
    tmp: Path,
    workers: tuple[str, ...],
    model_port: int | None,
    latency_ms: float = 1.0,
    jitter_ms: float = 0.2,
) -> Iterator[Topology]:
    """A started ``Topology``, removed afterwards."""
    built = Topology(tmp, workers, latency_ms, jitter_ms)
    try:
        yield built.start(model_port)
    finally:
        built.close()


@dataclass
class TopologyFleet(Fleet):
    """A ``Fleet`` whose workers run in the topology's namespaces, on its Redis (database 0)."""

    net: Topology | None = None

    @property
    def url(self) -> str:
        assert self.net is not None
        return self.net.url(self.db)

    def add_worker(
        self, name: str, loglevel: str = "INFO", app: str = "workers", **env: str
    ) -> WorkerProcess:
        """As ``Fleet.add_worker``, always at log level INFO: a quieter worker is found ready by
        a Celery ping through its broker URL, an address only its namespace reaches (from the
        host namespace the ping would leave through the default route)."""
        return super().add_worker(name, "INFO", app, **env)

    def worker_env(self, name: str) -> dict[str, str]:
        assert self.net is not None
        return {"RHO_AGENT_BROKER_URL": self.net.worker_url(name, self.db)}

    def launcher_of(self, name: str) -> tuple[str, ...]:
        assert self.net is not None
        return self.net.launcher(name)
