"""Fleet-wide rate limits: three real worker processes share one limit through Redis.

The limit is 30 requests in any 6 s (the window is a setting; a minute works the same, only
slower to test). A 429 with Retry-After pauses the model's limit for every worker.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch import Dispatcher
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, error, text
from tests.integration.fleet import Fleet, running_fleet, wait_until

pytestmark = pytest.mark.integration

LIMITED, STORMY = "rl-model", "storm-model"
REQUESTS, WINDOW_S = 30, 6.0
RETRY_AFTER_S = 3
ARRIVAL_JITTER_S = 0.5
"""A worker admits a call when it reserves it; the server sees it when it arrives, up to a few
hundred milliseconds later on a loaded machine (one run: 31 arrivals within 5.79 s). The limit
is checked on windows this much shorter."""
STORM_S = 0.5
LIMITS = [
    {"model": LIMITED, "requests": REQUESTS, "window_s": WINDOW_S},
    {"model": STORMY, "requests": 10_000, "window_s": 60},
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("rate-fleet")
    env = {"RHO_AGENT_RATE_LIMITS": json.dumps(LIMITS)}
    with running_fleet(tmp, {"r1": env, "r2": env, "r3": env}) as running:
        yield running


@pytest.fixture
def dispatcher(fleet: Fleet) -> Iterator[Dispatcher]:
    with fleet.dispatcher() as client:
        yield client


def _config(server: ScriptedModelServer, tmp_path: Path, model: str) -> AgentConfig:
    return AgentConfig(model=model, base_url=server.base_url, working_dir=str(tmp_path))


def _most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, arrived in enumerate(times):
        while arrived - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_three_workers_never_pass_the_shared_limit_and_reach_90_percent_of_it(
    dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: text("ok")
    jobs = dispatcher.map(
        [f"call {n}" for n in range(120)], _config(model_server, tmp_path, LIMITED)
    )
    seen_waiting: list[str] = []

    def watch() -> None:
        while len(model_server.requests) < 60:
            seen_waiting.extend(
                i.waiting for i in dispatcher.infos([j.id for j in jobs]) if i and i.waiting
            )
            time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    results = dispatcher.gather(jobs, timeout=120)
    watcher.join()
    assert {result.status for result in results} == {"completed"}, "waiting jobs wait, not fail"
    times = sorted(request.timestamp for request in model_server.requests)
    assert len(times) == 120
    most = _most_in_any_window(times, WINDOW_S - ARRIVAL_JITTER_S)
    first_three_windows = sum(1 for t in times if t < times[0] + 3 * WINDOW_S)
    print(
        f"\n{REQUESTS} requests / {WINDOW_S:g} s across 3 workers: at most {most} in any "
        f"{WINDOW_S - ARRIVAL_JITTER_S:g} s window; "
        f"{first_three_windows} in the first 3 windows ({first_three_windows / (3 * REQUESTS):.0%})"
    )
    gaps = [round(times[i + REQUESTS] - times[i], 3) for i in range(len(times) - REQUESTS)]
    assert most <= REQUESTS, f"shortest spans of {REQUESTS + 1} requests: {sorted(gaps)[:5]}"
    assert first_three_windows >= 0.9 * 3 * REQUESTS
    assert any(
        reason.startswith(f"waiting for rate limit ({LIMITED} at ") for reason in seen_waiting
    )


def test_a_429_storm_with_retry_after_pauses_every_worker(
    fleet: Fleet, dispatcher: Dispatcher, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    lock = threading.Lock()
    storms: list[float] = []

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        # The storm: every request of its first STORM_S. (The first three requests, whenever
        # they came, made a flaky test: a 429 that paused the other workers before their first
        # request made theirs arrive 3 s later, when the first job's retry had been admitted.)
        now = time.time()
        with lock:
            if not storms or now - storms[0] < STORM_S:
                storms.append(now)
                return error(429, "rate limited", headers={"retry-after": str(RETRY_AFTER_S)})
        return text("ok")

    model_server.responder = respond
    config = _config(model_server, tmp_path, STORMY)
    first = [
        dispatcher.submit("storm", config, queue=fleet.queue_of(name)) for name in fleet.workers
    ]
    wait_until(lambda: len(storms) >= 1, within_s=20, what="a 429")
    second = [
        dispatcher.submit(f"after {n}", config, queue=fleet.queue_of(name))
        for name in fleet.workers
        for n in range(2)
    ]
    wait_until(
        lambda: any(i and i.waiting for i in dispatcher.infos([j.id for j in second])),
        within_s=RETRY_AFTER_S,
        what="a job that never met a 429 waiting for the paused limit",
    )
    results = dispatcher.gather(first + second, timeout=60)
    assert {result.status for result in results} == {"completed"}
    resumed = sorted(r.timestamp for r in model_server.requests)[len(storms) :]
    assert len(resumed) == len(first) + len(second)
    paused_until = max(storms) + RETRY_AFTER_S
    early = [round(t - paused_until, 3) for t in resumed if t < paused_until - 0.05]
    assert not early, f"requests during the pause (s before its end): {early}"
    assert {info.worker for info in dispatcher.infos([j.id for j in second]) if info} == {
        f"{name}" for name in fleet.workers
    }
