"""LoopThread: a private asyncio event loop in a daemon thread.

The dispatcher's sync API and the worker's session host both need a long-lived loop that outlives
any one call: the dispatcher so its Redis connections and embedded jobs persist between calls, the
worker so hundreds of sessions share one loop while Celery's threads wait on their futures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Runs an event loop in a background thread until ``stop()``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started on first use."""
        with self._lock:
            if self._loop is None:
                self._start()
            assert self._loop is not None
            return self._loop

    def _start(self) -> None:
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=main, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

    @property
    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def refuse_blocking_call_in_loop(self) -> None:
        """Raise if called on the loop's own thread, where blocking would stall every job."""
        if self.in_loop_thread:
            raise RuntimeError(
                f"a blocking call was made from inside {self._name}'s own event loop (for example "
                "from an observer callback); use the async form of the method there instead"
            )

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; the returned future can be waited on from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (never from the loop's own thread)."""
        if self.in_loop_thread:
            coro.close()  # it will never run; closing it spares a "never awaited" warning
        self.refuse_blocking_call_in_loop()
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and await it from another loop (or from the loop itself)."""
        if self.in_loop_thread:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what is still running on the loop, stop it and join the thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()


def still_running() -> bool:
    """False once the current task was asked to stop.

    Background loops check this as well as relying on ``CancelledError``, because a library call
    that swallows the cancellation would otherwise keep them going forever.
    """
    task = asyncio.current_task()
    return task is None or not task.cancelling()


async def every(
    interval_s: float,
    step: Callable[[], Awaitable[object]],
    *,
    failing: str,
    log: logging.Logger,
    at_once: bool = False,
    on_error: Callable[[], None] = lambda: None,
) -> None:
    """Run ``step`` every ``interval_s`` seconds (first at once, or after one interval) until the
    task is stopped. A failing step is logged as ``failing`` and retried at the next turn, after
    ``on_error``: a background loop outlives a Redis outage."""
    while still_running():
        if not at_once:
            await asyncio.sleep(interval_s)
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            on_error()
            log.warning("%s failed (%s); retrying", failing, exc)
        if at_once:
            await asyncio.sleep(interval_s)


async def stop_tasks(tasks: list[asyncio.Task[Any]], within_s: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them, at most ``within_s`` seconds."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=within_s)


async def _cancel_all() -> None:
    current = asyncio.current_task()
    await stop_tasks([task for task in asyncio.all_tasks() if task is not current])
