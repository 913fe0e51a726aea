"""The Sessions of this process that hold a stored session's lock, found by session directory.

A ``flock`` belongs to an open file, not to a process: a second ``SessionStore`` on the same
directory (a notebook re-running a cell) would otherwise find this process's own idle Session in
the way, as if another process held it. The registry is process-wide because the lock is: whichever
store opened the session, an idle holder in this process hands its lock over, a holder in the
middle of a run refuses, and only another process's lock is waited on and reported.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

from rho_agent.errors import SessionLocked
from rho_agent.store.layout import StoreSink
from rho_agent.store.lock import SessionLock

_guard = threading.Lock()
_holders: weakref.WeakValueDictionary[str, StoreSink] = weakref.WeakValueDictionary()


def take_lock(session_dir: Path, session_id: str) -> SessionLock:
    """The session's lock: handed over by this process's idle holder, or newly acquired.

    Raises ``SessionLocked`` if this process's holder is in the middle of a run, or if another
    process holds the lock.
    """
    with _guard:
        holder = _holders.get(_key(session_dir))
        if holder is None or not holder.holds_lock:
            return SessionLock.acquire(session_dir, session_id)
        if holder.run_in_progress:
            raise SessionLocked(
                f"session {session_id} has a run in progress in this process; await it, "
                "or close that Session (await session.close()) before resuming the session again"
            )
        return holder.hand_over()


def register(session_dir: Path, sink: StoreSink) -> None:
    """Record ``sink`` as the holder of the session's lock (forgotten when it is collected)."""
    with _guard:
        _holders[_key(session_dir)] = sink


def _key(session_dir: Path) -> str:
    # The same session reached through two spellings of the store path is one lock.
    return str(session_dir.resolve())
