"""LauncherPool: a process's confined launchers, one per (policy, working directory).

Why shared between the sessions of a process rather than one per session: a fan-out of
thousands of one-bash-call jobs would otherwise start a Python launcher per job (as slow as a
launcher per call, 0.25x the unconfined job rate in a measured fan-out), and a worker holding
500 jobs in flight would hold 500 launchers (about 5 MB each). Sharing adds no reach: every
command runs in a Landlock layer of its own (its own scratch directory, plus the working
directory under ``developer``; scoped signals), so a command of one session can neither write
into another's scratch directory nor signal, trace or read the environment of another
session's processes or of the launcher. A launcher is never shared between different policies
or working directories.

A launcher lives while a backend uses it: each ``LocalBackend`` joins a (policy, working
directory) at its first confined command and leaves when it closes; the last to leave stops the
launcher. The kernel stops it too when the worker dies (see ``session_launcher``). A child
forked from this process (without exec) starts with an empty pool and lets go of the parent's
control sockets, so that the parent's launchers still die with the parent.
"""

from __future__ import annotations

import os
import threading
from typing import ClassVar

from rho_agent.sandbox.environment import tool_environment
from rho_agent.sandbox.policy import SandboxPolicy
from rho_agent.sandbox.session_launcher import SessionLauncher

Key = tuple[SandboxPolicy, str]


class LauncherPool:
    """The launchers of one process (see the module docstring); ``shared()`` is the default."""

    _shared: ClassVar[LauncherPool | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._launchers: dict[Key, SessionLauncher] = {}
        self._users: dict[Key, int] = {}

    @classmethod
    def shared(cls) -> LauncherPool:
        """This process's pool, made at first use (and emptied in a forked child)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
                os.register_at_fork(after_in_child=cls._shared.forget)
            return cls._shared

    def join(self, policy: SandboxPolicy, working_dir: str) -> None:
        """Count one more backend using the launcher for ``(policy, working_dir)``."""
        with self._lock:
            key = (policy, working_dir)
            self._users[key] = self._users.get(key, 0) + 1

    def current(self, policy: SandboxPolicy, working_dir: str) -> SessionLauncher | None:
        """The running launcher for ``(policy, working_dir)``, or None (then call ``start``)."""
        launcher = self._launchers.get((policy, working_dir))
        return launcher if launcher is not None and launcher.alive else None

    def start(self, policy: SandboxPolicy, working_dir: str) -> SessionLauncher:
        """The running launcher for ``(policy, working_dir)``, started now if there is none or
        it died (blocking: call it from a thread)."""
        with self._lock:
            key = (policy, working_dir)
            launcher = self._launchers.get(key)
            if launcher is None or not launcher.alive:
                if launcher is not None:
                    launcher.close()
                launcher = SessionLauncher(policy, working_dir, tool_environment(os.environ))
                self._launchers[key] = launcher
            return launcher

    def leave(self, policy: SandboxPolicy, working_dir: str) -> None:
        """One backend fewer; the last one out stops the launcher (blocking, briefly)."""
        key = (policy, working_dir)
        with self._lock:
            users = self._users.get(key, 0) - 1
            if users > 0:
                self._users[key] = users
                return
            self._users.pop(key, None)
            launcher = self._launchers.pop(key, None)
        if launcher is not None:
            launcher.close()

    def forget(self) -> None:
        """In a forked child: drop the parent's launchers without stopping them."""
        self._lock = threading.Lock()
        for launcher in self._launchers.values():
            launcher.abandon()
        self._launchers.clear()
        self._users.clear()
