"""RedisSessionStore: sessions kept in the fleet's Redis, with the directory store's interface.

A session lives in ``{p}session:{id}:trace`` (every trace record, as fleet jobs write them) and a
small summary hash ``{p}session:{id}`` indexed by ``{p}sessions``. So a session created here can
be continued by a fleet job (``Dispatcher.submit(..., session_id=...)``) and a job's session can
be resumed here, in any process. Writes are synchronous (one pipelined round trip per record):
fine for one process's sessions; workers use the batched job bus instead.

Unlike the directory store there is no lock between processes, except that a session a running
fleet job owns cannot be resumed.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import redis

from dispatch.errors import FleetUnavailable
from dispatch.fleet.redis_bus import decode_entry
from dispatch.fleet.redis_clients import sync_client
from dispatch.keys import Keys
from dispatch.settings import FleetSettings
from dispatch.spec import find_secrets, portable_config
from rho_agent.agent import Agent
from rho_agent.config import AgentConfig
from rho_agent.errors import SessionError, SessionLocked, SessionNotFound
from rho_agent.ids import new_session_id, validate_session_id
from rho_agent.session import Session
from rho_agent.state import State, status_after
from rho_agent.store.directory import SessionInfo
from rho_agent.trace import Record


class RedisSessionStore:
    """Create, resume and list sessions stored in Redis (``url``, else the fleet settings')."""

    def __init__(self, url: str | None = None, *, settings: FleetSettings | None = None) -> None:
        settings = settings or FleetSettings.from_env(broker_url=url)
        target = url or settings.bus_url
        if not target:
            raise SessionError(
                "RedisSessionStore needs a Redis URL: pass one or set RHO_AGENT_BROKER_URL"
            )
        self.keys: Keys = settings.keys
        self._retention = settings.retention_s
        self._r: Any = sync_client(
            target, master_name=settings.sentinel_master, decode_responses=True
        )

    def create_session(self, agent: Agent, *, session_id: str | None = None) -> Session:
        """A new Session whose every trace record goes to Redis as it happens."""
        chosen = validate_session_id(session_id) if session_id else new_session_id()
        config = portable_config(agent.config)
        found = find_secrets(config)
        if found:
            raise SessionError(
                f"the agent config holds what looks like a secret at {', '.join(found)}; keep "
                "API keys in the environment"
            )
        now = datetime.now(UTC)
        # The id is claimed atomically (HSETNX): two processes creating it at once get one each.
        taken = self._r.exists(self.keys.trace(chosen)) or not self._r.hsetnx(
            self.keys.session(chosen), "created_at", now.isoformat()
        )
        if taken:
            raise SessionError(f"session {chosen} already exists; resume it instead")
        pipe = self._r.pipeline(transaction=False)
        pipe.hset(
            self.keys.session(chosen),
            mapping={
                "model": agent.config.model,
                "profile": agent.profile.name,
                "status": "idle",
                "config": json.dumps(config),
            },
        )
        pipe.zadd(self.keys.sessions(), {chosen: now.timestamp()})
        pipe.zremrangebyscore(self.keys.sessions(), "-inf", now.timestamp() - self._retention)
        pipe.expire(self.keys.sessions(), self._retention)
        pipe.expire(self.keys.session(chosen), self._retention)
        pipe.execute()
        return Session(agent, session_id=chosen, sinks=[self._sink(chosen)])

    def resume(self, session_id: str, agent: Agent | None = None) -> Session:
        """The stored session, ready to ``run`` (or ``resume_run`` if its run never ended)."""
        state = self.load_state(session_id)
        owner = self._r.get(self.keys.session_owner(session_id))
        if owner and self._r.hget(self.keys.job(owner), "status") in ("queued", "running"):
            raise SessionLocked(
                f"session {session_id} is being run by fleet job {owner}; wait for its result"
            )
        if agent is None:
            agent = Agent(self.load_config(session_id))
        return Session(agent, state=state, sinks=[self._sink(session_id)])

    def list(self) -> builtins.list[SessionInfo]:
        """Every session in the index, newest first."""
        with _reachable():
            ids: builtins.list[str] = self._r.zrevrange(self.keys.sessions(), 0, -1)
            pipe = self._r.pipeline(transaction=False)
            for session_id in ids:
                pipe.hgetall(self.keys.session(session_id))
            rows: builtins.list[dict[str, str]] = pipe.execute()
        return [_info(sid, row) for sid, row in zip(ids, rows, strict=True) if row]

    def get_latest_id(self) -> str | None:
        latest: builtins.list[str] = self._r.zrevrange(self.keys.sessions(), 0, 0)
        return latest[0] if latest else None

    def info(self, session_id: str) -> SessionInfo:
        with _reachable():
            row = self._r.hgetall(self.keys.session(validate_session_id(session_id)))
        if not row:
            raise SessionNotFound(f"no session {session_id} in Redis (or it expired)")
        return _info(session_id, row)

    def load_state(self, session_id: str) -> State:
        """The session's State from its trace (read-only)."""
        key = self.keys.trace(validate_session_id(session_id))
        with _reachable():
            entries = self._r.xrange(key)
        if not entries:
            raise SessionNotFound(f"no session {session_id} in Redis (or it expired)")
        items = [item for _, fields in entries for item in decode_entry(fields["d"])]
        return State.from_records([item["record"] for item in items])

    def load_config(self, session_id: str) -> AgentConfig:
        raw = self._r.hget(self.keys.session(validate_session_id(session_id)), "config")
        if not raw:
            raise SessionNotFound(f"session {session_id} has no saved config; pass an agent")
        config = AgentConfig.from_dict(json.loads(raw), source=f"session {session_id}")
        config.prompt_is_text = True  # stored as text: never a file on this machine
        return config

    def close(self) -> None:
        self._r.close()

    def _sink(self, session_id: str) -> RedisTraceSink:
        return RedisTraceSink(self._r, self.keys, session_id, self._retention)


class RedisTraceSink:
    """Appends each record to the session's trace stream and keeps its summary current."""

    def __init__(self, client: Any, keys: Keys, session_id: str, retention_s: int) -> None:
        self._r = client
        self._trace = keys.trace(session_id)
        self._meta = keys.session(session_id)
        self._retention = retention_s

    def write(self, record: Record) -> None:
        entry = json.dumps({"job_id": "", "record": record}, ensure_ascii=False)
        pipe = self._r.pipeline(transaction=False)
        pipe.xadd(self._trace, {"d": entry})
        pipe.expire(self._trace, self._retention)
        status = status_after(record)
        if status is not None:
            pipe.hset(self._meta, "status", status)
            prompt = record.get("prompt")
            if isinstance(prompt, str):
                pipe.hsetnx(self._meta, "first_prompt", prompt[:200])
            pipe.expire(self._meta, self._retention)
        pipe.execute()

    def close(self) -> None:
        return None


@contextmanager
def _reachable() -> Iterator[None]:
    """Redis unreachable (refused, timed out, gone mid-read): ``FleetUnavailable``, one line."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise FleetUnavailable(
            f"cannot read the fleet's sessions: Redis is unreachable ({exc}); check --broker or "
            "RHO_AGENT_BROKER_URL and that Redis is running"
        ) from None


def _info(session_id: str, row: dict[str, str]) -> SessionInfo:
    return SessionInfo(
        id=session_id,
        status=row.get("status", "idle"),
        created_at=datetime.fromisoformat(row.get("created_at") or "1970-01-01T00:00:00+00:00"),
        model=row.get("model", ""),
        profile=row.get("profile", ""),
        first_prompt=row.get("first_prompt", ""),
    )
