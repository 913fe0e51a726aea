"""Worker settings, all from the environment (``WorkerSettings.from_env``).

``SETTINGS`` is the one table of every variable a worker reads, its default and its meaning;
docs/fleet.md shows the same table (a test keeps the two in step).
"""

from __future__ import annotations

import functools
import os
import pkgutil
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dispatch.engine.endpoints import ALLOWED_BASE_URLS_ENV, allowed_base_urls
from dispatch.errors import SettingsError
from dispatch.settings import BROKER_URL_ENV, FleetSettings, env_float, env_int
from rho_agent.agent import Agent
from rho_agent.config import AgentConfig
from rho_agent.errors import ConfigError, ProfileError
from rho_agent.permissions import PermissionProfile, load_profile
from rho_agent.pricing import ModelPrice, load_prices
from rho_agent.ratelimits import RateLimit, load_rate_limits

SETTINGS: tuple[tuple[str, str, str], ...] = (
    (
        BROKER_URL_ENV,
        "(required)",
        "Celery broker: redis://, sentinel://host:26379;sentinel://... or amqp:// (RabbitMQ)",
    ),
    (
        "RHO_AGENT_REDIS_URL",
        "broker URL",
        "Redis (redis:// or sentinel://) for job events, traces and leases; required with amqp://",
    ),
    ("RHO_AGENT_SENTINEL_MASTER", "mymaster", "master name the Sentinels of sentinel:// URLs know"),
    ("RHO_AGENT_KEY_PREFIX", "rho:", "prefix of every Redis key the fleet writes"),
    ("RHO_AGENT_QUEUE", "rho-agent", "Celery queue the worker consumes and dispatchers send to"),
    ("RHO_AGENT_RETENTION", "604800", "seconds job metadata, events and traces are kept"),
    ("RHO_AGENT_EVENTS_MAXLEN", "20000", "events kept per job stream (older ones are trimmed)"),
    ("RHO_AGENT_WORKER_CONCURRENCY", "500", "jobs one worker process runs at once"),
    ("RHO_AGENT_MAX_PROFILE", "developer", "most permissive profile this worker runs"),
    ("RHO_AGENT_JOB_TIME_LIMIT", "3600", "seconds a job may run before it is stopped (0: none)"),
    ("RHO_AGENT_LEASE_TTL", "20", "seconds a job's lease lasts without a heartbeat"),
    ("RHO_AGENT_SWEEP_INTERVAL", "5", "seconds between sweeps for jobs whose lease lapsed"),
    ("RHO_AGENT_MAX_ATTEMPTS", "3", "attempts before a job whose workers keep dying fails"),
    (
        "RHO_AGENT_QUEUED_LEASE",
        "600",
        "seconds a queued or re-sent job may wait unclaimed before the sweeper sends it again",
    ),
    (
        "RHO_AGENT_APPROVAL_TTL",
        "86400",
        "seconds a job's tool calls wait for approval before they are denied as expired",
    ),
    ("RHO_AGENT_VISIBILITY_TIMEOUT", "3600", "Celery's redelivery time for unacked messages"),
    ("RHO_AGENT_WORKER_NAME", "host-pid", "name recorded on the jobs this worker runs"),
    (
        "RHO_AGENT_AGENT_FACTORY",
        "(none)",
        "`module:function` building the Agent from an AgentConfig (to add custom tools)",
    ),
    (
        "RHO_AGENT_SHUTDOWN_GRACE",
        "30",
        "seconds running jobs may finish on SIGTERM before they are handed back",
    ),
    (
        "RHO_AGENT_HEARTBEAT_INTERVAL",
        "5",
        "seconds between the worker's heartbeats (health file, Redis)",
    ),
    (
        "RHO_AGENT_HEALTH_DIR",
        "$TMPDIR/rho-agent-health",
        "where the worker's health file is written",
    ),
    (
        "RHO_AGENT_WORKER_RESTARTS",
        "0",
        "(set by `rho-agent fleet up`) times this worker was restarted after it exited",
    ),
    (
        "RHO_AGENT_REDIS_OUTAGE_LIMIT",
        "60",
        "seconds Redis may be unreachable (or a job's record missing) before giving up on it",
    ),
    (
        ALLOWED_BASE_URLS_ENV,
        "OPENAI_BASE_URL",
        "model endpoints (comma-separated) jobs may name; the API key goes only to these",
    ),
    (
        "RHO_AGENT_PRICES",
        "(none)",
        "prices for models genai-prices lacks or misprices: a YAML/JSON file or inline JSON",
    ),
    (
        "RHO_AGENT_RATE_LIMITS",
        "(none)",
        "fleet-wide rate limits per model and endpoint: a YAML/JSON file or inline JSON",
    ),
    (
        "RHO_AGENT_FAN_OUT_MAX_DEPTH",
        "2",
        "how deep `fan_out` sub-jobs may nest (0: the tool refuses every call)",
    ),
    ("RHO_AGENT_FAN_OUT_MAX_CHILDREN", "50", "sub-jobs one `fan_out` call may start"),
    ("RHO_AGENT_EMBEDDED_CONCURRENCY", "64", "(dispatchers only) jobs run at once in-process"),
)


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process needs; ``from_env`` is the normal way to build it."""

    fleet: FleetSettings
    concurrency: int = 500
    max_profile: str = "developer"
    job_time_limit_s: float | None = 3600.0
    lease_ttl_s: float = 20.0
    sweep_interval_s: float = 5.0
    max_attempts: int = 3
    visibility_timeout_s: int = 3600
    worker_name: str = ""
    agent_factory: str = ""
    allowed_base_urls: tuple[str, ...] = ()
    """Normalised; empty means the worker's own endpoint (``OPENAI_BASE_URL``, else OpenAI)."""
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    """USD per million tokens by model; they win over the catalogue's and a job config's."""
    rate_limits: tuple[RateLimit, ...] = ()
    """Requests and tokens per window, per model and endpoint, shared by every worker."""

    def __post_init__(self) -> None:
        if not self.fleet.broker_url:
            raise SettingsError(
                f"a worker needs a broker: set {BROKER_URL_ENV}, e.g. redis://127.0.0.1:6379/0"
            )
        if self.concurrency < 1:
            raise SettingsError(
                f"RHO_AGENT_WORKER_CONCURRENCY must be >= 1, got {self.concurrency}"
            )
        if self.lease_ttl_s < 1 or self.sweep_interval_s <= 0:
            raise SettingsError(
                "RHO_AGENT_LEASE_TTL must be >= 1 s and RHO_AGENT_SWEEP_INTERVAL > 0 s, got "
                f"{self.lease_ttl_s} and {self.sweep_interval_s}"
            )
        if self.max_attempts < 1:
            raise SettingsError(f"RHO_AGENT_MAX_ATTEMPTS must be >= 1, got {self.max_attempts}")
        if not self.allowed_base_urls:
            object.__setattr__(self, "allowed_base_urls", allowed_base_urls(os.environ))
        if not self.worker_name:
            object.__setattr__(self, "worker_name", f"{socket.gethostname()}-{os.getpid()}")
        self.ceiling()  # fail at start-up, not on the first job
        self.build_agent()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read every variable in ``SETTINGS`` (unset ones keep their defaults)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {"fleet": FleetSettings.from_env(env)}
        ints = {
            "RHO_AGENT_WORKER_CONCURRENCY": "concurrency",
            "RHO_AGENT_MAX_ATTEMPTS": "max_attempts",
            "RHO_AGENT_VISIBILITY_TIMEOUT": "visibility_timeout_s",
        }
        floats = {
            "RHO_AGENT_LEASE_TTL": "lease_ttl_s",
            "RHO_AGENT_SWEEP_INTERVAL": "sweep_interval_s",
        }
        for name, attr in ints.items():
            if env.get(name):
                values[attr] = env_int(env, name)
        for name, attr in floats.items():
            if env.get(name):
                values[attr] = env_float(env, name)
        if env.get("RHO_AGENT_JOB_TIME_LIMIT"):
            limit = env_float(env, "RHO_AGENT_JOB_TIME_LIMIT")
            values["job_time_limit_s"] = limit if limit > 0 else None
        if env.get("RHO_AGENT_MAX_PROFILE"):
            values["max_profile"] = env["RHO_AGENT_MAX_PROFILE"]
        for name, attr in (
            ("RHO_AGENT_WORKER_NAME", "worker_name"),
            ("RHO_AGENT_AGENT_FACTORY", "agent_factory"),
        ):
            if env.get(name):
                values[attr] = env[name]
        values["allowed_base_urls"] = allowed_base_urls(env)
        values.update(_priced_and_limited(env))
        return cls(**values)  # type: ignore[arg-type]

    def ceiling(self) -> PermissionProfile:
        """The profile ceiling as a PermissionProfile (a built-in name or a YAML file)."""
        try:
            return load_profile(self.max_profile)
        except ProfileError as exc:
            raise SettingsError(f"RHO_AGENT_MAX_PROFILE={self.max_profile!r}: {exc}") from None

    def build_agent(self) -> Callable[[AgentConfig], Agent]:
        """What turns a job's AgentConfig into an Agent, priced with this worker's ``prices``.

        The fleet's prices are applied last: whoever runs the workers decides what a model costs.
        """
        factory = self._factory()
        if not self.prices:
            return factory
        return functools.partial(_with_prices, factory, dict(self.prices))

    def _factory(self) -> Callable[[AgentConfig], Agent]:
        """``Agent`` unless ``agent_factory`` names another builder."""
        if not self.agent_factory:
            return Agent
        try:
            factory = pkgutil.resolve_name(self.agent_factory)
        except (ImportError, AttributeError, ValueError) as exc:
            raise SettingsError(
                f"RHO_AGENT_AGENT_FACTORY={self.agent_factory!r} cannot be imported ({exc}); "
                "use 'package.module:function'"
            ) from None
        if not callable(factory):
            raise SettingsError(f"RHO_AGENT_AGENT_FACTORY={self.agent_factory!r} is not callable")
        return factory  # type: ignore[no-any-return]

    @property
    def lease_ms(self) -> int:
        return int(self.lease_ttl_s * 1000)


def _priced_and_limited(env: Mapping[str, str]) -> dict[str, object]:
    """``prices`` and ``rate_limits`` from their variables (files or inline JSON)."""
    values: dict[str, object] = {}
    try:
        if env.get("RHO_AGENT_PRICES"):
            values["prices"] = load_prices(env["RHO_AGENT_PRICES"], source="RHO_AGENT_PRICES")
        if env.get("RHO_AGENT_RATE_LIMITS"):
            values["rate_limits"] = tuple(
                load_rate_limits(env["RHO_AGENT_RATE_LIMITS"], source="RHO_AGENT_RATE_LIMITS")
            )
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    return values


def _with_prices(
    factory: Callable[[AgentConfig], Agent], prices: dict[str, ModelPrice], config: AgentConfig
) -> Agent:
    agent = factory(config)
    agent.price_table = agent.price_table.with_prices(prices)
    return agent
