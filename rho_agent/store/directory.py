"""SessionStore: sessions persisted in a directory, so they can be listed, inspected and resumed.

Each session lives in ``<store>/<id>/``: ``trace.jsonl`` (every state change, appended as it
happens), the ``config.yaml`` it was created with (secrets removed) and a small ``meta.json``.
One Session object at a time may write a stored session; the lock dies with its process, so a
session whose process died is listed as ``crashed`` instead of ``running`` forever.
See docs/sessions.md.
"""

from __future__ import annotations

import builtins
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rho_agent.agent import Agent
from rho_agent.config import AgentConfig
from rho_agent.errors import SessionError, SessionNotFound, TraceError
from rho_agent.ids import new_session_id, validate_session_id
from rho_agent.session import Session
from rho_agent.state import State
from rho_agent.store import holders
from rho_agent.store.layout import (
    TRACE_FILE,
    SessionMeta,
    StoreSink,
    read_config,
    read_meta,
    repair_torn_tail,
    tail_status,
    write_config,
    write_meta,
)
from rho_agent.store.lock import SessionLock, is_locked

DEFAULT_SESSIONS_DIR = "~/.config/rho-agent/sessions"
SESSIONS_DIR_ENV = "RHO_AGENT_SESSIONS_DIR"
CRASHED = "crashed"
"""``SessionInfo.status`` of a session whose trace says "running" while no process holds it."""


@dataclass
class SessionInfo:
    """One stored session as ``SessionStore.list`` shows it."""

    id: str
    status: str
    created_at: datetime
    model: str
    profile: str
    first_prompt: str


class SessionStore:
    """Creates, lists and resumes sessions kept under one directory.

    ``SessionStore()`` uses ``$RHO_AGENT_SESSIONS_DIR`` or ``~/.config/rho-agent/sessions/``;
    ``SessionStore(path)`` uses ``path``. Close a Session (``await session.close()``) to let
    another process resume it.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            path = os.environ.get(SESSIONS_DIR_ENV) or DEFAULT_SESSIONS_DIR
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"SessionStore({str(self.path)!r})"

    # -- writing --------------------------------------------------------------------------------

    def create_session(self, agent: Agent, *, session_id: str | None = None) -> Session:
        """A new Session that persists every state change as it runs."""
        session_id, directory = self._new_directory(session_id)
        lock = SessionLock.acquire(directory, session_id)
        try:
            write_config(directory, agent.config)
            meta = SessionMeta(
                id=session_id,
                created_at=datetime.now(UTC),
                model=agent.config.model,
                profile=agent.profile.name,
                config_dir=agent.config.config_dir,
            )
            write_meta(directory, meta)
            sink = StoreSink(directory, meta, lock)
            session = Session(agent, session_id=session_id, sinks=[sink])
        except BaseException:
            lock.release()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        holders.register(directory, sink)
        return session

    def resume(self, session_id: str, agent: Agent | None = None) -> Session:
        """The stored session, ready to ``run`` again (or ``resume_run`` if its run never ended).

        Without ``agent`` the agent is rebuilt from the saved config. An idle Session of this
        process (from any ``SessionStore``) that still holds the session hands it over and can no
        longer write. Raises ``SessionNotFound``, or ``SessionLocked`` if another process has it
        open or a Session of this process is in the middle of a run.
        """
        directory = self._existing_directory(session_id)
        lock = holders.take_lock(directory, session_id)
        try:
            repair_torn_tail(directory / TRACE_FILE)
            state = self._read_state(directory)
            meta = self._meta(directory, state)
            meta.status = state.status
            write_meta(directory, meta)
            if agent is None:
                agent = Agent(read_config(directory, meta.config_dir))
            sink = StoreSink(directory, meta, lock)
            session = Session(agent, state=state, sinks=[sink])
        except BaseException:
            lock.release()
            raise
        holders.register(directory, sink)
        return session

    def _new_directory(self, session_id: str | None) -> tuple[str, Path]:
        self.path.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            chosen = validate_session_id(session_id) if session_id else new_session_id()
            directory = self.path / chosen
            try:
                directory.mkdir()
            except FileExistsError:
                if session_id:
                    raise SessionError(
                        f"session {session_id} already exists in {self.path}; "
                        "resume it with store.resume() or choose another id"
                    ) from None
                continue
            return chosen, directory
        raise SessionError(f"could not make a unique session id in {self.path}")

    # -- reading --------------------------------------------------------------------------------

    def list(self) -> builtins.list[SessionInfo]:
        """Every stored session, newest first. Reads each session's meta, not its whole trace."""
        if not self.path.is_dir():
            return []
        infos = []
        for entry in os.scandir(self.path):
            if not entry.is_dir() or not _is_valid_id(entry.name):
                continue
            info = self._info(Path(entry.path))
            if info is not None:
                infos.append(info)
        infos.sort(key=lambda info: (info.created_at, info.id), reverse=True)
        return infos

    def get_latest_id(self) -> str | None:
        """The id of the most recently created session, or None if the store is empty."""
        infos = self.list()
        return infos[0].id if infos else None

    def info(self, session_id: str) -> SessionInfo:
        """One session's summary, as ``list`` shows it."""
        info = self._info(self._existing_directory(session_id))
        if info is None:
            raise SessionNotFound(f"session {session_id} in {self.path} has no trace")
        return info

    def load_state(self, session_id: str) -> State:
        """The session's State read from its trace (read-only: no lock, no Session)."""
        return self._read_state(self._existing_directory(session_id))

    def load_config(self, session_id: str) -> AgentConfig:
        """The AgentConfig the session was created with (secrets were never saved)."""
        directory = self._existing_directory(session_id)
        return read_config(directory, self._meta(directory).config_dir)

    def session_dir(self, session_id: str) -> Path:
        """Where the session's files live (the id is validated, so it cannot leave the store)."""
        return self.path / validate_session_id(session_id)

    def _existing_directory(self, session_id: str) -> Path:
        directory = self.session_dir(session_id)
        if not (directory / TRACE_FILE).is_file():
            raise SessionNotFound(
                f"no session {session_id} in {self.path}; `rho-agent sessions` lists the ids"
            )
        return directory

    def _info(self, directory: Path) -> SessionInfo | None:
        meta = read_meta(directory)
        if meta is None:
            if not (directory / TRACE_FILE).is_file():
                return None
            meta = self._meta(directory)
        status = meta.status
        if status == "running" and not is_locked(directory):
            found = tail_status(directory / TRACE_FILE)
            status = found if found not in (None, "running") else CRASHED
        return SessionInfo(
            id=meta.id,
            status=status,
            created_at=meta.created_at,
            model=meta.model,
            profile=meta.profile,
            first_prompt=meta.first_prompt,
        )

    def _meta(self, directory: Path, state: State | None = None) -> SessionMeta:
        """The session's meta; rebuilt from its trace when ``meta.json`` is missing or bad."""
        meta = read_meta(directory)
        if meta is not None:
            return meta
        state = state or self._read_state(directory)
        prompts = (r.get("prompt") for r in state.records if r.get("type") == "run_start")
        return SessionMeta(
            id=directory.name,
            created_at=datetime.fromisoformat(state.created_at or "1970-01-01T00:00:00+00:00"),
            model=state.model or "",
            profile=state.profile or "",
            first_prompt=next((p for p in prompts if isinstance(p, str)), ""),
            status=state.status,
        )

    def _read_state(self, directory: Path) -> State:
        trace = directory / TRACE_FILE
        try:
            state = State.from_jsonl(trace.read_bytes())
        except FileNotFoundError:
            raise SessionNotFound(f"no session {directory.name} in {self.path}") from None
        except TraceError as exc:
            raise TraceError(f"{trace}: {exc}") from None
        if state.session_id != directory.name:
            raise TraceError(
                f"{trace} belongs to session {state.session_id or '(none)'!r}, "
                f"not {directory.name!r}; a trace must start with its session_start record"
            )
        return state


def _is_valid_id(name: str) -> bool:
    try:
        validate_session_id(name)
    except SessionError:
        return False
    return True
