"""Kombu's Redis transport, with two changes: one Redis client per channel, and surviving the
loss of the broker connection.

One client per channel: Kombu 5.7's Redis channel builds a new ``redis.Redis`` object for every
publish, every delivery's unacked bookkeeping and every ack (``Channel.conn_or_acquire()`` calls
``_create_client()``), and redis-py 8 copies its whole table of response callbacks into each new
client: about 10 % of a fleet worker's CPU went there (docs/benchmarks.md). A ``redis.Redis`` is
safe to share between threads (each command checks a connection out of the pool), so the channel
keeps one per connection pool.

Surviving a Redis restart (kombu bug, docs/reliability.md): when the connection drops while the
consumer waits in BRPOP and a late-acknowledged message is still running, Celery's
``collect()`` fails to close the channel (the BRPOP read raises), drops the transport's
``client`` anyway, and then closes the channel again: the channel rebuilds its connection pool
from ``transport.client``, which is now ``None``, and ``restore_unacked`` raises
``AttributeError: 'NoneType' object has no attribute 'hostname'``. That is not a connection error,
so it escapes Celery's handler and ends the consumer; the worker finishes its jobs and exits 0.
The same rebuild breaks every later ack of those running messages. Our channel keeps the
connection settings it was opened with, so it can always rebuild its pool.

Nor does our transport give a lost connection's delivered messages back to the queue, as
kombu's does: Celery keeps running every message it received (late acks), so a copy back on the
queue only runs the job a second time. The worker acknowledges each one when its job ends, through
the rebuilt pool. A worker that dies instead leaves them in kombu's ``unacked`` set, and its jobs
come back through their leases (docs/fleet.md, Crash safety).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT_PATH = "dispatch.fleet.transport:Transport"
"""What ``broker_transport`` names for ``redis://`` broker URLs."""

_REBUILD = threading.Lock()
logger = logging.getLogger("dispatch.transport")


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> Any:
        """Kombu's, except after a lost connection (see the module docstring)."""
        if not getattr(self.channel, "connection_lost", False):
            return super().restore_unacked(client)  # type: ignore[no-untyped-call]
        if self._delivered:
            logger.info(
                "broker connection lost: %d received job(s) keep running here and are "
                "acknowledged when they end",
                len(self._delivered),
            )
        self._delivered.clear()
        return None


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None
    connection_lost = False

    def __init__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        self._conninfo = connection.client  # the kombu Connection, before a close forgets it
        super().__init__(connection, *args, **kwargs)  # type: ignore[no-untyped-call]

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client

    def _connparams(self, asynchronous: bool = False) -> Any:
        """Kombu's, from the settings this channel was opened with when the transport has
        dropped them (after a lost connection; see the module docstring)."""
        transport = self.connection
        if transport.client is not None or self._conninfo is None:
            return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        with _REBUILD:  # the transport is detached: only its old channels still use it
            transport.client = self._conninfo
            try:
                return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
            finally:
                transport.client = None


class Transport(kombu_redis.Transport):
    Channel = Channel

    def _collect(self, connection: Any) -> None:
        """What ``Connection.collect()`` runs when Celery's consumer lost the broker: mark the
        channels so closing them keeps their delivered messages (kombu's default path closes
        and restores them here, while Redis is unreachable)."""
        for channel in self.channels:
            channel.connection_lost = True
