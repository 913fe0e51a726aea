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

BROKER_URL_ENV = "RHO_AGENT_BROKER_URL"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class FleetSettings:
    """Where the fleet lives and how long it keeps what jobs write.

    ``broker_url`` ``None`` means embedded mode: jobs run in this process, no Redis needed.
    ``redis_url`` holds the job bus (events, traces, metadata) and defaults to the broker URL.
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
        if self.events_maxlen < 100:
            raise SettingsError(f"events maxlen must be at least 100, got {self.events_maxlen}")
        if self.embedded_concurrency < 1:
            raise SettingsError(
                f"embedded concurrency must be at least 1, got {self.embedded_concurrency}"
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
        for what, url in (("broker URL", self.broker_url), ("Redis URL", self.redis_url)):
            _check_redis_url(what, url)

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


def _check_redis_url(what: str, url: str | None) -> None:
    """The fleet speaks Redis only: an ``http://`` or ``amqp://`` URL is a usage error, said
    before anything connects (the URL is not echoed: it may hold a password)."""
    if url is not None and not url.startswith(REDIS_SCHEMES):
        scheme = url.split("://", 1)[0] if "://" in url else "no scheme"
        raise SettingsError(
            f"the {what} must be a Redis URL starting with redis://, rediss:// or unix:// "
            f"(got {scheme}); for example --broker redis://127.0.0.1:6379/0"
        )


def fleet_values_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The FleetSettings fields set in ``env`` (used by the worker settings too)."""
    values: dict[str, Any] = {}
    text_vars = {
        BROKER_URL_ENV: "broker_url",
        "RHO_AGENT_REDIS_URL": "redis_url",
        "RHO_AGENT_KEY_PREFIX": "key_prefix",
        "RHO_AGENT_QUEUE": "queue",
    }
    for name, attr in text_vars.items():
        if env.get(name):
            values[attr] = env[name]
    int_vars = {
        "RHO_AGENT_RETENTION": "retention_s",
        "RHO_AGENT_EVENTS_MAXLEN": "events_maxlen",
        "RHO_AGENT_EMBEDDED_CONCURRENCY": "embedded_concurrency",
        "RHO_AGENT_QUEUED_LEASE": "queued_lease_s",
        "RHO_AGENT_FAN_OUT_MAX_DEPTH": "fan_out_max_depth",
        "RHO_AGENT_FAN_OUT_MAX_CHILDREN": "fan_out_max_children",
    }
    for name, attr in int_vars.items():
        if env.get(name):
            values[attr] = env_int(env, name)
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
