"""The broker transport: kombu's Redis transport with one Redis client per channel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection, Consumer, Queue
from kombu.message import Message

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


def _publish(connection: Connection, queue: Queue, count: int) -> None:
    with connection.Producer() as producer:
        for index in range(count):
            producer.publish({"index": index}, routing_key=queue.name, declare=[queue])


def test_one_wake_up_takes_a_batch_within_the_prefetch_each_recorded_and_acked_once(
    broker_url: str,
) -> None:
    queue = Queue("batch-intake")
    database = redis.Redis.from_url(broker_url)
    with Connection(broker_url, transport=TRANSPORT_PATH) as connection:
        _publish(connection, queue, 25)
        received: list[Message] = []
        channel = connection.channel()
        channel.basic_qos(0, 10, False)
        with Consumer(channel, [queue], callbacks=[lambda _, m: received.append(m)]):
            connection.drain_events(timeout=5)
            assert len(received) == 10  # one BRPOP and one RPOP, not one message
            assert database.hlen("unacked") == database.zcard("unacked_index") == 10
            for message in received:
                message.ack()
            while len(received) < 25:
                connection.drain_events(timeout=5)
                for message in received:
                    if not message.acknowledged:
                        message.ack()
        channel.close()
    assert [m.payload["index"] for m in received] == list(range(25))
    assert database.hlen("unacked") == database.zcard("unacked_index") == 0
    assert database.llen("batch-intake") == 0
    database.close()


def test_a_delivery_that_raises_puts_the_rest_of_its_batch_back_on_the_queue(
    broker_url: str,
) -> None:
    queue = Queue("batch-intake-fails")
    database = redis.Redis.from_url(broker_url)
    received: list[Message] = []

    def take(_: object, message: Message) -> None:
        received.append(message)
        if len(received) == 3:
            raise RuntimeError("the consumer failed")

    with Connection(broker_url, transport=TRANSPORT_PATH) as connection:
        _publish(connection, queue, 8)
        channel = connection.channel()
        with Consumer(channel, [queue], callbacks=[take]):
            with pytest.raises(RuntimeError):
                connection.drain_events(timeout=5)
            # the three delivered stay unacked; the five never delivered are queued again
            assert database.hlen("unacked") == database.zcard("unacked_index") == 3
            assert database.llen("batch-intake-fails") == 5
            for message in received:
                message.ack()
        channel.close()
    assert database.hlen("unacked") == 0
    database.delete("batch-intake-fails")
    database.close()
