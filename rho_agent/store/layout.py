"""The files of one stored session and the trace sink that keeps them current.

``<store>/<id>/`` holds ``trace.jsonl`` (the source of truth, append-only), ``config.yaml`` (the
AgentConfig the session was created with, secrets removed), ``meta.json`` (a small summary so
``SessionStore.list`` never reads whole traces) and ``lock`` (see ``_lock.py``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rho_agent.config import AgentConfig
from rho_agent.errors import ConfigError, SessionError
from rho_agent.state import status_after
from rho_agent.store.lock import SessionLock
from rho_agent.trace import JsonlTraceSink, Record

logger = logging.getLogger("rho_agent.store.directory")

TRACE_FILE = "trace.jsonl"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
META_VERSION = 1
TAIL_BYTES = 64 * 1024

_SECRET_KEY = re.compile(
    r"api[_-]?key|secret|passw(or)?d|credential|authorization|private[_-]?key|access[_-]?key"
    r"|(^|[_-])token$",
    re.IGNORECASE,
)


class SessionMeta(BaseModel):
    """``meta.json``: what ``SessionStore.list`` shows, kept current by ``StoreSink``."""

    model_config = ConfigDict(extra="ignore")

    v: int = META_VERSION
    id: str
    created_at: datetime
    model: str
    profile: str
    first_prompt: str = ""
    status: str = "idle"
    config_dir: str | None = None
    """Where a config loaded from a file lived, so relative prompt templates still resolve."""


def read_meta(session_dir: Path) -> SessionMeta | None:
    """The session's meta, or None if it is missing or unreadable (the trace is then used)."""
    try:
        return SessionMeta.model_validate_json((session_dir / META_FILE).read_bytes())
    except (OSError, ValidationError):
        return None


def write_meta(session_dir: Path, meta: SessionMeta) -> None:
    """Replace ``meta.json`` atomically, so a reader never sees half of it."""
    temporary = session_dir / f".{META_FILE}.{os.getpid()}.tmp"
    temporary.write_text(meta.model_dump_json(), encoding="utf-8")
    os.replace(temporary, session_dir / META_FILE)


def write_config(session_dir: Path, config: AgentConfig) -> None:
    """Save the config without secrets. One that cannot be data (a Daytona image built from local
    files) is not saved: the session still runs, and resuming it then needs an agent."""
    try:
        data = without_secrets(config.to_dict())
    except ConfigError as exc:
        logger.warning("session %s: its config is not saved (%s)", session_dir.name, exc)
        return
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    (session_dir / CONFIG_FILE).write_text(text, encoding="utf-8")


def read_config(session_dir: Path, config_dir: str | None) -> AgentConfig:
    path = session_dir / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SessionError(
            f"session {session_dir.name} has no saved config ({path}); "
            "pass an agent: store.resume(session_id, agent)"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = (
            exc.strerror
            if isinstance(exc, OSError)
            else "not UTF-8 text"
            if isinstance(exc, UnicodeDecodeError)
            else "not valid YAML"
        )
        raise SessionError(
            f"session {session_dir.name}'s saved config {path} cannot be read ({reason}); "
            "pass an agent: store.resume(session_id, agent)"
        ) from None
    config = AgentConfig.from_dict(data or {}, source=str(path))
    config.config_dir = config_dir
    return config


def without_secrets(value: Any) -> Any:
    """A copy of config data without secret-looking keys or passwords inside URLs."""
    if isinstance(value, dict):
        return {
            key: without_secrets(item)
            for key, item in value.items()
            if not (isinstance(key, str) and _SECRET_KEY.search(key))
        }
    if isinstance(value, list):
        return [without_secrets(item) for item in value]
    if isinstance(value, str) and "://" in value and "@" in value:
        return _url_without_credentials(value)
    return value


def _url_without_credentials(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return url
    if host is None or "@" not in parts.netloc:
        return url
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit(parts._replace(netloc=netloc))


def repair_torn_tail(trace_path: Path) -> None:
    """Cut a torn last line (a crash mid-write) before appending, so it never ends up mid-file."""
    with open(trace_path, "r+b") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return
        start = max(size - TAIL_BYTES, 0)
        while True:
            file.seek(start)
            newline = file.read(size - start).rfind(b"\n")
            if newline >= 0 or start == 0:
                file.truncate(start + newline + 1 if newline >= 0 else 0)
                return
            start = max(start - TAIL_BYTES, 0)


def tail_status(trace_path: Path) -> str | None:
    """The status the last status-changing record near the end of the trace gives, if any."""
    try:
        with open(trace_path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(size - TAIL_BYTES, 0))
            lines = file.read().split(b"\n")
    except FileNotFoundError:
        return None
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first line of the window is probably cut
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        status = status_after(record) if isinstance(record, dict) else None
        if status is not None:
            return status
    return None


class StoreSink:
    """The store's trace sink: appends to ``trace.jsonl``, keeps ``meta.json`` current, and holds
    the session lock until ``close`` (which ``Session.close`` calls)."""

    def __init__(self, session_dir: Path, meta: SessionMeta, lock: SessionLock) -> None:
        self.session_dir = session_dir
        self.meta = meta
        self._lock = lock
        self._trace = JsonlTraceSink(session_dir / TRACE_FILE)
        self.run_in_progress = False
        """A run started through this sink has not ended (used to refuse a same-process resume)."""
        self._handed_over = False
        self._closed = False

    @property
    def holds_lock(self) -> bool:
        return not (self._closed or self._handed_over)

    def write(self, record: Record) -> None:
        if not self.holds_lock:
            raise SessionError(
                f"session {self.meta.id} was resumed by a newer Session object; use that one "
                "(this one can no longer write to the store)"
                if self._handed_over
                else f"the store's trace of session {self.meta.id} is closed"
            )
        self._trace.write(record)
        self._track(record)

    def _track(self, record: Record) -> None:
        status = status_after(record)
        if status is None:
            return
        self.run_in_progress = status == "running"
        prompt = record.get("prompt")
        if not self.meta.first_prompt and isinstance(prompt, str):
            self.meta.first_prompt = prompt
        self.meta.status = status
        write_meta(self.session_dir, self.meta)

    def hand_over(self) -> SessionLock:
        """Give the lock to a newer Session of the same store; this sink stops writing."""
        self._handed_over = True
        self._trace.close()
        return self._lock

    def close(self) -> None:
        if self.holds_lock:
            self._trace.close()
            self._lock.release()
        self._closed = True
