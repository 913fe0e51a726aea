"""Shared pieces of the benchmark suite: result rows, the registry entry type, statistics,
the spawned scripted server, a no-op tool and process memory.

Every figure is compared with a baseline measured in the same run on the same machine, and
repeated measurements are summarised by their median: these machines are noisy, so a lone
absolute time says little.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import resource
import selectors
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rho_agent import Agent, AgentConfig, Session, ToolHandler, ToolInvocation, ToolOutput
from rho_agent.testing import SpawnedModelServer
from rho_agent.trace import JsonlTraceSink

MODEL = "gpt-5-mini"
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT = 30.0
DEFAULT_REDIS = "redis://127.0.0.1:6379"
LOAD_SAMPLE_EVERY = 1.0


@dataclass(frozen=True)
class Settings:
    """How big to make each benchmark: ``quick`` shrinks sizes and repetitions."""

    quick: bool
    workdir: str
    """A temporary directory the benchmarks may write traces into."""
    redis: str = DEFAULT_REDIS
    """The Redis server (no database): each fleet benchmark claims a free database 1-15 on it."""
    broker: str | None = None
    """The RabbitMQ server (``amqp://user:password@host:port``, no vhost) that carries the fleet
    benchmarks' jobs and bare Celery's tasks, each in a fresh vhost; None: ``redis`` does."""


@dataclass
class Row:
    """One measured figure against its in-run baseline (one line of the table, one JSON object).

    ``ratio`` is figure / baseline. ``met`` is None when the row only reports (no target).
    ``baseline_bound`` is ``">"`` when the baseline did not finish: its figure is a lower bound.
    ``runs`` are the figure's repeated measurements (the figure is their median; the table shows
    their range); ``baseline_runs`` the same for the baseline. ``load`` is the 1-minute load
    average sampled while the benchmark ran (filled in by run.py): a figure taken on a loaded
    machine says so next to itself.
    """

    name: str
    figure: float
    unit: str
    baseline: float | None
    target: str
    met: bool | None
    ratio: float | None = None
    baseline_bound: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)
    load: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline:
            self.ratio = self.figure / self.baseline

    def as_json(self, machine: dict[str, Any]) -> dict[str, Any]:
        return {**asdict(self), "machine": machine}


@dataclass(frozen=True)
class Benchmark:
    """A registry entry: ``run(settings)`` measures and returns its rows."""

    key: str
    title: str
    run: Callable[[Settings], list[Row]]


def median(values: list[float]) -> float:
    if not values:
        raise ValueError("median() of no measurements: the benchmark ran zero repetitions")
    return statistics.median(values)


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements, for the JSON details."""
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


class LoadSampler:
    """The 1-minute load average, sampled every LOAD_SAMPLE_EVERY seconds on a thread while
    installed (``with LoadSampler() as load: ...`` then ``load.summary()``)."""

    def __init__(self) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="load-sampler", daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        return spread(self.samples)

    def _sample(self) -> None:
        while not self._stop.wait(LOAD_SAMPLE_EVERY):
            self.samples.append(os.getloadavg()[0])


def block_medians(values: list[float], blocks: int = 3) -> list[float]:
    """The medians of ``values`` cut into ``blocks`` consecutive blocks: the repetitions of a
    figure measured as one long series (its range across the blocks)."""
    size = len(values) // blocks
    if size == 0:
        raise ValueError(f"{len(values)} measurements cannot make {blocks} repetitions")
    return [median(values[index * size : (index + 1) * size]) for index in range(blocks)]


def skipped(name: str, why: str) -> Row:
    """A row that was not measured, with the reason (and the fix) in the table."""
    return Row(
        name=name,
        figure=0.0,
        unit="",
        baseline=None,
        target=why,
        met=None,
        details={"skipped": why},
    )


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.contextmanager
def spawned_server(
    behaviour: str, log_dir: str, delay: float = 0.0
) -> Iterator[SpawnedModelServer]:
    """The scripted model server in its own process (its CPU use never counts against ours).

    Its stderr goes to a log file in ``log_dir``: a client killed mid-request makes the server
    log connection resets, which are expected and would drown the table.
    """
    command = [
        sys.executable,
        "-m",
        "rho_agent.testing.model_server",
        "--behaviour",
        behaviour,
        "--delay",
        str(delay),
        "--stop-on-stdin-eof",
    ]
    log_path = Path(log_dir) / f"model-server-{behaviour.replace(':', '-')}-{delay:g}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    server = SpawnedModelServer(process, "")
    try:
        server.base_url = _first_line(process, SERVER_START_TIMEOUT, log_path)
        yield server
    finally:
        server.stop()


def _first_line(process: subprocess.Popen[bytes], timeout: float, log_path: Path) -> str:
    """The server's base URL, printed as its first stdout line, within ``timeout`` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(
                f"the model server printed no URL within {timeout} s; see {log_path}"
            )
    line = process.stdout.readline().decode().strip()
    if not line.startswith("http"):
        raise RuntimeError(f"the model server did not start (got {line!r}); see {log_path}")
    return line


class NoopTool(ToolHandler):
    """A tool that does nothing, so a turn measures the loop and not the tool."""

    name = "noop"
    description = "Does nothing and answers ok."
    parameters: dict[str, Any] = {"type": "object", "properties": {}}  # noqa: RUF012

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        return ToolOutput("ok")


def make_agent(base_url: str, workdir: str) -> Agent:
    """The benchmark agent: the developer profile's tools plus ``noop`` (a realistic request)."""
    agent = Agent(
        AgentConfig(model=MODEL, base_url=base_url, working_dir=workdir, profile="developer")
    )
    agent.registry.register(NoopTool())
    return agent


async def session_conversation(agent: Agent, prompt: str, trace_path: str) -> Session:
    """One conversation through ``Session.run`` with its trace written to ``trace_path``."""
    session = Session(agent, sinks=[JsonlTraceSink(trace_path)])
    result = await session.run(prompt)
    await session.close()
    if result.status != "completed":
        raise RuntimeError(f"benchmark session ended {result.status!r}: {result.events[-1:]}")
    return session


def ensure_open_files(wanted: int) -> None:
    """Lift the soft open-files limit to the hard one; fail clearly if ``wanted`` won't fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raise RuntimeError(
            f"this benchmark needs {wanted} open files but the limit is {soft}; "
            f"raise it (ulimit -n {wanted}) or run with --quick"
        )


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class GcTimer:
    """Seconds the cyclic garbage collector ran while installed (``with GcTimer() as gc_time``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full_collections = 0
        self._started = 0.0

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._started
        self.full_collections += info["generation"] == 2


class Stopwatch:
    """``with Stopwatch() as watch: ...`` then ``watch.seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._start
