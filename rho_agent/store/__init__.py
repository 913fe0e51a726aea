"""Where sessions live: the directory store, its on-disk layout and lock, and session export.

- ``directory``: ``SessionStore`` and ``SessionInfo`` (create, resume, list sessions on disk);
- ``layout``: one session's directory (trace, config, metadata);
- ``lock``: the lock that keeps one running ``Session`` per session;
- ``export``: a session's trace as one JSON document.
"""

from __future__ import annotations

from rho_agent.store.directory import SessionInfo, SessionStore
from rho_agent.store.export import export_session

__all__ = ["SessionInfo", "SessionStore", "export_session"]
