"""FakeDaytonaServer: the Daytona API and sandbox daemon on 127.0.0.1, for tests of the real SDK.

Point the real ``daytona`` client at it (``DAYTONA_API_URL=server.api_url``,
``DAYTONA_API_KEY=server.api_key``; ``server.env()`` gives both). It implements the endpoints
the SDK calls to create a sandbox, wait until it has started, run commands (process sessions and
``execute``), upload, download, list, search and find files, and delete the sandbox. Each sandbox
is a temporary directory on this machine; commands run there with ``bash -c``.

Failures are scriptable: a wrong API key gets 401, ``fail(operation, status, message)`` makes the
next call of an operation fail (quota, rate limit, not found...), ``start_delay`` keeps new
sandboxes ``starting`` for a while, ``start_error`` sends them to the ``error`` state, and
``forget(sandbox_id)`` deletes a sandbox behind the client's back (as an auto-delete would).
Every sandbox is recorded (``sandboxes``, ``created``, ``deleted``, ``running``) so a test can
assert that nothing was left running.
"""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path

from aiohttp import web

from rho_agent.testing._daytona_api import ApiRoutes
from rho_agent.testing._daytona_files import FileRoutes
from rho_agent.testing._daytona_process import ProcessRoutes
from rho_agent.testing._daytona_state import (
    OPERATIONS,
    Failure,
    SandboxRecord,
    World,
    json_errors,
)
from rho_agent.testing._threaded import ThreadedAiohttpServer

__all__ = ["OPERATIONS", "FakeDaytonaServer", "SandboxRecord"]


class FakeDaytonaServer(ThreadedAiohttpServer):
    """A fake Daytona API + sandbox daemon on a background thread (see the module docstring).

    Thread-safe: script it and read its records from any thread. ``stop()`` kills every process
    still running in a sandbox and removes the sandbox directories (the records stay).
    """

    _thread_name = "fake-daytona"
    _stop_timeout = 30.0

    def __init__(
        self,
        *,
        api_key: str = "fake-daytona-key",
        host: str = "127.0.0.1",
        port: int = 0,
        root: str | Path | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_key = api_key
        self._world = World(api_key, Path(root) if root is not None else None)
        self._process: ProcessRoutes | None = None

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:PORT/api``: the ``DAYTONA_API_URL`` for the SDK."""
        return f"http://{self._host}:{self.port}/api"

    def env(self) -> dict[str, str]:
        """The environment variables that point the SDK here (for ``monkeypatch.setenv``)."""
        return {"DAYTONA_API_KEY": self.api_key, "DAYTONA_API_URL": self.api_url}

    @property
    def start_delay(self) -> float:
        """Seconds a new sandbox stays ``starting`` before it is ``started``."""
        return self._world.start_delay

    @start_delay.setter
    def start_delay(self, seconds: float) -> None:
        self._world.start_delay = seconds

    @property
    def start_error(self) -> str | None:
        """If set, new sandboxes go to the ``error`` state with this reason instead of starting."""
        return self._world.start_error

    @start_error.setter
    def start_error(self, reason: str | None) -> None:
        self._world.start_error = reason

    def fail(
        self, operation: str, status: int, message: str, *, times: int = 1, code: str | None = None
    ) -> None:
        """Make the next ``times`` calls of ``operation`` answer HTTP ``status`` with ``message``.

        ``operation`` is one of ``OPERATIONS``: API calls (``create``, ``get``, ``delete``,
        ``last_activity``, ``toolbox_proxy_url``) answer like the Daytona API; the others
        (``session_exec``, ``upload``, ``download``, ...) like the sandbox daemon, where ``code``
        is the daemon error code (e.g. ``FILE_NOT_FOUND``).
        """
        if operation not in OPERATIONS:
            raise ValueError(
                f"unknown operation {operation!r}; choose one of {', '.join(sorted(OPERATIONS))}"
            )
        with self._world.lock:
            queue = self._world.failures.setdefault(operation, deque())
            queue.extend([Failure(status, message, code)] * times)

    def forget(self, sandbox_id: str) -> None:
        """Delete a sandbox without the client asking, as Daytona's auto-delete would."""
        loop = self._loop
        if loop is None:
            raise self._not_running()
        sandbox = self._world.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise KeyError(f"no sandbox {sandbox_id!r} was created on this server")
        future = asyncio.run_coroutine_threadsafe(self._world.destroy(sandbox), loop)
        future.result(self._start_timeout)

    @property
    def sandboxes(self) -> list[SandboxRecord]:
        """Every sandbox created so far (deleted ones included), oldest first."""
        with self._world.lock:
            return [sandbox.record() for sandbox in self._world.sandboxes.values()]

    @property
    def created(self) -> list[str]:
        """Ids of every sandbox created so far, oldest first."""
        return [record.id for record in self.sandboxes]

    @property
    def deleted(self) -> list[str]:
        """Ids of the sandboxes deleted so far."""
        return [record.id for record in self.sandboxes if record.deleted]

    @property
    def running(self) -> list[str]:
        """Ids of the sandboxes that exist and were not deleted: what a user would pay for."""
        return [record.id for record in self.sandboxes if not record.deleted]

    @property
    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every authenticated-or-not request received, oldest first."""
        with self._world.lock:
            return list(self._world.requests)

    def _build_app(self) -> web.Application:
        self._process = ProcessRoutes(self._world)
        app = web.Application(middlewares=[json_errors], client_max_size=1024**3)
        ApiRoutes(self._world).add_to(app)
        self._process.add_to(app)
        FileRoutes(self._process).add_to(app)
        return app

    def _on_started(self, port: int) -> None:
        self._world.toolbox_url = f"http://{self._host}:{port}/toolbox"

    async def _on_shutdown(self) -> None:
        """Kill sandbox processes and remove sandbox directories; the records are kept."""
        await self._world.shutdown()
        if self._process is not None:
            await self._process.close()
