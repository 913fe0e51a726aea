"""SessionStore: sessions that persist as they run, list fast, resume exactly, and lock."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from rho_agent import (
    Agent,
    AgentConfig,
    ConfigError,
    Session,
    SessionError,
    SessionInfo,
    SessionLocked,
    SessionNotFound,
    SessionStore,
    State,
)
from rho_agent.store.lock import is_locked
from rho_agent.testing import ScriptedModelServer, text, tool_call
from tests.sdk.helpers import ProbeTool
from tests.sdk.test_trace import assert_same_state

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_agent(server: ScriptedModelServer, tmp_path: Path, **config: Any) -> Agent:
    config.setdefault("working_dir", str(tmp_path))
    config.setdefault("profile", "developer")
    agent = Agent(AgentConfig(base_url=server.base_url, **config))
    agent.registry.register(ProbeTool())
    return agent


@pytest.fixture
def store(tmp_path: Path) -> SessionStore:
    return SessionStore(tmp_path / "store")


# -- where sessions live ---------------------------------------------------------------------


def test_default_directory_env_override_and_argument(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RHO_AGENT_SESSIONS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert SessionStore().path == tmp_path / "home" / ".config" / "rho-agent" / "sessions"
    monkeypatch.setenv("RHO_AGENT_SESSIONS_DIR", str(tmp_path / "env"))
    assert SessionStore().path == tmp_path / "env"
    assert SessionStore(tmp_path / "arg").path == tmp_path / "arg"
    assert SessionStore(str(tmp_path / "arg")).path == tmp_path / "arg"


def test_session_info_is_the_documented_dataclass() -> None:
    assert dataclasses.is_dataclass(SessionInfo)
    fields = {field.name: field.type for field in dataclasses.fields(SessionInfo)}
    assert fields == {
        "id": "str", "status": "str", "created_at": "datetime",
        "model": "str", "profile": "str", "first_prompt": "str",
    }  # fmt: skip


# -- the seed's examples ---------------------------------------------------------------------


async def test_seed_save_and_resume_example(
    model_server: ScriptedModelServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RHO_AGENT_SESSIONS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    model_server.script(text("Found three packages."), text("Continuing: package two is odd."))

    store = SessionStore()
    agent = Agent(
        AgentConfig(
            system_prompt="You are a research assistant.",
            profile="developer",
            base_url=model_server.base_url,
        )
    )
    # First session
    session = store.create_session(agent)
    await session.run(prompt="Start analyzing the codebase.")
    session_id = session.state.session_id
    # Later: resume
    session = store.resume(session_id, agent)
    result = await session.run(prompt="Continue where we left off.")

    assert result.text == "Continuing: package two is odd."
    sent = model_server.requests[1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[2]["content"] == "Found three packages."
    trace = tmp_path / ".config" / "rho-agent" / "sessions" / session_id / "trace.jsonl"
    loaded = State.from_jsonl(trace.read_bytes())
    assert loaded.run_count == 2 and loaded.status == "completed"
    assert loaded.get_user_messages() == [
        "Start analyzing the codebase.",
        "Continue where we left off.",
    ]
    await session.close()


async def test_seed_loading_a_past_sessions_state_example(
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("RHO_AGENT_SESSIONS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    model_server.script(tool_call("probe", {"id": "a"}), text("done"))
    session = SessionStore().create_session(make_agent(model_server, tmp_path))
    await session.run(prompt="probe it")
    await session.close()
    session_id = session.state.session_id

    state = seed_loading_example(session_id)

    cost = session.state.usage["cost_usd"]
    assert capsys.readouterr().out == f"Runs: 1, Cost: ${cost:.4f}\n  probe\n"
    assert state.usage == session.state.usage and state.usage["input_tokens"] > 0


def seed_loading_example(session_id: str) -> State:
    """The seed's "Loading a past session's state" code, with its example id made a parameter."""
    from pathlib import Path

    from rho_agent import State

    state = State.from_jsonl(
        Path(f"~/.config/rho-agent/sessions/{session_id}/trace.jsonl").expanduser().read_bytes()
    )
    print(f"Runs: {state.run_count}, Cost: ${state.usage['cost_usd']:.4f}")

    # What tools did the agent call?
    for msg in state.messages:
        for tc in msg.get("tool_calls") or []:
            print(f"  {tc['function']['name']}")
    return state


# -- persistence -----------------------------------------------------------------------------


async def test_a_created_session_persists_every_record_as_it_runs(
    model_server: ScriptedModelServer, store: SessionStore, tmp_path: Path
) -> None:
    model_server.script(tool_call("probe", {"id": "x"}), text("answer"))
    session = store.create_session(make_agent(model_server, tmp_path))
    trace = store.path / session.state.session_id / "trace.jsonl"
    on_disk_at_each_event: list[int] = []

    class Watcher:
        def on_event(self, event: dict[str, Any]) -> None:
            on_disk_at_each_event.append(len(trace.read_bytes().splitlines()))

    session.state.add_observer(Watcher())
    await session.run(prompt="go")

    live = session.state
    assert on_disk_at_each_event == list(range(2, len(live.records) + 1))
    assert trace.read_bytes() == live.to_jsonl()
    assert_same_state(State.from_jsonl(trace.read_bytes()), live)
    await session.close()


async def test_the_saved_config_excludes_secrets_and_rebuilds_the_agent(
    model_server: ScriptedModelServer, store: SessionStore, tmp_path: Path
) -> None:
    extras = {
        "api_key": "sk-live-SECRET1",
        "nested": {"GITHUB_TOKEN": "ghp_SECRET2", "region": "eu"},
        "note": "kept",
    }
    agent = make_agent(model_server, tmp_path, model="gpt-5-nano", extras=extras)
    session = store.create_session(agent)
    await session.close()
    saved = (store.path / session.state.session_id / "config.yaml").read_text()
    assert "SECRET" not in saved
    data = yaml.safe_load(saved)
    assert data["extras"] == {"nested": {"region": "eu"}, "note": "kept"}
    assert data["model"] == "gpt-5-nano" and data["base_url"] == model_server.base_url
    assert store.load_config(session.state.session_id) == AgentConfig.from_dict(data)

    model_server.script(text("from the rebuilt agent"))
    resumed = store.resume(session.state.session_id)  # no agent: rebuilt from config.yaml
    assert resumed.agent.config.model == "gpt-5-nano"
    result = await resumed.run(prompt="hello")
    assert result.text == "from the rebuilt agent"
    assert model_server.requests[-1].body["model"] == "gpt-5-nano"
    await resumed.close()


def test_credentials_in_urls_are_not_saved(store: SessionStore, tmp_path: Path) -> None:
    agent = Agent(
        AgentConfig(base_url="http://user:hunter2@127.0.0.1:9/v1", working_dir=str(tmp_path))
    )
    session = store.create_session(agent)
    saved = yaml.safe_load((store.path / session.state.session_id / "config.yaml").read_text())
    assert saved["base_url"] == "http://127.0.0.1:9/v1"
    asyncio.run(session.close())


@pytest.mark.parametrize("saved", [b"\xff\xfe model: x\n", b"model: [unclosed\n"])
def test_a_damaged_saved_config_is_a_session_error(
    store: SessionStore, tmp_path: Path, saved: bytes
) -> None:
    session = store.create_session(Agent(AgentConfig(working_dir=str(tmp_path))))
    asyncio.run(session.close())
    config = store.path / session.state.session_id / "config.yaml"
    config.write_bytes(saved)
    with pytest.raises(SessionError) as raised:
        store.load_config(session.state.session_id)
    assert str(config) in str(raised.value)


async def test_list_shows_sessions_newest_first(
    model_server: ScriptedModelServer, store: SessionStore, tmp_path: Path
) -> None:
    assert store.list() == [] and store.get_latest_id() is None
    ids = []
    for prompt in ("first task\nwith two lines", "second task"):
        model_server.script(text("ok"))
        session = store.create_session(make_agent(model_server, tmp_path, model="gpt-5-mini"))
        await session.run(prompt=prompt)
        await session.close()
        ids.append(session.state.session_id)
    idle = store.create_session(make_agent(model_server, tmp_path, profile="readonly"))
    await idle.close()

    infos = store.list()
    assert [info.id for info in infos] == [idle.state.session_id, *reversed(ids)]
    assert store.get_latest_id() == idle.state.session_id
    newest, second, first = infos
    assert (newest.status, newest.profile, newest.first_prompt) == ("idle", "readonly", "")
    assert (first.status, first.model, first.profile) == ("completed", "gpt-5-mini", "developer")
    assert first.first_prompt == "first task\nwith two lines"
    assert second.first_prompt == "second task"
    assert isinstance(first.created_at, datetime) and first.created_at.tzinfo is not None
    assert abs((datetime.now(UTC) - first.created_at).total_seconds()) < 60
    assert store.info(first.id) == first


async def test_session_ids_are_validated(store: SessionStore, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "trace.jsonl").write_text("")
    for bad in ("../outside", "..", "a/b", "/etc", "", ".hidden", "x" * 200):
        with pytest.raises(SessionError, match="invalid session id"):
            store.resume(bad)
        with pytest.raises(SessionError, match="invalid session id"):
            store.load_state(bad)
    with pytest.raises(SessionNotFound, match="no session nope"):
        store.resume("nope")
    agent = Agent(AgentConfig(working_dir=str(tmp_path)))
    with pytest.raises(SessionError, match="invalid session id"):
        store.create_session(agent, session_id="../escape")
    session = store.create_session(agent, session_id="my-session_1")
    await session.close()
    with pytest.raises(SessionError, match="already exists"):
        store.create_session(agent, session_id="my-session_1")


# -- locking and crashes ---------------------------------------------------------------------


async def test_a_second_store_in_this_process_takes_over_an_idle_session(
    model_server: ScriptedModelServer, store: SessionStore, tmp_path: Path
) -> None:
    # A notebook re-running a cell: a new SessionStore on the same directory (spelt differently)
    # resumes a session an idle Session of the first store still holds.
    agent = make_agent(model_server, tmp_path)
    model_server.script(text("first"))
    old = store.create_session(agent)
    session_id = old.state.session_id
    await old.run(prompt="one")
    other_store = SessionStore(store.path / ".." / store.path.name)
    new = other_store.resume(session_id, agent)
    trace = store.path / session_id / "trace.jsonl"
    size = trace.stat().st_size
    with pytest.raises(SessionError, match="resumed by a newer Session"):
        await old.run(prompt="stale object")
    assert trace.stat().st_size == size
    model_server.script(text("second"))
    assert (await new.run(prompt="two")).text == "second"
    await old.close()  # closing the superseded object must not unlock the new one
    newest = SessionStore(store.path).resume(session_id)  # and the newest hands over again
    with pytest.raises(SessionError, match="resumed by a newer Session"):
        await new.run(prompt="stale again")
    assert [m.get("content") for m in newest.state.messages if m.get("role") == "user"] == [
        "one",
        "two",
    ]
    await new.close()
    await newest.close()


async def test_resuming_in_the_same_store_hands_over_and_the_old_object_stops_writing(
    model_server: ScriptedModelServer, store: SessionStore, tmp_path: Path
) -> None:
    agent = make_agent(model_server, tmp_path)
    old = store.create_session(agent)
    session_id = old.state.session_id
    new = store.resume(session_id, agent)
    trace = store.path / session_id / "trace.jsonl"
    size = trace.stat().st_size
    with pytest.raises(SessionError, match="resumed by a newer Session"):
        await old.run(prompt="stale object")
    assert trace.stat().st_size == size
    model_server.script(text("fine"))
    assert (await new.run(prompt="current object")).text == "fine"
    await old.close()
    await new.close()


@pytest.mark.parametrize("same_store", [True, False], ids=["same-store", "other-store"])
async def test_resuming_while_a_run_is_in_progress_in_this_process_is_refused(
    model_server: ScriptedModelServer, store: SessionStore, tmp_path: Path, same_store: bool
) -> None:
    model_server.script(text("slow", delay=1.0))
    session = store.create_session(make_agent(model_server, tmp_path))
    task = asyncio.create_task(session.run(prompt="wait"))
    for _ in range(200):
        if session.state.status == "running":
            break
        await asyncio.sleep(0.01)
    resumer = store if same_store else SessionStore(store.path)
    with pytest.raises(SessionLocked, match="run in progress in this process"):
        resumer.resume(session.state.session_id)
    assert store.list()[0].status == "running"
    await session.cancel()
    await task
    await session.close()


CHILD = """
import asyncio, sys
from rho_agent import SessionStore

async def main() -> None:
    session = SessionStore(sys.argv[1]).resume(sys.argv[2])
    print("resumed", flush=True)
    await session.run(prompt="this run never ends")

asyncio.run(main())
"""
IDLE_CHILD = """
import sys, time
from rho_agent import SessionStore

session = SessionStore(sys.argv[1]).resume(sys.argv[2])
print("resumed", flush=True)
time.sleep(60)
"""


@contextlib.contextmanager
def child_process(
    store: SessionStore, session_id: str, script: str = CHILD
) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(store.path), session_id],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


async def test_another_process_holding_an_idle_session_is_refused_with_its_pid(
    model_server: ScriptedModelServer, store: SessionStore, tmp_path: Path
) -> None:
    session = store.create_session(make_agent(model_server, tmp_path))
    session_id = session.state.session_id
    await session.close()
    trace = store.path / session_id / "trace.jsonl"
    with child_process(store, session_id, IDLE_CHILD) as child:
        assert child.stdout is not None
        assert await asyncio.to_thread(child.stdout.readline) == "resumed\n"
        before = trace.read_bytes()
        for resumer in (store, SessionStore(store.path)):
            with pytest.raises(SessionLocked, match=f"open in another process \\(pid {child.pid} "):
                resumer.resume(session_id)
        assert trace.read_bytes() == before
        child.kill()
    resumed = store.resume(session_id)  # the kernel dropped the dead child's lock
    await resumed.close()


async def test_another_process_locks_the_session_and_its_death_shows_as_crashed(
    model_server: ScriptedModelServer, store: SessionStore, tmp_path: Path
) -> None:
    model_server.script(text("first answer"))
    session = store.create_session(make_agent(model_server, tmp_path))
    session_id = session.state.session_id
    await session.run(prompt="first")
    await session.close()
    model_server.script(text("the child never gets this", delay=30))

    with child_process(store, session_id) as child:
        assert child.stdout is not None
        assert await asyncio.to_thread(child.stdout.readline) == "resumed\n"
        deadline = time.monotonic() + 20
        while store.list()[0].status != "running":
            assert time.monotonic() < deadline, "the child never started its run"
            await asyncio.sleep(0.05)
        with pytest.raises(SessionLocked, match=f"pid {child.pid}"):
            store.resume(session_id)
        child.kill()

    info = store.info(session_id)
    assert info.status == "crashed"
    model_server.reset()
    model_server.script(text("picked up again"))
    resumed = store.resume(session_id)
    assert resumed.state.has_unfinished_run
    result = await resumed.resume_run()
    await resumed.close()

    assert result.status == "completed" and result.text == "picked up again"
    records = State.from_jsonl((store.path / session_id / "trace.jsonl").read_bytes()).records
    types = [record["type"] for record in records]
    assert types.count("run_start") == 2 and types.count("run_resume") == 1
    assert types[-1] == "run_end" and store.info(session_id).status == "completed"
    assert types.index("run_resume") > max(i for i, t in enumerate(types) if t == "run_start")


async def test_a_torn_tail_from_a_crash_is_cut_before_appending(
    model_server: ScriptedModelServer, store: SessionStore, tmp_path: Path
) -> None:
    model_server.script(text("one"), text("two"))
    session = store.create_session(make_agent(model_server, tmp_path))
    await session.run(prompt="first")
    await session.close()
    trace = store.path / session.state.session_id / "trace.jsonl"
    intact = trace.read_bytes()
    trace.write_bytes(intact + b'{"v":1,"type":"message","role":"assis')

    resumed = store.resume(session.state.session_id)
    await resumed.run(prompt="second")
    await resumed.close()
    data = trace.read_bytes()
    assert data.startswith(intact) and b"assis\n" not in data and b'"assis{' not in data
    reloaded = State.from_jsonl(data)
    assert reloaded.run_count == 2 and reloaded.records == resumed.state.records


def _write_session(root: Path, session_id: str, trace: Path, meta: dict[str, Any]) -> None:
    directory = root / session_id
    directory.mkdir(parents=True)
    os.link(trace, directory / "trace.jsonl")
    body = {"id": session_id, "model": "m", "profile": "p", **meta}
    (directory / "meta.json").write_text(json.dumps(body))


def test_list_reads_only_small_parts_of_each_trace(tmp_path: Path) -> None:
    # 300 sessions sharing (hard links) one 20 MB trace: reading every trace would be 6 GB.
    big = tmp_path / "big.jsonl"
    state = State()
    state.append("session_start", session_id="s", model="m", profile="p")
    state.append("run_start", run=1, prompt="p")
    with open(big, "wb") as file:
        file.write(state.to_jsonl())
        line = json.dumps({"v": 1, "type": "message", "ts": "t", "role": "user", "content": "x"})
        file.write((line + "\n").encode() * 300_000)
    assert big.stat().st_size > 20_000_000
    root = tmp_path / "sessions"
    for index in range(300):
        created = datetime(2026, 1, 1, tzinfo=UTC).replace(minute=index % 60, hour=index // 60)
        status = "running" if index % 2 else "completed"
        _write_session(
            root, f"s{index:03d}", big, {"created_at": created.isoformat(), "status": status}
        )

    started = time.process_time()  # this process's CPU: other processes' load does not count
    infos = SessionStore(root).list()
    elapsed = time.process_time() - started

    assert len(infos) == 300 and infos[0].id == "s299" and infos[-1].id == "s000"
    assert {info.status for info in infos[::2]} == {"crashed"}  # odd: running, nobody holds them
    assert {info.status for info in infos[1::2]} == {"completed"}
    assert elapsed < 1.0, f"list() of 300 sessions took {elapsed:.2f}s of CPU"


def test_status_comes_from_the_trace_when_meta_is_stale_or_missing(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    state = State()
    state.append("session_start", session_id="stale", model="m", profile="p")
    state.append("run_start", run=1, prompt="hello")
    state.append("run_end", status="cancelled", usage={}, text="")
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(state.to_jsonl())
    # The process died between the trace write and the meta update.
    _write_session(
        root, "stale", trace, {"created_at": "2026-01-01T00:00:00+00:00", "status": "running"}
    )
    assert SessionStore(root).info("stale").status == "cancelled"

    missing = root / "nometa"
    missing.mkdir()
    state.records[0]["session_id"] = "nometa"
    (missing / "trace.jsonl").write_bytes(state.to_jsonl())
    info = SessionStore(root).info("nometa")
    assert (info.status, info.first_prompt, info.model) == ("cancelled", "hello", "m")
    assert {i.id for i in SessionStore(root).list()} == {"stale", "nometa"}
    (root / "not-a-session").mkdir()
    (root / "bad..name").mkdir()
    assert len(SessionStore(root).list()) == 2


def test_a_session_without_a_saved_config_needs_an_agent(tmp_path: Path) -> None:
    session = SessionStore(tmp_path).create_session(Agent(AgentConfig(working_dir=str(tmp_path))))
    session_id = session.state.session_id
    asyncio.run(session.close())
    (tmp_path / session_id / "config.yaml").unlink()
    with pytest.raises(SessionError, match=r"pass an agent: store.resume\(session_id, agent\)"):
        SessionStore(tmp_path).resume(session_id)
    resumed = SessionStore(tmp_path).resume(
        session_id, Agent(AgentConfig(working_dir=str(tmp_path)))
    )
    assert isinstance(resumed, Session)
    asyncio.run(resumed.close())


def test_a_config_that_cannot_be_saved_does_not_stop_the_session(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def unsaveable(self: AgentConfig) -> dict[str, Any]:
        raise ConfigError("this DaytonaBackend's image copies local files")

    agent = Agent(AgentConfig(working_dir=str(tmp_path)))
    monkeypatch.setattr(AgentConfig, "to_dict", unsaveable)
    session = SessionStore(tmp_path).create_session(agent)
    asyncio.run(session.close())
    assert not (tmp_path / session.state.session_id / "config.yaml").exists()
    assert "its config is not saved (this DaytonaBackend's image" in caplog.text
    with pytest.raises(SessionError, match="pass an agent"):
        SessionStore(tmp_path).resume(session.state.session_id)


def test_a_session_dropped_without_close_is_released_when_collected(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    session = store.create_session(Agent(AgentConfig(working_dir=str(tmp_path))))
    session_id = session.state.session_id
    assert is_locked(tmp_path / session_id)
    del session
    gc.collect()
    assert not is_locked(tmp_path / session_id)
