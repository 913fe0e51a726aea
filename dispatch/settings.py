"""Fleet settings shared by dispatchers and workers, read from the environment at the edges.

``FLEET`` is the table of their variables (``dispatch.settings_table``: name, field, parser,
default, bounds, meaning); ``FleetSettings.from_env()`` reads it and is called by the CLI,
``Dispatcher`` and the worker. Nothing reads the environment at import time. docs/fleet.md shows the
table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatch.errors import SettingsError
from dispatch.keys import DEFAULT_PREFIX, Keys
from dispatch.settings_table import Setting, Table, at_least, seconds, text, whole
from dispatch.urls import BrokerKind, UrlError, check_address, parse_sentinel_url, url_kind


def _named(value: str) -> bool:
    return bool(value.strip())


# fmt: off
BROKER_URL = Setting[str | None](
    "RHO_AGENT_BROKER_URL", "broker_url", None,
    "Celery broker: redis://, sentinel://host:26379;sentinel://... or amqp:// (RabbitMQ)",
    text, shown="(required)",
)
REDIS_URL = Setting[str | None](
    "RHO_AGENT_REDIS_URL", "redis_url", None,
    "Redis (redis:// or sentinel://) for job events, traces and leases; required with amqp://",
    text, shown="broker URL",
)
SENTINEL_MASTER = Setting(
    "RHO_AGENT_SENTINEL_MASTER", "sentinel_master", "mymaster",
    "master name the Sentinels of sentinel:// URLs know",
    text, ok=_named, must="a name the Sentinels know, not empty",
)
KEY_PREFIX = Setting(
    "RHO_AGENT_KEY_PREFIX", "key_prefix", DEFAULT_PREFIX,
    "prefix of every Redis key the fleet writes", text,
)
QUEUE = Setting(
    "RHO_AGENT_QUEUE", "queue", "rho-agent",
    "Celery queue the worker consumes and dispatchers send to",
    text, ok=_named, must="a queue name, not empty",
)
RETENTION = Setting(
    "RHO_AGENT_RETENTION", "retention_s", 7 * 24 * 3600,
    "seconds job metadata, events and traces are kept",
    whole, ok=at_least(60), must="at least 60 s",
)
EVENTS_MAXLEN = Setting(
    "RHO_AGENT_EVENTS_MAXLEN", "events_maxlen", 20_000,
    "events kept per job stream (older ones are trimmed)",
    whole, ok=at_least(100), must="at least 100",
)
QUEUED_LEASE = Setting(
    "RHO_AGENT_QUEUED_LEASE", "queued_lease_s", 600,
    "seconds a queued or re-sent job may wait unclaimed before the sweeper sends it again",
    whole, ok=at_least(1), must="at least 1 s",
)
APPROVAL_TTL = Setting(
    "RHO_AGENT_APPROVAL_TTL", "approval_ttl_s", 24 * 3600,
    "seconds a job's tool calls wait for approval before they are denied as expired "
    "(at most the retention; see [approvals.md](approvals.md))",
    whole, ok=at_least(1), must="at least 1 s",
)
REDIS_OUTAGE_LIMIT = Setting(
    "RHO_AGENT_REDIS_OUTAGE_LIMIT", "redis_outage_s", 60.0,
    "seconds Redis may be unreachable (or a job's record missing) before giving up on it",
    seconds, ok=lambda value: value > 0, must="> 0 s",
)
FAN_OUT_MAX_DEPTH = Setting(
    "RHO_AGENT_FAN_OUT_MAX_DEPTH", "fan_out_max_depth", 2,
    "how deep `fan_out` sub-jobs may nest (0: the tool refuses every call)",
    whole, ok=at_least(0), must="0 (no fan-out) or more",
)
FAN_OUT_MAX_CHILDREN = Setting(
    "RHO_AGENT_FAN_OUT_MAX_CHILDREN", "fan_out_max_children", 50,
    "sub-jobs one `fan_out` call may start",
    whole, ok=at_least(1), must="at least 1",
    fix=f"set {FAN_OUT_MAX_DEPTH.name}=0 to forbid fan-out",
)
EMBEDDED_CONCURRENCY = Setting(
    "RHO_AGENT_EMBEDDED_CONCURRENCY", "embedded_concurrency", 64,
    "(dispatchers only) jobs run at once in-process",
    whole, ok=at_least(1), must="at least 1",
)
EMBEDDED_KEEP = Setting(
    "RHO_AGENT_EMBEDDED_KEEP", "embedded_keep", 10_000,
    "(dispatchers only) finished jobs kept in-process beyond those a `Job` handle holds",
    whole, ok=at_least(0), must="0 or more",
)
# fmt: on

FLEET = Table(
    (
        BROKER_URL, REDIS_URL, SENTINEL_MASTER, KEY_PREFIX, QUEUE, RETENTION, EVENTS_MAXLEN,
        QUEUED_LEASE, APPROVAL_TTL, REDIS_OUTAGE_LIMIT, FAN_OUT_MAX_DEPTH, FAN_OUT_MAX_CHILDREN,
        EMBEDDED_CONCURRENCY, EMBEDDED_KEEP,
    ),
    SettingsError,
)  # fmt: skip
"""Every variable a dispatcher reads; the workers read them too and must agree."""


@dataclass(frozen=True)
class FleetSettings:
    """Where the fleet lives and how long it keeps what jobs write.

    ``broker_url`` ``None`` means embedded mode: jobs run in this process, no Redis needed.
    ``redis_url`` holds the job bus (events, traces, metadata) and defaults to the broker URL;
    an ``amqp://`` broker carries jobs only, so it needs one. ``sentinel_master`` is the master
    name the Sentinels of a ``sentinel://`` URL know (``dispatch.urls`` describes the forms).
    ``redis_outage_s`` is how long workers and dispatchers ride out an unreachable Redis (and
    how long a dispatcher lets a job's record stay missing) before giving up on it.
    """

    broker_url: str | None = BROKER_URL.default
    redis_url: str | None = REDIS_URL.default
    key_prefix: str = KEY_PREFIX.default
    queue: str = QUEUE.default
    retention_s: int = RETENTION.default
    events_maxlen: int = EVENTS_MAXLEN.default
    embedded_concurrency: int = EMBEDDED_CONCURRENCY.default
    embedded_keep: int = EMBEDDED_KEEP.default
    """Finished jobs an embedded dispatcher keeps in memory (oldest forgotten first) besides
    those a live ``Job`` handle holds; the retention still applies."""
    queued_lease_s: int = QUEUED_LEASE.default
    """How long a queued (or re-sent) job may wait for a worker to claim it before the sweeper
    sends it again: a lost message or a worker that died before claiming it costs this long."""
    approval_ttl_s: int = APPROVAL_TTL.default
    """How long a job's tool calls wait for a person's decision before they are denied as
    expired (docs/approvals.md); cut to the retention, or the job would be gone first."""
    sentinel_master: str = SENTINEL_MASTER.default
    redis_outage_s: float = REDIS_OUTAGE_LIMIT.default
    fan_out_max_depth: int = FAN_OUT_MAX_DEPTH.default
    """How deep ``fan_out`` may nest: a job's children are one level below it (0: no fan-out)."""
    fan_out_max_children: int = FAN_OUT_MAX_CHILDREN.default
    """How many sub-jobs one ``fan_out`` call may start."""
    keys: Keys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", Keys(self.key_prefix))
        FLEET.check(self)
        # A job must outlive its wait: a longer approval time is cut to the retention.
        object.__setattr__(self, "approval_ttl_s", min(self.approval_ttl_s, self.retention_s))
        self._check_urls()

    def _check_urls(self) -> None:
        """Fail at construction on a URL no worker could use, naming the variable and the fix."""
        try:
            broker = url_kind(self.broker_url, BROKER_URL.name) if self.broker_url else None
            bus = url_kind(self.redis_url, REDIS_URL.name) if self.redis_url else None
            for url, name in ((self.broker_url, BROKER_URL.name), (self.redis_url, REDIS_URL.name)):
                if url and url_kind(url, name) == "sentinel":
                    parse_sentinel_url(url, name)
                elif url:
                    check_address(url, name)
        except UrlError as exc:
            raise SettingsError(str(exc)) from None
        if bus == "amqp":
            raise SettingsError(
                f"{REDIS_URL.name} must name a Redis (redis://, rediss:// or sentinel://): job "
                "events, traces and leases live there; put the amqp:// URL in "
                f"{BROKER_URL.name}"
            )
        if broker == "amqp" and bus is None:
            raise SettingsError(
                f"an amqp:// broker carries jobs only: set {REDIS_URL.name} to the Redis that "
                "holds job events, traces and leases, e.g. redis://127.0.0.1:6379/0"
            )

    @property
    def broker_kind(self) -> BrokerKind | None:
        """What carries the jobs: ``redis``, ``sentinel``, ``amqp``, or None (embedded)."""
        return url_kind(self.broker_url, BROKER_URL.name) if self.broker_url else None

    @property
    def bus_url(self) -> str | None:
        """The Redis URL of the job bus (the broker's unless ``redis_url`` is set)."""
        return self.redis_url or self.broker_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> FleetSettings:
        """Settings from the ``FLEET`` variables; keyword overrides win when not ``None``."""
        values = FLEET.read(os.environ if env is None else env)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)
