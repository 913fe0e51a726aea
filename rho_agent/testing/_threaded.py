"""ThreadedAiohttpServer: an aiohttp app on its own thread and event loop, for test servers.

Tests are often synchronous, and an async test's loop must stay free to run the client, so the
test servers here serve from a background thread. Subclasses say what to serve
(``_build_app``) and what to do once listening (``_on_started``) and before closing
(``_on_shutdown``); this class owns the thread, the start/stop handshake and the context managers.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from types import TracebackType
from typing import ClassVar, Self

from aiohttp import web


class ThreadedAiohttpServer(ABC):
    """Serves ``_build_app()`` on ``host:port`` from a daemon thread between start() and stop()."""

    _thread_name: ClassVar[str] = "aiohttp-server"
    _start_timeout: ClassVar[float] = 10.0
    _stop_timeout: ClassVar[float] = 10.0

    def __init__(self, *, host: str, port: int, backlog: int = 128) -> None:
        self._host = host
        self._requested_port = port
        self._backlog = backlog
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._start_error: BaseException | None = None

    @abstractmethod
    def _build_app(self) -> web.Application:
        """The application to serve; called on the server's loop at every start()."""

    def _on_started(self, port: int) -> None:  # noqa: B027 (optional hook)
        """Called on the server's loop once ``port`` is bound; raising fails start()."""

    async def _on_shutdown(self) -> None:  # noqa: B027 (optional hook)
        """Called on the server's loop at stop(), before the listener and connections close."""

    @property
    def port(self) -> int:
        if self._port is None:
            raise self._not_running()
        return self._port

    def _not_running(self) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__} is not running; call start() first")

    def start(self) -> Self:
        """Listen on a background thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} is already running; call stop() first")
        started = threading.Event()
        self._start_error = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(started)), name=self._thread_name, daemon=True
        )
        self._thread.start()
        if not started.wait(self._start_timeout) or self._start_error is not None:
            self._thread.join(self._start_timeout)
            self._thread = self._loop = self._stopping = None
            raise RuntimeError(
                f"{type(self).__name__} could not listen on {self._host}:{self._requested_port}: "
                f"{self._start_error or 'timed out'}"
            ) from self._start_error
        return self

    def stop(self) -> None:
        """Run the shutdown hook, close the listener and open connections; safe to call twice."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(self._stop_timeout)
        self._thread = self._loop = self._stopping = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    async def _serve(self, started: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self._build_app(), access_log=None, shutdown_timeout=1.0)
        try:
            await runner.setup()
            site = web.TCPSite(runner, self._host, self._requested_port, backlog=self._backlog)
            await site.start()
            port = int(runner.addresses[0][1])
            self._on_started(port)
            self._port = port
        except Exception as exc:
            self._start_error = exc
            await runner.cleanup()
            return
        finally:
            started.set()
        try:
            await self._stopping.wait()
        finally:
            try:
                await self._on_shutdown()
            finally:
                await runner.cleanup()
