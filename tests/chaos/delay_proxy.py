"""A small TCP proxy that adds latency (the kernel here has no ``netem`` qdisc) and can be cut.

Each route listens in one network namespace and connects in another (or the same), so the proxy
also bridges the test process (the host namespace) to the namespaces of a simulated topology.
Sockets belong to the namespace they were created in: each namespace gets a one-thread executor
that entered it with ``setns`` once, and only creates sockets; the asyncio loop (its own thread)
then uses them. Every chunk is held ``latency_ms`` +- ``jitter_ms`` (normal, never negative) in each
direction, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import socket
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

CLONE_NEWNET = 0x40000000
CHUNK = 65536
T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    """An address in a namespace (``None``: the test process's own, the host's)."""

    host: str
    port: int
    namespace: str | None = None


@dataclass
class _Route:
    listen: Endpoint
    target: Endpoint
    server: asyncio.Server | None = None
    connections: set[asyncio.StreamWriter] = field(default_factory=set)


def _enter(namespace: str) -> None:
    """Move the calling thread into ``namespace`` (a name from ``ip netns add``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {namespace}: {os.strerror(error)}")
    finally:
        os.close(fd)


class DelayProxy:
    """Routes added with ``add``; ``cut``/``heal`` stop and restart one; ``close`` ends all."""

    def __init__(self, latency_ms: float = 1.0, jitter_ms: float = 0.2, seed: int = 0) -> None:
        self.latency_s = latency_ms / 1000
        self.jitter_s = jitter_ms / 1000
        self._random = random.Random(seed)
        self._routes: dict[str, _Route] = {}
        self._executors: dict[str | None, Executor] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def add(self, name: str, listen: Endpoint, target: Endpoint) -> None:
        self._routes[name] = _Route(listen, target)
        self.heal(name)

    def cut(self, name: str) -> None:
        """Stop listening on route ``name`` and reset its open connections (a hard partition)."""
        self._run(self._cut(self._routes[name]))

    def heal(self, name: str) -> None:
        self._run(self._listen(self._routes[name]))

    def close(self) -> None:
        self._run(self._shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        for executor in self._executors.values():
            executor.shutdown(wait=False)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _shut(self) -> None:
        for route in self._routes.values():
            await self._cut(route)
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _in(self, namespace: str | None, make: Callable[[], T]) -> T:
        """Run ``make`` (a socket factory) in ``namespace``."""
        if namespace is None:
            return make()
        if namespace not in self._executors:
            self._executors[namespace] = ThreadPoolExecutor(
                1, initializer=_enter, initargs=(namespace,)
            )
        return await self._loop.run_in_executor(self._executors[namespace], make)

    async def _listen(self, route: _Route) -> None:
        if route.server is not None:
            return
        address = (route.listen.host, route.listen.port)

        def listening() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(512)
            sock.setblocking(False)
            return sock

        sock = await self._in(route.listen.namespace, listening)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Cancelled at close; the task ends here (Python 3.11's stream callback would log
            # the cancellation of a connection task as an error).
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve(route, reader, writer)

        route.server = await asyncio.start_server(accept, sock=sock)

    async def _cut(self, route: _Route) -> None:
        if route.server is not None:
            route.server.close()
            route.server = None
        for writer in list(route.connections):
            with contextlib.suppress(OSError):
                sock = writer.get_extra_info("socket")
                if sock is not None:  # RST, not FIN: the far side sees the connection die
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            writer.transport.abort()
        route.connections.clear()

    async def _serve(
        self, route: _Route, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        def connecting() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            return sock

        sock = await self._in(route.target.namespace, connecting)
        try:
            await self._loop.sock_connect(sock, (route.target.host, route.target.port))
        except OSError:
            sock.close()
            client.transport.abort()
            return
        server_reader, server = await asyncio.open_connection(sock=sock)
        route.connections.update((client, server))
        try:
            await asyncio.gather(
                self._pipe(client_reader, server), self._pipe(server_reader, client)
            )
        finally:
            for writer in (client, server):
                route.connections.discard(writer)
                writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, each chunk held for the latency, order kept."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - self._loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        due = 0.0
        try:
            while True:
                try:
                    chunk = await reader.read(CHUNK)
                except OSError:
                    chunk = b""
                delay = max(0.0, self._random.gauss(self.latency_s, self.jitter_s))
                due = max(due, self._loop.time() + delay)
                queue.put_nowait((due, chunk))
                if not chunk:
                    break
            await delivering
        except (OSError, ConnectionError):
            pass
        finally:
            delivering.cancel()
            writer.transport.abort()
