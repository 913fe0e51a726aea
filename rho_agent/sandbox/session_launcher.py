"""SessionLauncher: a confined launcher process for one policy and working directory.

Why: starting ``python`` to confine every bash call cost 20-30 ms per call on a loaded machine.
A launcher (``_launcher_server.py``) started once, by exec and so single-threaded, confines
itself at the session's broad level and then forks one child per command, which narrows its
writes to its own scratch directory (plus the working directory under ``developer``) with a
further Landlock layer before it execs bash. Measured in docs/security.md.

The sessions of a process with the same policy and working directory share one launcher
(``launcher_pool`` says why that is safe). It dies when the last of them closes: ``close()``
closes the control socket, and so does the kernel if the worker dies, and the launcher then
kills the commands still running and exits. (``PR_SET_PDEATHSIG`` would not do: it fires when
the *thread* that started the launcher exits, and a worker's threads come and go.)
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from rho_agent.errors import BackendError, ConfinementUnavailable
from rho_agent.sandbox import _launcher_server
from rho_agent.sandbox.policy import SandboxPolicy

_SERVER = str(Path(_launcher_server.__file__).resolve())
_START_TIMEOUT = 30.0
"""Seconds a launcher may take to start and confine itself (a loaded machine is slow)."""


class ConfinedProcess:
    """A command the launcher started: the ``pid``/``wait()``/``returncode`` a backend needs.

    ``pid`` leads the command's own session and process group, so the worker kills the whole
    group with ``os.killpg(pid, SIGKILL)`` (it is outside the command's Landlock domain).
    """

    def __init__(self, reply: socket.socket, pid: int, scratch: str) -> None:
        self._reply = reply
        self.pid = pid
        self.scratch = scratch
        self.returncode: int | None = None

    async def wait(self) -> int:
        """Wait for the command's shell to exit; its code, negative when killed by a signal."""
        if self.returncode is None:
            message = await asyncio.get_running_loop().sock_recv(self._reply, 256)
            if not message.startswith(b"exit "):
                raise BackendError(
                    "the confined launcher stopped while the command ran; run it again"
                )
            self.returncode = int(message[5:])
        return self.returncode

    def close(self) -> bool:
        """Let go of the command (the launcher kills it if it still runs); remove its scratch
        directory when empty, and say whether it is gone (else call ``remove_scratch``)."""
        self._reply.close()
        try:
            os.rmdir(self.scratch)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def remove_scratch(self) -> None:
        """Remove the scratch directory and what the command (or its background) left there."""
        shutil.rmtree(self.scratch, ignore_errors=True)


class SessionLauncher:
    """A confined launcher for one policy and working directory (see the module docstring)."""

    def __init__(self, policy: SandboxPolicy, working_dir: str, env: dict[str, str]) -> None:
        self.policy = policy
        self.working_dir = working_dir
        self._root = tempfile.mkdtemp(prefix="rho-scratch-")
        control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        flags = ["--network", policy.network]
        flags += [flag for path in self._writable(self._root) for flag in ("--write", path)]
        flags += [] if policy.metadata else ["--no-metadata"]
        try:
            with theirs:
                self._process = subprocess.Popen(
                    [
                        sys.executable,
                        "-I",
                        "-S",
                        _SERVER,
                        *flags,
                        "--control",
                        str(theirs.fileno()),
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    pass_fds=[theirs.fileno()],
                    cwd="/",
                    start_new_session=True,
                )
        except OSError as exc:
            control.close()
            shutil.rmtree(self._root, ignore_errors=True)
            raise BackendError(
                f"cannot start the confined launcher ({sys.executable}): {exc}"
            ) from exc
        self._control = control
        self._await_ready()

    def _writable(self, scratch: str) -> list[str]:
        """Where the policy lets a command write, given its scratch directory (or the root of
        them all, for the launcher's own layer)."""
        if self.policy.writes == "anywhere":
            return ["/"]
        if self.policy.writes == "working_dir":
            return [scratch, self.working_dir]
        return [scratch]

    def _await_ready(self) -> None:
        self._control.settimeout(_START_TIMEOUT)
        try:
            message = self._control.recv(4096)
        except OSError as exc:
            message = f"no answer ({exc})".encode()
        self._control.settimeout(None)
        if not message.startswith(b"ready"):
            self.close()
            reason = message.removeprefix(b"fail ").decode(errors="replace") or "it exited"
            raise ConfinementUnavailable(
                f"the confined launcher could not confine itself: {reason}; the command was not run"
            )

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    async def spawn(
        self, argv: list[str], env: dict[str, str], cwd: str, output: int
    ) -> ConfinedProcess:
        """Start ``argv`` confined, stdout and stderr on ``output``; return once it has exec'd.

        The command gets a fresh scratch directory (its ``TMPDIR``), the only place it may write
        besides the working directory when the policy allows that.
        """
        scratch = tempfile.mkdtemp(dir=self._root)
        write = self._writable(scratch)
        request = {"argv": argv, "env": {**env, "TMPDIR": scratch}, "cwd": cwd, "write": write}
        reply, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with theirs:
                await self._send(json.dumps(request).encode(), [output, theirs.fileno()])
            reply.setblocking(False)
            message = await asyncio.get_running_loop().sock_recv(reply, 65536)
        except BaseException as exc:
            reply.close()
            shutil.rmtree(scratch, ignore_errors=True)
            if isinstance(exc, OSError):
                raise BackendError(f"cannot hand the command to the launcher: {exc}") from exc
            raise
        if not message.startswith(b"pid "):
            reply.close()
            shutil.rmtree(scratch, ignore_errors=True)
            reason = message.removeprefix(b"fail ").decode(errors="replace") or "it stopped"
            raise BackendError(f"cannot start {argv[0]}: {reason}")
        return ConfinedProcess(reply, int(message[4:]), scratch)

    async def _send(self, data: bytes, fds: list[int]) -> None:
        """Send a request without blocking the loop: in a thread when the launcher's buffer is
        full (a launcher that is slow, or many large requests at once). Each send is one whole
        message, so concurrent senders need no lock. (``socket.send_fds`` before Python 3.12
        drops its ``flags``, hence ``sendmsg``.)"""
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        try:
            self._control.sendmsg([data], rights, socket.MSG_DONTWAIT)
        except BlockingIOError:
            await asyncio.to_thread(self._control.sendmsg, [data], rights)

    def abandon(self) -> None:
        """In a forked child of the worker: let go of the launcher, which is the parent's."""
        self._control.close()

    def close(self) -> None:
        """Stop the launcher (it kills the commands still running) and remove the scratch root."""
        self._control.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        shutil.rmtree(self._root, ignore_errors=True)
