"""What a worker does as it starts and stops: heartbeat, health file and graceful shutdown.

``install_lifecycle(app, host, settings)`` connects Celery's signals once, in ``create_app``:

- ``heartbeat_sent`` (Celery's consumer, every 2 s): the loop polling the broker is alive;
- ``worker_ready``: start the heartbeat on the session host's loop;
- ``worker_shutting_down`` (SIGTERM, SIGINT, SIGQUIT; main thread, before Celery stops): drain
  (``workers.shutdown``);
- ``worker_shutdown``: stop the heartbeat, remove the health file and the Redis record.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from celery.signals import heartbeat_sent, worker_ready, worker_shutdown, worker_shutting_down

from dispatch.fleet.redis_bus import RedisBus
from workers.heartbeat import Heartbeat
from workers.shutdown import GracefulShutdown

if TYPE_CHECKING:
    from celery import Celery

    from workers.session_host import SessionHost
    from workers.worker_settings import WorkerSettings

logger = logging.getLogger("workers.lifecycle")

_STOP_BEAT_S = 5.0


class Lifecycle:
    """The signal receivers of one worker app (see the module docstring)."""

    def __init__(self, app: Celery, host: SessionHost, settings: WorkerSettings) -> None:
        self.app = app
        self.host = host
        self.settings = settings
        self.heartbeat = Heartbeat(
            settings.health,
            settings.worker_name,
            settings.fleet.keys,
            lambda: host.running_count,
        )
        self.shutdown = GracefulShutdown(
            host,
            settings.shutdown_grace_s,
            hurry=_second_signal,
            on_begin=lambda: self.heartbeat.set_state("draining"),
        )
        self._beating: concurrent.futures.Future[None] | None = None

    def on_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app or self._beating is not None:
            return
        bus = self.host.start().bus
        if not isinstance(bus, RedisBus):
            raise TypeError(f"a worker's session host needs a RedisBus, got {type(bus).__name__}")
        self._beating = self.host.loop.submit(self.heartbeat.run(bus.client))

    def on_shutting_down(self, how: str = "Warm", **_: Any) -> None:
        self.shutdown.drain(cold=how != "Warm")

    def on_shutdown(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        beating, self._beating = self._beating, None
        if beating is not None and not beating.done():
            beating.cancel()  # cancels the task on the loop; wait so no beat lands after close
            with contextlib.suppress(Exception):
                self.host.loop.call(_settle(), timeout=_STOP_BEAT_S)
        self.heartbeat.close(self.settings.fleet)


def install_lifecycle(app: Celery, host: SessionHost, settings: WorkerSettings) -> Lifecycle:
    """Connect the heartbeat and graceful shutdown to ``app``'s worker (call once per app)."""
    lifecycle = Lifecycle(app, host, settings)
    heartbeat_sent.connect(lifecycle.heartbeat.consumer_tick, weak=False)
    worker_ready.connect(lifecycle.on_ready, weak=False)
    worker_shutting_down.connect(lifecycle.on_shutting_down, weak=False)
    worker_shutdown.connect(lifecycle.on_shutdown, weak=False)
    return lifecycle


async def _settle() -> None:
    """Returns once the loop has run the callbacks queued before it (the heartbeat's cancel)."""


def _second_signal() -> bool:
    """True once Celery was told to stop at once (a second Ctrl+C, or SIGQUIT)."""
    from celery.worker import state

    return bool(state.should_terminate)
