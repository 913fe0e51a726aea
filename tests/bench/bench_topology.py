"""Benchmarks 3 and 4 on the simulated cluster: dispatch latency and fan-out, against bare Celery.

The topology of tests/chaos/topology.py (root only): Redis in one network namespace, two worker
namespaces, every link 1 ms +- 0.2 ms through the delaying proxy; the dispatcher (this process)
and the model server stay in the host namespace, and the dispatcher's link to Redis is delayed
too. In each worker namespace run one fleet worker (Redis database 0) and one bare Celery worker
(database 1), so both see the same links; the measurements alternate between them as in
bench_dispatch.py. Not part of the suite's registry (it needs root):

    python -m tests.bench.bench_topology [--quick] [--latency-ms 1.0] [--jitter-ms 0.2]

Prints the rows and the ratios (fleet / bare): dispatch latency (lower is better) and fan-out
throughput (higher is better), and the 1-minute load average while it ran.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from celery import Celery

from tests.bench import bare_celery
from tests.bench.bench_dispatch import (
    CONCURRENCY,
    RESULT_TIMEOUT,
    Sizes,
    _drain,
    _fan_out,
    _fan_out_row,
    _latencies,
    _latency_row,
)
from tests.bench.fleet_support import WORKER_START_TIMEOUT, RunningFleet, _stop_group
from tests.bench.harness import REPO_ROOT, LoadSampler, Row, machine, spawned_server
from tests.chaos.topology import Topology, TopologyFleet, available, topology

WORKERS = ("w0", "w1")
FLEET_DB, BARE_DB = 0, 1


@contextlib.contextmanager
def fleet_in(net: Topology, tmp: Path, base_url: str) -> Iterator[RunningFleet]:
    from rho_agent import AgentConfig

    fleet = TopologyFleet(FLEET_DB, tmp, net=net)
    try:
        for name in WORKERS:
            fleet.add_worker(name, RHO_AGENT_ALLOWED_BASE_URLS=base_url)  # INFO: see add_worker
        for worker in fleet.workers.values():
            worker.wait_ready(WORKER_START_TIMEOUT)
        config = AgentConfig(base_url=base_url, working_dir=str(tmp))
        with fleet.dispatcher() as dispatcher:
            yield RunningFleet(fleet, dispatcher, config)
    finally:
        fleet.stop()


@contextlib.contextmanager
def bare_in(net: Topology, tmp: Path) -> Iterator[Celery]:
    import subprocess

    processes = []
    for name in WORKERS:
        env = {
            **os.environ,
            bare_celery.BROKER_ENV: net.worker_url(name, BARE_DB),
            "PYTHONPATH": str(REPO_ROOT),
        }
        command = [
            *net.launcher(name), sys.executable, "-m", "celery", "-A",
            "tests.bench.bare_celery:app", "worker", "-P", "threads", "-c", str(CONCURRENCY),
            "-Q", bare_celery.QUEUE, "--loglevel=WARNING", "--without-mingle",
            "--without-gossip", f"--hostname=bare-{name}@%h",
        ]  # fmt: skip
        with (tmp / f"bare-{name}.log").open("ab") as log:
            process = subprocess.Popen(
                command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        processes.append(process)
    app = bare_celery.client_app(net.url(BARE_DB))
    try:
        for index in range(len(WORKERS) * 4):  # both workers up and their connections warm
            app.send_task(bare_celery.NOOP, args=[index]).get(timeout=WORKER_START_TIMEOUT)
        yield app
    finally:
        app.close()
        for process in processes:
            _stop_group(process)


def run(quick: bool, latency_ms: float, jitter_ms: float) -> list[Row]:
    sizes = Sizes(40, 200, 2) if quick else Sizes(200, 2000, 3)
    with tempfile.TemporaryDirectory(prefix="rho-bench-topology-") as workdir:
        tmp = Path(workdir)
        with spawned_server("echo", workdir) as server:
            port = urlsplit(server.base_url).port
            with (
                topology(tmp, WORKERS, port, latency_ms, jitter_ms) as net,
                bare_in(net, tmp) as bare,
                fleet_in(net, tmp, server.base_url) as fleet,
            ):
                _fan_out(fleet, 20)  # warm up
                latency, trips = _latencies(fleet.dispatcher, fleet, bare, sizes.rounds)
                fleet_rates: list[float] = []
                bare_rates: list[float] = []
                for _ in range(sizes.repetitions):
                    bare_rates.append(_drain(bare, sizes.fan_out))
                    fleet_rates.append(_fan_out(fleet, sizes.fan_out))
    rows = [
        _latency_row(f"topology ({latency_ms:g} ms links)", latency, trips),
        _fan_out_row(fleet_rates, bare_rates, sizes.fan_out),
    ]
    rows[1].name += f", topology ({latency_ms:g} ms links)"
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 2 repetitions")
    parser.add_argument("--latency-ms", type=float, default=1.0)
    parser.add_argument("--jitter-ms", type=float, default=0.2)
    args = parser.parse_args(argv)
    why_not = available()
    if why_not is not None:
        print(f"bench_topology cannot run here: {why_not}", file=sys.stderr)
        return 2
    print(f"machine: {machine()}; result timeout {RESULT_TIMEOUT:g} s")
    with LoadSampler() as load:
        rows = run(args.quick, args.latency_ms, args.jitter_ms)
    summary = load.summary()
    print(
        f"load average: median {summary['median']:.1f} ({summary['min']:.1f}-{summary['max']:.1f})"
    )
    for row in rows:
        print(
            f"{row.name}: {row.figure:.2f} {row.unit}, bare Celery {row.baseline:.2f} {row.unit}, "
            f"ratio {row.ratio:.2f} (target {row.target}: {'met' if row.met else 'NOT met'})"
        )
        for key, value in row.details.items():
            print(f"    {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
