"""SessionLock: one process at a time may write a stored session.

An exclusive ``fcntl.flock`` on ``<session dir>/lock``. The kernel drops the lock when its holder
dies, so a lock nobody holds while the trace says "running" means the process crashed. Locks belong
to an open file, not to a process: a second ``open`` in the same process conflicts like another
process would, which is why ``holders`` hands a lock over within the process instead of acquiring
it twice. POSIX only; on network file systems ``flock`` may not be enforced.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from rho_agent.errors import SessionLocked
from rho_agent.trace import now_iso

LOCK_FILE_NAME = "lock"
ACQUIRE_RETRY_SECONDS = 0.2
"""How long ``acquire`` retries: a ``is_locked`` probe from ``SessionStore.list`` holds the lock for
microseconds, and must not make a resume fail."""


class SessionLock:
    """An exclusive lock on one session directory, held until ``release``."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, session_dir: Path, session_id: str) -> SessionLock:
        """Lock ``session_dir`` or raise ``SessionLocked`` naming the holder."""
        path = session_dir / LOCK_FILE_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + ACQUIRE_RETRY_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise SessionLocked(
                        f"session {session_id} is open in another process ({holder}); wait for "
                        "it to finish, or close that Session first"
                    ) from None
                time.sleep(0.01)
        _write_holder(fd)
        return cls(fd, path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock (safe to call twice). The holder note stays; only the flock counts."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __del__(self) -> None:
        # A Session dropped without close() must not keep its session locked for the process's
        # lifetime: closing the descriptor releases the flock.
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def is_locked(session_dir: Path) -> bool:
    """True if some open Session (in any process, this one included) holds the session's lock."""
    try:
        fd = os.open(session_dir / LOCK_FILE_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a shared lock we may have taken
    return False


def _write_holder(fd: int) -> None:
    note = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(note).encode(), 0)


def _read_holder(fd: int) -> str:
    try:
        note = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {note['pid']} on {note['host']} since {note['since']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "holder unknown"
