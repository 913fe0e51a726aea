"""Kombu's Redis transport with one Redis client per channel instead of one per command.

Kombu 5.7's Redis channel builds a new ``redis.Redis`` object for every publish, every delivery's
unacked bookkeeping and every ack (``Channel.conn_or_acquire()`` calls ``_create_client()``), and
redis-py 8 copies its whole table of response callbacks into each new client: about 10 % of a
fleet worker's CPU went there (docs/benchmarks.md). A ``redis.Redis`` is safe to share between
threads (each command checks a connection out of the pool), so the channel keeps one per
connection pool. Everything else is kombu's own transport.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT_PATH = "dispatch.fleet.transport:Transport"
"""What ``broker_transport`` names for ``redis://`` broker URLs."""


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
