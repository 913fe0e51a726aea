"""Kombu's Redis transport, with three changes: one Redis client per channel, a batch of messages
per consumer wake-up (``Channel._brpop_read``, measured in docs/benchmarks.md), and surviving the
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
import time
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps, loads

TRANSPORT_PATH = "dispatch.fleet.transport:Transport"
"""What ``broker_transport`` names for ``redis://`` broker URLs."""

INTAKE_BATCH = 32
"""At most this many messages a consumer takes from a queue per wake-up (prefetch permitting)."""

_REBUILD = threading.Lock()
logger = logging.getLogger("dispatch.transport")


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._recorded: set[str] = set()
        """Delivery tags ``record`` already wrote into ``unacked``, not yet appended."""

    def record(self, payloads: list[dict[str, Any]]) -> None:
        """Write several popped messages into kombu's ``unacked`` bookkeeping in one pipeline,
        as ``append`` writes one (same fields), before any of them is delivered."""
        now = time.time()
        index: dict[str, float] = {}
        entries: dict[str, str] = {}
        for payload in payloads:
            properties = payload["properties"]
            tag = properties["delivery_tag"]
            delivery = properties["delivery_info"]
            index[tag] = now
            entries[tag] = dumps(  # type: ignore[no-untyped-call]
                [payload, delivery["exchange"], delivery["routing_key"]]
            )
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, index).hset(self.unacked_key, mapping=entries)
            pipe.execute()
        self._recorded.update(index)

    def restore_recorded(self, payloads: list[dict[str, Any]]) -> None:
        """Put recorded messages that were never delivered back on their queue."""
        for payload in payloads:
            tag = payload["properties"]["delivery_tag"]
            self._recorded.discard(tag)
            self.restore_by_tag(tag)  # type: ignore[no-untyped-call]

    def append(self, message: Any, delivery_tag: str) -> None:
        """Kombu's, without the Redis writes for a message ``record`` already wrote."""
        if delivery_tag in self._recorded:
            self._recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
        else:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]

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

    def _brpop_read(self, **options: Any) -> bool:
        """Kombu's, taking up to INTAKE_BATCH messages per wake-up instead of one.

        When BRPOP answers, ``RPOP key count`` on the same connection takes more of that list
        (as many as the prefetch still allows), and all of them are written into ``unacked`` in
        one pipeline before the first is delivered: per message, one BRPOP and one pipeline
        become a share of three round trips. Popped messages not yet in ``unacked`` are lost by
        a worker killed in between, as kombu's single BRPOP loses one; the queued lease re-sends
        their jobs (workers/lease.py).
        """
        client = self.client
        try:
            try:
                reply = client.parse_response(client.connection, "BRPOP", **options)
                more = self._pop_more(reply[0]) if reply else []
            except self.connection_errors:
                client.connection.disconnect()  # the next wake-up reconnects (as kombu's)
                raise
            if not reply:
                raise Empty()
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]
        key, first = reply
        queue = key.decode().rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        payloads = [loads(item) for item in (first, *more)]  # type: ignore[no-untyped-call]
        if not more:
            self.connection._deliver(payloads[0], queue)  # noqa: SLF001 (kombu's, as it calls it)
            return True
        self.qos.record(payloads)
        delivered = 0
        try:
            for payload in payloads:
                delivered += 1
                self.connection._deliver(payload, queue)  # noqa: SLF001
        finally:
            self.qos.restore_recorded(payloads[delivered:])  # a delivery raised: the rest go back
        return True

    def _pop_more(self, key: Any) -> list[bytes]:
        """Up to INTAKE_BATCH - 1 more messages from ``key`` (BRPOP's answer), if the prefetch
        leaves room for them beside the one BRPOP took."""
        room = self.qos.can_consume_max_estimate()
        count = INTAKE_BATCH - 1 if room is None else min(INTAKE_BATCH, room) - 1
        if count < 1:
            return []
        command = ["RPOP", key.decode(), count]
        if self.global_keyprefix:
            command = self.client._prefix_args(command)  # noqa: SLF001 (as _brpop_start)
        self.client.connection.send_command(*command)
        popped: list[bytes] | None = self.client.parse_response(self.client.connection, "RPOP")
        return popped or []

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
