"""One timer per event loop asks every running session's ``cancel_check`` whether to stop.

A timer per session woke a fleet worker 5,000 times a second with 500 jobs running, each wake a
timer-heap push and pop and a task step, for checks that almost never say stop. Here one task
per loop walks the sessions it watches every ``CANCEL_POLL_SECONDS`` and ends with the last one.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable

logger = logging.getLogger("rho_agent.session")

CANCEL_POLL_SECONDS = 0.1

StopIfAsked = Callable[[], bool]
"""A watched run's check: asks its ``cancel_check`` and, if it says stop, cancels the run;
True once the run needs no more checks (cancelled)."""


class _LoopPoller:
    """The runs one event loop's task checks, and that task (None while none is watched)."""

    def __init__(self) -> None:
        self.watched: dict[object, StopIfAsked] = {}
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while self.watched:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            for key, stop_if_asked in list(self.watched.items()):
                try:
                    stopped = stop_if_asked()
                except Exception:
                    logger.exception("a cancel_check raised; it is no longer asked")
                    stopped = True
                if stopped:
                    self.watched.pop(key, None)


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPoller]
_pollers = weakref.WeakKeyDictionary()


def watch(key: object, stop_if_asked: StopIfAsked) -> None:
    """Ask ``stop_if_asked`` every poll until ``unwatch(key)`` (or until it returns True)."""
    poller = _pollers.setdefault(asyncio.get_running_loop(), _LoopPoller())
    poller.watched[key] = stop_if_asked
    if poller.task is None or poller.task.done():
        poller.task = asyncio.create_task(poller.run(), name="rho-cancel-poll")


def unwatch(key: object) -> None:
    """Stop asking for ``key``; the loop's task ends at once with the last one it watched."""
    poller = _pollers.get(asyncio.get_running_loop())
    if poller is None:
        return
    poller.watched.pop(key, None)
    if not poller.watched and poller.task is not None:
        poller.task.cancel()
        poller.task = None
