"""FleetStatus: what ``rho-agent fleet status`` shows, read from Redis in a few round trips.

- workers: each one's last heartbeat (``workers.heartbeat``), flagged *silent* once it is older
  than three beats plus five seconds (the worker died, hangs, or lost Redis);
- queue depth: messages waiting in the Celery queue (Redis lists, one per priority step; on
  RabbitMQ, the queue's ready messages);
- jobs in flight: every job holding a lease (running, or handed back and waiting to restart).

Ages are measured on the Redis server's clock, as the leases are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dispatch.errors import FleetUnavailable, SettingsError
from dispatch.settings import FleetSettings
from dispatch.urls import redact_url

_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: "{queue}\x06\x16{step}" per priority step
_PRIORITY_STEPS = (3, 6, 9)
_JOB_FIELDS = ("status", "worker", "turns", "started_at", "prompt", "attempt")
_CONSUMER_STALE_S = 10.0


@dataclass(frozen=True)
class WorkerView:
    """One worker as its last heartbeat describes it."""

    name: str
    host: str
    pid: int
    state: str
    jobs: int
    beat_age_s: float
    consumer_age_s: float | None
    silent: bool
    restarts: int = 0

    @property
    def health(self) -> str:
        """One phrase: ``ok``, ``draining``, or what is wrong."""
        if self.silent:
            return f"silent for {self.beat_age_s:.0f} s: dead or stuck"
        if self.state != "running":
            return self.state  # "draining": stopping, its consumer paused on purpose
        if self.consumer_age_s is not None and self.consumer_age_s > _CONSUMER_STALE_S:
            return f"not polling the broker for {self.consumer_age_s:.0f} s"
        return "ok"


@dataclass(frozen=True)
class JobView:
    """A job holding a lease: running on ``worker``, or ``queued`` again after a hand-back."""

    job_id: str
    status: str
    worker: str
    attempt: int
    turns: int
    age_s: float
    lease_left_s: float
    prompt: str


@dataclass(frozen=True)
class FleetStatus:
    broker: str
    queue: str
    queued: int
    workers: list[WorkerView]
    in_flight: list[JobView]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for view, row in zip(self.workers, data["workers"], strict=True):
            row["health"] = view.health
        return data


def read_status(settings: FleetSettings, *, limit: int = 100) -> FleetStatus:
    """Read the fleet's state; FleetUnavailable when its Redis does not answer."""
    import redis

    from dispatch.fleet.redis_clients import sync_client

    if not settings.broker_url:
        raise SettingsError(
            "fleet status needs a broker: pass --broker or set RHO_AGENT_BROKER_URL"
        )
    bus_url = settings.bus_url or settings.broker_url
    try:
        master = settings.sentinel_master
        with sync_client(
            bus_url, master_name=master, decode_responses=True, socket_timeout=5
        ) as bus:
            seconds, micros = bus.time()
            now_ms = seconds * 1000 + micros // 1000
            workers = _workers(bus, settings, now_ms)
            in_flight = _in_flight(bus, settings, now_ms, limit)
        if settings.broker_kind == "amqp":
            queued = _amqp_queue_depth(settings.broker_url, settings.queue)
        else:
            with sync_client(settings.broker_url, master_name=master, socket_timeout=5) as broker:
                queued = _queue_depth(broker, settings.queue)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise FleetUnavailable(
            f"cannot reach the fleet's Redis at {redact_url(bus_url)} ({exc}); is it running?"
        ) from None
    return FleetStatus(redact_url(settings.broker_url), settings.queue, queued, workers, in_flight)


def _workers(client: Any, settings: FleetSettings, now_ms: int) -> list[WorkerView]:
    names = [name for name, _ in client.zrange(settings.keys.workers(), 0, -1, withscores=True)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(settings.keys.worker(name))
    views = []
    for name, fields in zip(names, pipe.execute(), strict=True):
        if not fields:
            continue
        age = max(0.0, (now_ms - int(fields.get("beat_ms", 0))) / 1000)
        interval = float(fields.get("interval_s") or 5)
        consumer = fields.get("consumer_age_s")
        views.append(
            WorkerView(
                name=name,
                host=fields.get("host", ""),
                pid=int(fields.get("pid") or 0),
                state=fields.get("state", ""),
                jobs=int(fields.get("running") or 0),
                beat_age_s=age,
                consumer_age_s=float(consumer) if consumer else None,
                silent=age > 3 * interval + 5,
                restarts=int(fields.get("restarts") or 0),
            )
        )
    return sorted(views, key=lambda view: view.name)


def _in_flight(client: Any, settings: FleetSettings, now_ms: int, limit: int) -> list[JobView]:
    leases = client.zrange(settings.keys.leases(), 0, limit - 1, withscores=True)
    pipe = client.pipeline(transaction=False)
    for job_id, _ in leases:
        pipe.hmget(settings.keys.job(job_id), list(_JOB_FIELDS))
    views = []
    for (job_id, expiry), row in zip(leases, pipe.execute(), strict=True):
        fields = dict(zip(_JOB_FIELDS, row, strict=True))
        if fields["status"] not in ("running", "queued"):
            continue
        started = float(fields["started_at"] or 0)
        views.append(
            JobView(
                job_id=job_id,
                status=fields["status"],
                worker=fields["worker"] or "",
                attempt=int(fields["attempt"] or 0),
                turns=int(fields["turns"] or 0),
                age_s=now_ms / 1000 - started if started else 0.0,
                lease_left_s=(expiry - now_ms) / 1000,
                prompt=(fields["prompt"] or "")[:60],
            )
        )
    return views


def _queue_depth(client: Any, queue: str) -> int:
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    for step in _PRIORITY_STEPS:
        pipe.llen(f"{queue}{_PRIORITY_SEP}{step}")
    return sum(int(length) for length in pipe.execute())


def _amqp_queue_depth(broker_url: str, queue: str) -> int:
    """Ready messages in the RabbitMQ queue (a passive declare: 0 when it does not exist yet)."""
    from kombu.connection import Connection

    connection = Connection(broker_url, connect_timeout=5)  # type: ignore[no-untyped-call]
    try:
        with connection:
            channel = connection.default_channel
            declared = channel.queue_declare(queue, passive=True)  # type: ignore[no-untyped-call]
    except connection.channel_errors:
        return 0
    except connection.connection_errors as exc:
        raise FleetUnavailable(
            f"cannot reach the fleet's broker at {redact_url(broker_url)} ({exc}); is it running?"
        ) from None
    return int(declared.message_count)
