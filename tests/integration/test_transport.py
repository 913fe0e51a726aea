"""The broker transport: kombu's Redis transport with one Redis client per channel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection

from dispatch.fleet.celery_broker import celery_config
from dispatch.fleet.transport import TRANSPORT_PATH
from dispatch.settings import FleetSettings
from tests.integration.fleet import REDIS_HOST, claimed_db


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    with claimed_db() as db:
        yield f"{REDIS_HOST}/{db}"


def test_redis_urls_get_the_lean_transport_and_others_celerys_own() -> None:
    plain = celery_config(FleetSettings(broker_url="redis://127.0.0.1:6379/3"))
    assert plain["broker_transport"] == TRANSPORT_PATH
    tls = celery_config(FleetSettings(broker_url="rediss://example:6380/0"))
    assert "broker_transport" not in tls


def test_a_channel_reuses_one_client_where_kombu_builds_one_per_command(broker_url: str) -> None:
    with Connection(broker_url, transport=TRANSPORT_PATH) as ours, Connection(broker_url) as stock:
        channel = ours.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        channel = stock.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is not second  # what the subclass is for


def test_late_acked_messages_flow_and_leave_no_unacked_entries(broker_url: str) -> None:
    app = Celery("transport-test", set_as_current=False)
    app.conf.update(celery_config(FleetSettings(broker_url=broker_url)))
    with app.connection_for_write() as connection:
        assert type(connection.transport).__module__ == "dispatch.fleet.transport"
        queue = connection.SimpleQueue("transport-test")
        for index in range(20):
            queue.put({"index": index})
        received = []
        for _ in range(20):
            message = queue.get(timeout=5)
            received.append(message.payload["index"])
            message.ack()
        queue.close()
    assert received == list(range(20))
    database = redis.Redis.from_url(broker_url)
    assert database.hlen("unacked") == 0 and database.zcard("unacked_index") == 0
    database.close()
