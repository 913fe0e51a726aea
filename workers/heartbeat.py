"""Heartbeat: proof, every few seconds, that a worker's session host loop is alive.

A task on the session host's event loop (the loop every job of the process runs on) beats every
``RHO_AGENT_HEARTBEAT_INTERVAL`` seconds. Each beat writes:

- the health file the probe reads (``workers.health``);
- ``WATCHDOG=1`` to systemd when the unit has ``WatchdogSec=`` (``READY=1`` on the first beat);
- ``{p}worker:{name}`` (hash) and ``{p}workers`` (sorted set by last beat, Redis server ms), which
  ``rho-agent fleet status`` reads to show live, draining and silent workers.

A worker that stops cleanly removes its file and its Redis record; one that dies or hangs leaves
a record whose beat grows old, which is how ``fleet status`` tells them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from dispatch.fleet import lua
from dispatch.keys import Keys
from dispatch.settings import FleetSettings
from workers.health import Beat, HealthSettings

logger = logging.getLogger("workers.heartbeat")

RECORD_TTL_S = 3600
"""How long the Redis record of a worker that stopped beating stays visible to ``fleet status``."""

# KEYS: worker hash, workers sorted set. ARGV: ttl s, worker name, then field/value pairs.


class Heartbeat:
    """Beats from the session host's loop; the consumer signal and the shutdown update it."""

    def __init__(
        self, settings: HealthSettings, worker: str, keys: Keys, running: Callable[[], int]
    ) -> None:
        self.settings = settings
        self.worker = worker
        self.keys = keys
        self.path = settings.path(worker)
        self._running = running
        self._state = "running"
        self._consumer_at: float | None = None
        self._beats = 0

    def consumer_tick(self, **_: Any) -> None:
        """Receiver of Celery's ``heartbeat_sent``: the loop polling the broker is alive."""
        self._consumer_at = time.time()

    def set_state(self, state: str) -> None:
        """``draining`` once the worker was told to stop (it then takes no new jobs)."""
        self._state = state
        if state == "draining":
            sd_notify("STOPPING=1")

    async def run(self, client: Any) -> None:
        """Beat until cancelled (``client`` is a redis.asyncio client of this loop)."""
        script = client.register_script(lua.BEAT)
        while True:
            await self.beat_once(script)
            await asyncio.sleep(self.settings.interval_s)

    async def beat_once(self, script: Any) -> Beat:
        """Write one beat everywhere; a failed write is logged and retried at the next beat."""
        beat = Beat(
            worker=self.worker,
            pid=os.getpid(),
            host=socket.gethostname(),
            state=self._state,
            loop_at=time.time(),
            consumer_at=self._consumer_at,
            running=self._running(),
            interval_s=self.settings.interval_s,
            restarts=self.settings.restarts,
        )
        self._write_file(beat)
        sd_notify("WATCHDOG=1" if self._beats else "READY=1\nWATCHDOG=1")
        self._beats += 1
        args: list[Any] = [RECORD_TTL_S, self.worker]
        for name, value in _redis_fields(beat).items():
            args += [name, value]
        keys = [self.keys.worker(self.worker), self.keys.workers()]
        try:
            await script(keys=keys, args=args)
        except Exception as exc:
            logger.warning("writing the worker heartbeat to Redis failed (%s); retrying", exc)
        return beat

    def close(self, fleet: FleetSettings) -> None:
        """On a clean stop: remove the health file and the Redis record (blocking)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if not fleet.bus_url:
            return
        import redis

        from dispatch.fleet.redis_clients import sync_client

        try:
            bus = sync_client(fleet.bus_url, master_name=fleet.sentinel_master, socket_timeout=5)
            with bus as client:
                client.delete(self.keys.worker(self.worker))
                client.zrem(self.keys.workers(), self.worker)
        except redis.RedisError as exc:
            logger.warning("removing the worker's heartbeat record failed (%s)", exc)

    def _write_file(self, beat: Beat) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.path.with_name(f".{self.path.name}.tmp")
            temp.write_text(json.dumps(asdict(beat)), encoding="utf-8")
            os.replace(temp, self.path)
        except OSError as exc:
            logger.warning("writing the health file %s failed (%s)", self.path, exc)


def _redis_fields(beat: Beat) -> dict[str, str]:
    """The hash fields: ages rather than this machine's clock (status compares server time)."""
    consumer_age = "" if beat.consumer_at is None else f"{beat.loop_at - beat.consumer_at:.1f}"
    return {
        "worker": beat.worker,
        "pid": str(beat.pid),
        "host": beat.host,
        "state": beat.state,
        "running": str(beat.running),
        "interval_s": repr(beat.interval_s),
        "consumer_age_s": consumer_age,
        "restarts": str(beat.restarts),
    }


def sd_notify(message: str) -> bool:
    """Tell systemd ``message`` when a unit listens (``NOTIFY_SOCKET``); else do nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        logger.warning("notifying systemd failed (%s)", exc)
        return False
    return True
