"""The fake Daytona's world: sandboxes (one temp directory each), their processes and failures.

Everything here is touched only from the server's event loop, except the read-only snapshots
(``SandboxRecord``) handed to tests under ``World.lock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

OPERATIONS = frozenset(
    {
        # the Daytona API
        "create",
        "get",
        "delete",
        "last_activity",
        "toolbox_proxy_url",
        # the sandbox daemon (toolbox)
        "session_create",
        "session_exec",
        "session_get",
        "session_logs",
        "session_delete",
        "execute",
        "upload",
        "download",
        "list",
        "info",
        "search",
        "find",
        "folder",
        "delete_file",
        "work_dir",
        "home_dir",
    }
)


@dataclass(frozen=True)
class Failure:
    """One scripted HTTP error for the next call of an operation."""

    status: int
    message: str
    code: str | None = None


@dataclass(frozen=True)
class SandboxRecord:
    """What a test can check about a sandbox the fake created (a snapshot, never live)."""

    id: str
    name: str
    state: str
    root: Path
    """The temporary directory that is the sandbox's home and working directory."""
    env: dict[str, str]
    labels: dict[str, str]
    request: dict[str, Any]
    """The create request exactly as the SDK sent it (camelCase JSON)."""
    activity_refreshes: int
    deleted: bool


@dataclass
class FakeCommand:
    """One command started in a process session; its output accumulates as it runs."""

    id: str
    command: str
    process: asyncio.subprocess.Process | None = None
    output: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class FakeSandbox:
    """A live sandbox: a temp directory plus the state machine the SDK polls."""

    id: str
    name: str
    root: Path
    env: dict[str, str]
    labels: dict[str, str]
    request: dict[str, Any]
    ready_at: float
    created_at: str
    error_reason: str | None = None
    deleted: bool = False
    activity_refreshes: int = 0
    sessions: dict[str, dict[str, FakeCommand]] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if self.deleted:
            return "destroyed"
        if self.error_reason is not None:
            return "error"
        return "started" if time.monotonic() >= self.ready_at else "starting"

    def record(self) -> SandboxRecord:
        return SandboxRecord(
            id=self.id,
            name=self.name,
            state=self.state,
            root=self.root,
            env=dict(self.env),
            labels=dict(self.labels),
            request=dict(self.request),
            activity_refreshes=self.activity_refreshes,
            deleted=self.deleted,
        )


class World:
    """All sandboxes, scripted failures and knobs of one FakeDaytonaServer."""

    def __init__(self, api_key: str, root: Path | None) -> None:
        self.api_key = api_key
        self.lock = threading.Lock()
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.failures: dict[str, deque[Failure]] = {}
        self.start_delay = 0.0
        self.start_error: str | None = None
        self.requests: list[tuple[str, str]] = []
        self.toolbox_url = ""
        self._root = root
        self._own_root: Path | None = None

    def check_auth(self, request: web.Request) -> None:
        """Reject a request without the expected bearer key the way the Daytona API does."""
        with self.lock:
            self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise api_error(401, "Invalid credentials")

    def take_failure(self, operation: str) -> Failure | None:
        with self.lock:
            queue = self.failures.get(operation)
            return queue.popleft() if queue else None

    def create(self, body: dict[str, Any]) -> FakeSandbox:
        sandbox_id = str(uuid.uuid4())
        name = body.get("name") or sandbox_id
        if any(s.name == name and not s.deleted for s in self.sandboxes.values()):
            raise api_error(409, f"Sandbox with name {name} already exists")
        root = Path(tempfile.mkdtemp(prefix=f"{sandbox_id[:8]}-", dir=self._sandboxes_root()))
        sandbox = FakeSandbox(
            id=sandbox_id,
            name=name,
            root=root,
            env=dict(body.get("env") or {}),
            labels=dict(body.get("labels") or {}),
            request=body,
            ready_at=time.monotonic() + self.start_delay,
            created_at=datetime.now(UTC).isoformat(),
            error_reason=self.start_error,
        )
        with self.lock:
            self.sandboxes[sandbox_id] = sandbox
        return sandbox

    def _sandboxes_root(self) -> Path:
        """The given root, or a temporary directory made on the first create."""
        if self._root is not None:
            return self._root
        if self._own_root is None:
            self._own_root = Path(tempfile.mkdtemp(prefix="fake-daytona-"))
        return self._own_root

    def find(self, id_or_name: str) -> FakeSandbox:
        for sandbox in self.sandboxes.values():
            if not sandbox.deleted and id_or_name in (sandbox.id, sandbox.name):
                return sandbox
        raise api_error(404, f"Sandbox with ID or name {id_or_name} not found")

    async def destroy(self, sandbox: FakeSandbox) -> None:
        """Kill every process of the sandbox and remove its directory."""
        for commands in sandbox.sessions.values():
            await kill_commands(commands.values())
        sandbox.sessions.clear()
        with self.lock:
            sandbox.deleted = True
        await asyncio.to_thread(shutil.rmtree, sandbox.root, True)

    async def shutdown(self) -> None:
        """Kill every process and remove every directory, keeping the records as they are."""
        for sandbox in self.sandboxes.values():
            for commands in sandbox.sessions.values():
                await kill_commands(commands.values())
            sandbox.sessions.clear()
        if self._own_root is not None:
            await asyncio.to_thread(shutil.rmtree, self._own_root, True)
            self._own_root = None
        else:
            for sandbox in self.sandboxes.values():
                await asyncio.to_thread(shutil.rmtree, sandbox.root, True)

    def dto(self, sandbox: FakeSandbox) -> dict[str, Any]:
        """The ``Sandbox`` JSON object of the Daytona API."""
        body = sandbox.request
        return {
            "id": sandbox.id,
            "organizationId": "fake-organization",
            "name": sandbox.name,
            "snapshot": body.get("snapshot"),
            "user": body.get("user") or "daytona",
            "env": sandbox.env,
            "labels": sandbox.labels,
            "public": bool(body.get("public")),
            "networkBlockAll": bool(body.get("networkBlockAll")),
            "kvm": False,
            "target": body.get("target") or "fake",
            "cpu": body.get("cpu") or 1,
            "gpu": body.get("gpu") or 0,
            "memory": body.get("memory") or 1,
            "disk": body.get("disk") or 3,
            "state": sandbox.state,
            "errorReason": sandbox.error_reason,
            "autoStopInterval": body.get("autoStopInterval", 15),
            "autoArchiveInterval": body.get("autoArchiveInterval", 10080),
            "autoDeleteInterval": body.get("autoDeleteInterval", -1),
            "createdAt": sandbox.created_at,
            "updatedAt": sandbox.created_at,
            "toolboxProxyUrl": self.toolbox_url,
        }


async def kill_commands(commands: Iterable[FakeCommand]) -> None:
    """SIGKILL each command's process group (the daemon kills session trees the same way)."""
    for command in commands:
        process = command.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                await asyncio.wait_for(process.wait(), 5.0)


class FakeHttpError(Exception):
    """Raised by a handler; the server's middleware answers it as a JSON error."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body


def api_error(status: int, message: str) -> FakeHttpError:
    """An error shaped like the Daytona API's (``message`` is what the SDK shows)."""
    return FakeHttpError(status, {"statusCode": status, "message": message})


def daemon_error(status: int, message: str, code: str | None = None) -> FakeHttpError:
    """An error shaped like the sandbox daemon's ``ErrorResponse``."""
    body = {
        "statusCode": status,
        "message": message,
        "code": code,
        "source": "DAYTONA_DAEMON",
        "path": "",
        "timestamp": datetime.now(UTC).isoformat(),
    }
    return FakeHttpError(status, body)


def failure_error(failure: Failure, *, daemon: bool) -> FakeHttpError:
    if daemon:
        return daemon_error(failure.status, failure.message, failure.code)
    return api_error(failure.status, failure.message)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer a ``FakeHttpError`` as JSON with its status."""
    try:
        return await handler(request)
    except FakeHttpError as error:
        return web.json_response(error.body, status=error.status)
