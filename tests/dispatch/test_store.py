"""RedisSessionStore: the directory store's interface on the fleet's Redis keys."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch import FleetSettings
from dispatch.fleet.session_store import RedisSessionStore
from rho_agent import Agent, AgentConfig, SessionError, SessionLocked, SessionNotFound
from rho_agent.testing import ScriptedModelServer, behaviour
from tests.integration.fleet import REDIS_HOST, claimed_db

pytestmark = pytest.mark.integration


@pytest.fixture
def store() -> Iterator[RedisSessionStore]:
    with claimed_db() as db:
        settings = FleetSettings(
            broker_url=f"{REDIS_HOST}/{db}", key_prefix=f"s{secrets.token_hex(3)}:"
        )
        redis_store = RedisSessionStore(settings=settings)
        yield redis_store
        redis_store.close()


async def test_create_run_list_and_resume(
    store: RedisSessionStore, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = behaviour("echo")
    agent = Agent(AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path)))
    session = store.create_session(agent)
    await session.run("first question")
    session_id = session.state.session_id
    [info] = store.list()
    assert (info.id, info.status, info.first_prompt) == (session_id, "completed", "first question")
    assert store.get_latest_id() == session_id
    assert store.load_state(session_id).to_jsonl() == session.state.to_jsonl()
    resumed = store.resume(session_id)
    result = await resumed.run("second question")
    assert result.text == "Echo: second question"
    assert resumed.state.get_user_messages() == ["first question", "second question"]
    assert store.load_state(session_id).run_count == 2


def test_unknown_sessions(store: RedisSessionStore) -> None:
    with pytest.raises(SessionNotFound):
        store.resume("nope")
    assert store.list() == [] and store.get_latest_id() is None


def test_an_existing_id_cannot_be_created_again(store: RedisSessionStore, tmp_path: Path) -> None:
    agent = Agent(AgentConfig(working_dir=str(tmp_path)))
    session = store.create_session(agent, session_id="taken-1")
    with pytest.raises(SessionError, match="session taken-1 already exists"):
        store.create_session(agent, session_id="taken-1")  # before any record was written
    assert session.state.session_id == "taken-1"
    store._r.hset(store.keys.session("by-a-job"), "created_at", "2026-01-01T00:00:00+00:00")
    with pytest.raises(SessionError, match="already exists"):
        store.create_session(agent, session_id="by-a-job")


def test_a_session_a_live_job_owns_cannot_be_resumed(
    store: RedisSessionStore, tmp_path: Path
) -> None:
    agent = Agent(AgentConfig(working_dir=str(tmp_path)))
    session = store.create_session(agent, session_id="owned-1")
    session.state.append("session_start", session_id="owned-1")
    store._r.set(store.keys.session_owner("owned-1"), "j-live")
    store._r.hset(store.keys.job("j-live"), "status", "running")
    with pytest.raises(SessionLocked, match="fleet job j-live"):
        store.resume("owned-1")
    store._r.hset(store.keys.job("j-live"), "status", "completed")
    assert store.resume("owned-1").state.session_id == "owned-1"
