"""A worker's key goes only to its allowed endpoints; a new session cannot take a used id.

Both through ``JobRun`` on the embedded bus, with the scripted model server; the fleet versions
run in tests/integration/test_secrets_fleet.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch.engine.endpoints import check_endpoint, normalise
from dispatch.engine.memory_bus import MemoryBus
from dispatch.engine.run import JobOutcome, JobRun, RunnerOptions
from dispatch.errors import JobRefused
from dispatch.info import JobInfo
from dispatch.spec import JobSpec, build_spec
from rho_agent import AgentConfig
from rho_agent.testing import ScriptedModelServer, behaviour
from workers.worker_settings import WorkerSettings


@pytest.fixture
def elsewhere() -> Iterator[ScriptedModelServer]:
    """A second model server: an endpoint the worker was not configured for."""
    with ScriptedModelServer() as server:
        server.responder = behaviour("echo")
        yield server


async def run_job(
    bus: MemoryBus,
    config: AgentConfig,
    options: RunnerOptions,
    session_id: str | None = None,
    *,
    continue_session: bool = False,
) -> tuple[JobSpec, JobOutcome, JobInfo]:
    spec = build_spec("hello", config, session_id=session_id, continue_session=continue_session)
    await bus.submit([spec], "q")
    outcome = await JobRun(spec, bus, options).run()
    [info] = await bus.get_info([spec.job_id])
    assert info is not None
    return spec, outcome, info


async def test_a_job_naming_another_endpoint_fails_and_the_key_never_leaves(
    model_server: ScriptedModelServer, elsewhere: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo")
    options = RunnerOptions(allowed_base_urls=(normalise(model_server.base_url),))
    bus = MemoryBus()
    _, outcome, info = await run_job(
        bus, AgentConfig(base_url=elsewhere.base_url, working_dir=str(tmp_path)), options
    )
    assert (outcome.status, info.status) == ("error", "error")
    assert "not one this worker sends its API key to" in (info.error or "")
    assert "RHO_AGENT_ALLOWED_BASE_URLS" in (info.error or "")
    [result] = await bus.get_results([info.job_id])
    assert result is not None and result.error is not None, "the result says why, not null"
    assert (result.error.type, result.error.message) == ("JobRefused", info.error)
    assert elsewhere.requests == [], "the other endpoint saw a request"
    assert all("authorization" not in r.headers for r in elsewhere.requests)
    _, allowed, _ = await run_job(
        bus, AgentConfig(base_url=model_server.base_url + "/", working_dir=str(tmp_path)), options
    )
    assert allowed.status == "completed"
    assert model_server.requests[0].headers["authorization"] == "Bearer sk-test-not-a-real-key"


def allowed_base_urls(env: dict[str, str]) -> tuple[str, ...]:
    """The endpoints a worker started with ``env`` sends its key to."""
    broker = {"RHO_AGENT_BROKER_URL": "redis://127.0.0.1:6379/0"}
    return WorkerSettings.from_env({**broker, **env}).allowed_base_urls


def test_the_default_allowed_endpoint_is_the_workers_own() -> None:
    assert allowed_base_urls({}) == ("https://api.openai.com/v1",)
    assert allowed_base_urls({"OPENAI_BASE_URL": "http://LLM.local:8000/v1/"}) == (
        "http://llm.local:8000/v1",
    )
    assert allowed_base_urls({"RHO_AGENT_ALLOWED_BASE_URLS": " , "}) == allowed_base_urls({})
    allowed = allowed_base_urls({"RHO_AGENT_ALLOWED_BASE_URLS": "https://a.example/v1, http://b"})
    assert allowed == ("https://a.example/v1", "http://b")
    check_endpoint(None, allowed)
    check_endpoint("HTTPS://a.example/v1/", allowed)
    for url in ("https://a.example/v2", "https://a.example.evil/v1", "http://a.example/v1"):
        with pytest.raises(JobRefused):
            check_endpoint(url, allowed)


async def test_a_job_starting_a_new_session_with_a_used_id_is_refused(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo")
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    bus = MemoryBus()
    first, outcome, _ = await run_job(bus, config, RunnerOptions())
    assert outcome.status == "completed"
    before = len(await bus.read_trace(first.session_id))
    _, refused, info = await run_job(bus, config, RunnerOptions(), first.session_id)
    assert refused.status == "error"
    assert f"session {first.session_id} already exists" in (info.error or "")
    [result] = await bus.get_results([info.job_id])
    assert result is not None and result.error is not None
    assert (result.error.type, result.error.message) == ("session_exists", info.error)
    assert len(await bus.read_trace(first.session_id)) == before, "nothing was appended"
    _, continued, _ = await run_job(
        bus, config, RunnerOptions(), first.session_id, continue_session=True
    )
    assert continued.status == "completed"
