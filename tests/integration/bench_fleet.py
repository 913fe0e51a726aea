"""Fleet benchmark: dispatch latency and fan-out throughput against bare Celery, jobs in flight.

Run it by hand (it is not collected by pytest)::

    python -m tests.integration.bench_fleet [--jobs 1000] [--workers 2] [--rounds 200]

It uses the real Redis on 127.0.0.1:6379 (a database of its own), worker subprocesses and the
scripted model server in a subprocess, and prints one JSON object with every figure.

* bare Celery: a no-op task on the same pool (threads) and the same Redis, with a Redis result
  backend; round trip = ``delay().get()``; drain = N tasks sent, then every result fetched.
* rho-agent: one-turn echo jobs; round trip = ``submit().result()``; dispatch latency = round trip
  minus the time the job ran on its worker (``finished_at - started_at``), i.e. what the fleet adds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery

from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer
from tests.integration.fleet import REPO_ROOT, Fleet, claimed_db

bare_app = Celery(
    "bare",
    broker=os.environ.get("BENCH_BROKER_URL"),
    backend=os.environ.get("BENCH_BROKER_URL"),
    set_as_current=False,
)
bare_app.conf.update(
    task_serializer="json", accept_content=["json"], result_serializer="json",
    worker_prefetch_multiplier=1, task_acks_late=True, task_default_queue="bare",
    broker_connection_retry_on_startup=True,
)  # fmt: skip


def _noop(index: int) -> int:
    return index


noop: Any = bare_app.task(name="bench.noop")(_noop)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    figures: dict[str, Any] = {"cpus": os.cpu_count()}
    with claimed_db() as db, tempfile.TemporaryDirectory() as tmp:
        url = f"redis://127.0.0.1:6379/{db}"
        figures["bare_celery"] = bench_bare(url, Path(tmp), args)
        figures["rho_agent"] = bench_fleet(db, Path(tmp), args)
    bare, ours = figures["bare_celery"], figures["rho_agent"]
    figures["latency_ratio"] = round(ours["dispatch_latency_ms"] / bare["round_trip_ms"], 2)
    figures["throughput_ratio"] = round(ours["fan_out_per_s"] / bare["drain_per_s"], 2)
    print(json.dumps(figures, indent=2))


def bench_bare(url: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "BENCH_BROKER_URL": url, "PYTHONPATH": str(REPO_ROOT)}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.integration.bench_fleet:bare_app",
                "worker",
                "-P",
                "threads",
                "-c",
                "500",
                "--loglevel=WARNING",
                "--without-mingle",
                "--without-gossip",
                f"--hostname=bare{index}@%h",
            ],
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
            stdout=(tmp / f"bare{index}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for index in range(args.workers)
    ]
    try:
        bare_app.conf.broker_url = bare_app.conf.result_backend = url
        noop.delay(0).get(timeout=60)  # workers up and connections warm
        trips = []
        for index in range(args.rounds):
            started = time.perf_counter()
            noop.delay(index).get(timeout=10)
            trips.append(time.perf_counter() - started)
        started = time.perf_counter()
        results = [noop.delay(index) for index in range(args.jobs)]
        assert [result.get(timeout=120) for result in results] == list(range(args.jobs))
        drain = time.perf_counter() - started
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(20)
    return {
        "round_trip_ms": round(statistics.median(trips) * 1000, 2),
        "round_trip_p90_ms": round(sorted(trips)[int(len(trips) * 0.9)] * 1000, 2),
        "drain_per_s": round(args.jobs / drain, 1),
    }


def bench_fleet(db: int, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    fleet = Fleet(db, tmp)
    server = ScriptedModelServer.spawn("echo")
    try:
        for index in range(args.workers):
            fleet.add_worker(f"w{index}", "WARNING", RHO_AGENT_AGENT_FACTORY="")
        for worker in fleet.workers.values():
            worker.wait_ready()
        config = AgentConfig(base_url=server.base_url, working_dir=str(tmp))
        with fleet.dispatcher() as dispatcher:
            dispatcher.gather(dispatcher.map(["warm up"] * 20, config), timeout=60)
            trips, overheads = [], []
            for index in range(args.rounds):
                started = time.perf_counter()
                job = dispatcher.submit(f"round {index}", config)
                job.result(timeout=10)
                trip = time.perf_counter() - started
                info = job.info()
                assert info.started_at is not None and info.finished_at is not None
                trips.append(trip)
                overheads.append(trip - (info.finished_at - info.started_at))
            started = time.perf_counter()
            jobs = dispatcher.map([f"fan out {i}" for i in range(args.jobs)], config)
            results = dispatcher.gather(jobs, timeout=300)
            fan_out = time.perf_counter() - started
            assert all(r.text == f"Echo: fan out {i}" for i, r in enumerate(results))
    finally:
        fleet.stop()
        server.stop()
    return {
        "round_trip_ms": round(statistics.median(trips) * 1000, 2),
        "dispatch_latency_ms": round(statistics.median(overheads) * 1000, 2),
        "dispatch_latency_p90_ms": round(sorted(overheads)[int(len(overheads) * 0.9)] * 1000, 2),
        "fan_out_per_s": round(args.jobs / fan_out, 1),
    }


if __name__ == "__main__":
    main()
