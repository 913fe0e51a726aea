"""Fleet settings shared by dispatchers and workers, read from the environment at the edges.

``FleetSettings.from_env()`` is called by the CLI, ``Dispatcher`` and the worker; nothing reads the
environment at import time. docs/fleet.md lists every variable in one table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatch.errors import SettingsError
from dispatch.keys import DEFAULT_PREFIX, Keys
from dispatch.urls import BrokerKind, UrlError, parse_sentinel_url, url_kind

BROKER_URL_ENV = "RHO_AGENT_BROKER_URL"
REDIS_URL_ENV = "RHO_AGENT_REDIS_URL"


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

    broker_url: str | None = None
    redis_url: str | None = None
    key_prefix: str = DEFAULT_PREFIX
    queue: str = "rho-agent"
    retention_s: int = 7 * 24 * 3600
    events_maxlen: int = 20_000
    embedded_concurrency: int = 64
    queued_lease_s: int = 600
    """How long a queued (or re-sent) job may wait for a worker to claim it before the sweeper
    sends it again: a lost message or a worker that died before claiming it costs this long."""
    approval_ttl_s: int = 24 * 3600
    """How long a job's tool calls wait for a person's decision before they are denied as
    expired (docs/approvals.md); cut to the retention, or the job would be gone first."""
    sentinel_master: str = "mymaster"
    redis_outage_s: float = 60.0
    fan_out_max_depth: int = 2
    """How deep ``fan_out`` may nest: a job's children are one level below it (0: no fan-out)."""
    fan_out_max_children: int = 50
    """How many sub-jobs one ``fan_out`` call may start."""
    keys: Keys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", Keys(self.key_prefix))
        if self.retention_s < 60:
            raise SettingsError(f"retention must be at least 60 s, got {self.retention_s}")
        if self.queued_lease_s < 1:
            raise SettingsError(
                f"the queued lease must be at least 1 s (RHO_AGENT_QUEUED_LEASE), got "
                f"{self.queued_lease_s}"
            )
        if self.approval_ttl_s < 1:
            raise SettingsError(
                f"the approval time must be at least 1 s (RHO_AGENT_APPROVAL_TTL), got "
                f"{self.approval_ttl_s}"
            )
        # A job must outlive its wait: a longer approval time is cut to the retention.
        object.__setattr__(self, "approval_ttl_s", min(self.approval_ttl_s, self.retention_s))
        if self.events_maxlen < 100:
            raise SettingsError(f"events maxlen must be at least 100, got {self.events_maxlen}")
        if self.embedded_concurrency < 1:
            raise SettingsError(
                f"embedded concurrency must be at least 1, got {self.embedded_concurrency}"
            )
        if self.redis_outage_s <= 0:
            raise SettingsError(
                f"RHO_AGENT_REDIS_OUTAGE_LIMIT must be > 0 s, got {self.redis_outage_s}"
            )
        if self.fan_out_max_depth < 0:
            raise SettingsError(
                f"RHO_AGENT_FAN_OUT_MAX_DEPTH must be 0 (no fan-out) or more, got "
                f"{self.fan_out_max_depth}"
            )
        if self.fan_out_max_children < 1:
            raise SettingsError(
                f"RHO_AGENT_FAN_OUT_MAX_CHILDREN must be at least 1, got "
                f"{self.fan_out_max_children}; set RHO_AGENT_FAN_OUT_MAX_DEPTH=0 to forbid fan-out"
            )
        if not self.queue.strip():
            raise SettingsError("the queue name must not be empty (RHO_AGENT_QUEUE)")
        self._check_urls()

    def _check_urls(self) -> None:
        """Fail at construction on a URL no worker could use, naming the variable and the fix."""
        try:
            broker = url_kind(self.broker_url, BROKER_URL_ENV) if self.broker_url else None
            bus = url_kind(self.redis_url, REDIS_URL_ENV) if self.redis_url else None
            for url, name in ((self.broker_url, BROKER_URL_ENV), (self.redis_url, REDIS_URL_ENV)):
                if url and url_kind(url, name) == "sentinel":
                    parse_sentinel_url(url, name)
        except UrlError as exc:
            raise SettingsError(str(exc)) from None
        if bus == "amqp":
            raise SettingsError(
                f"{REDIS_URL_ENV} must name a Redis (redis://, rediss:// or sentinel://): job "
                "events, traces and leases live there; put the amqp:// URL in "
                f"{BROKER_URL_ENV}"
            )
        if broker == "amqp" and bus is None:
            raise SettingsError(
                f"an amqp:// broker carries jobs only: set {REDIS_URL_ENV} to the Redis that "
                "holds job events, traces and leases, e.g. redis://127.0.0.1:6379/0"
            )
        if not self.sentinel_master.strip():
            raise SettingsError(
                "the Sentinel master name must not be empty (RHO_AGENT_SENTINEL_MASTER)"
            )

    @property
    def broker_kind(self) -> BrokerKind | None:
        """What carries the jobs: ``redis``, ``sentinel``, ``amqp``, or None (embedded)."""
        return url_kind(self.broker_url, BROKER_URL_ENV) if self.broker_url else None

    @property
    def bus_url(self) -> str | None:
        """The Redis URL of the job bus (the broker's unless ``redis_url`` is set)."""
        return self.redis_url or self.broker_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> FleetSettings:
        """Settings from ``RHO_AGENT_*`` variables; keyword overrides win when not ``None``."""
        values = fleet_values_from_env(os.environ if env is None else env)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


def fleet_values_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The FleetSettings fields set in ``env`` (used by the worker settings too)."""
    values: dict[str, Any] = {}
    text_vars = {
        BROKER_URL_ENV: "broker_url",
        REDIS_URL_ENV: "redis_url",
        "RHO_AGENT_KEY_PREFIX": "key_prefix",
        "RHO_AGENT_QUEUE": "queue",
        "RHO_AGENT_SENTINEL_MASTER": "sentinel_master",
    }
    for name, attr in text_vars.items():
        if env.get(name):
            values[attr] = env[name]
    int_vars = {
        "RHO_AGENT_RETENTION": "retention_s",
        "RHO_AGENT_EVENTS_MAXLEN": "events_maxlen",
        "RHO_AGENT_EMBEDDED_CONCURRENCY": "embedded_concurrency",
        "RHO_AGENT_QUEUED_LEASE": "queued_lease_s",
        "RHO_AGENT_APPROVAL_TTL": "approval_ttl_s",
        "RHO_AGENT_FAN_OUT_MAX_DEPTH": "fan_out_max_depth",
        "RHO_AGENT_FAN_OUT_MAX_CHILDREN": "fan_out_max_children",
    }
    for name, attr in int_vars.items():
        if env.get(name):
            values[attr] = env_int(env, name)
    if env.get("RHO_AGENT_REDIS_OUTAGE_LIMIT"):
        values["redis_outage_s"] = env_float(env, "RHO_AGENT_REDIS_OUTAGE_LIMIT")
    return values


def env_int(env: Mapping[str, str], name: str) -> int:
    """``env[name]`` as an int, or a SettingsError naming the variable."""
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None


def env_float(env: Mapping[str, str], name: str) -> float:
    """``env[name]`` as a float, or a SettingsError naming the variable."""
    raw = env[name]
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number of seconds") from None
