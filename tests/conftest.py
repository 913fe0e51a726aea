"""Fixtures shared by every test: the scripted model server, and no way to reach a real model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rho_agent.testing import ScriptedModelServer
from rho_agent.testing.fake_daytona import FakeDaytonaServer

# Nothing in the suite may reach a real model: a client that forgets base_url hits a closed port.
UNREACHABLE_MODEL_URL = "http://127.0.0.1:9/v1"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("OPENAI_BASE_URL", UNREACHABLE_MODEL_URL)
    monkeypatch.setenv("RHO_AGENT_SESSIONS_DIR", str(tmp_path / "sessions"))
    monkeypatch.delenv("RHO_AGENT_BROKER_URL", raising=False)


@pytest.fixture(scope="module")
def broker(request: pytest.FixtureRequest) -> str:
    """The broker of a test's fleet: ``redis``, unless the test is parametrized over brokers
    (``tests.integration.fleet.on_both_brokers``)."""
    return str(getattr(request, "param", "redis"))


@pytest.fixture(scope="session")
def _shared_model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _workers_allow_the_model_server(
    _shared_model_server: ScriptedModelServer,
) -> Iterator[None]:
    """Fleet workers started by tests send their key to the scripted server (and nowhere else).

    Session-scoped, so it is in the environment before module-scoped fleets start their workers.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "RHO_AGENT_ALLOWED_BASE_URLS",
            f"{_shared_model_server.base_url},{UNREACHABLE_MODEL_URL}",
        )
        yield


@pytest.fixture
def model_server(_shared_model_server: ScriptedModelServer) -> Iterator[ScriptedModelServer]:
    """The scripted OpenAI-compatible server, emptied before each test."""
    _shared_model_server.reset()
    _shared_model_server.responder = None
    yield _shared_model_server
    _shared_model_server.reset()
    _shared_model_server.responder = None


@pytest.fixture
def fake_daytona(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDaytonaServer]:
    """A fake Daytona the SDK reaches through the environment; no test may leave a sandbox."""
    with FakeDaytonaServer() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield server
        assert server.running == [], "a test left a sandbox running"
