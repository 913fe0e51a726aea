"""Worker settings, all from the environment (``WorkerSettings.from_env``).

``WORKER`` is the table of the variables only workers read (``dispatch.settings_table``: name,
field, parser, default, bounds, meaning); ``SETTINGS`` joins it with the fleet's and the heartbeat's
tables into every variable a worker reads, which docs/fleet.md shows (a test keeps the two in step).
"""

from __future__ import annotations

import functools
import os
import pkgutil
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dispatch.engine.endpoints import ALLOWED_BASE_URLS, default_base_urls
from dispatch.errors import SettingsError
from dispatch.settings import BROKER_URL, FLEET, FleetSettings
from dispatch.settings_table import Setting, Table, at_least, seconds, text, whole
from rho_agent.agent import Agent
from rho_agent.config import AgentConfig
from rho_agent.errors import ProfileError
from rho_agent.permissions import PermissionProfile, load_profile
from rho_agent.pricing import ModelPrice, load_prices
from rho_agent.ratelimits import RateLimit, load_rate_limits
from workers.health import HEALTH, WORKER_NAME, HealthSettings


def _time_limit(raw: str, name: str) -> float | None:
    limit = seconds(raw, name)
    return limit if limit > 0 else None


def _prices(raw: str, name: str) -> Mapping[str, ModelPrice]:
    return load_prices(raw, source=name)


def _rate_limits(raw: str, name: str) -> tuple[RateLimit, ...]:
    return tuple(load_rate_limits(raw, source=name))


# fmt: off
CONCURRENCY = Setting(
    "RHO_AGENT_WORKER_CONCURRENCY", "concurrency", 500,
    "jobs one worker process runs at once", whole, ok=at_least(1), must=">= 1",
)
MAX_PROFILE = Setting(
    "RHO_AGENT_MAX_PROFILE", "max_profile", "developer",
    "most permissive profile this worker runs", text,
)
JOB_TIME_LIMIT = Setting[float | None](
    "RHO_AGENT_JOB_TIME_LIMIT", "job_time_limit_s", 3600.0,
    "seconds a job may run before it is stopped (0: none)", _time_limit,
)
LEASE_TTL = Setting(
    "RHO_AGENT_LEASE_TTL", "lease_ttl_s", 20.0,
    "seconds a job's lease lasts without a heartbeat", seconds, ok=at_least(1), must=">= 1 s",
)
SWEEP_INTERVAL = Setting(
    "RHO_AGENT_SWEEP_INTERVAL", "sweep_interval_s", 5.0,
    "seconds between sweeps for jobs whose lease lapsed",
    seconds, ok=lambda value: value > 0, must="> 0 s",
)
MAX_ATTEMPTS = Setting(
    "RHO_AGENT_MAX_ATTEMPTS", "max_attempts", 3,
    "attempts before a job whose workers keep dying fails", whole, ok=at_least(1), must=">= 1",
)
VISIBILITY_TIMEOUT = Setting(
    "RHO_AGENT_VISIBILITY_TIMEOUT", "visibility_timeout_s", 3600,
    "Celery's redelivery time for unacked messages", whole,
)
AGENT_FACTORY = Setting(
    "RHO_AGENT_AGENT_FACTORY", "agent_factory", "",
    "`module:function` building the Agent from an AgentConfig (to add custom tools)",
    text, shown="(none)",
)
SHUTDOWN_GRACE = Setting(
    "RHO_AGENT_SHUTDOWN_GRACE", "shutdown_grace_s", 30.0,
    "seconds running jobs may finish on SIGTERM before they are handed back",
    seconds, ok=lambda value: value >= 0, must=">= 0 seconds",
    fix="0 hands running jobs back at once",
)
PRICES = Setting[Mapping[str, ModelPrice]](
    "RHO_AGENT_PRICES", "prices", MappingProxyType({}),
    "prices for models genai-prices lacks or misprices: a YAML/JSON file or inline JSON "
    "(see [prices.md](prices.md))",
    _prices, shown="(none)",
)
RATE_LIMITS = Setting[tuple[RateLimit, ...]](
    "RHO_AGENT_RATE_LIMITS", "rate_limits", (),
    "fleet-wide rate limits per model and endpoint: a YAML/JSON file or inline JSON "
    "(see [budgets.md](budgets.md))",
    _rate_limits, shown="(none)",
)
# fmt: on

WORKER = Table(
    (
        CONCURRENCY, MAX_PROFILE, JOB_TIME_LIMIT, LEASE_TTL, SWEEP_INTERVAL, MAX_ATTEMPTS,
        VISIBILITY_TIMEOUT, WORKER_NAME, AGENT_FACTORY, SHUTDOWN_GRACE, ALLOWED_BASE_URLS, PRICES,
        RATE_LIMITS,
    ),
    SettingsError,
)  # fmt: skip
"""The variables only workers read (the fleet's are ``dispatch.settings.FLEET``, the heartbeat's
``workers.health.HEALTH``)."""

SETTINGS: tuple[Setting[Any], ...] = tuple(
    {setting.name: setting for setting in (*FLEET, *WORKER, *HEALTH)}.values()
)
"""Every variable a worker reads, once each: docs/fleet.md shows them in this order."""


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process needs; ``from_env`` is the normal way to build it."""

    fleet: FleetSettings
    concurrency: int = CONCURRENCY.default
    max_profile: str = MAX_PROFILE.default
    job_time_limit_s: float | None = JOB_TIME_LIMIT.default
    lease_ttl_s: float = LEASE_TTL.default
    sweep_interval_s: float = SWEEP_INTERVAL.default
    max_attempts: int = MAX_ATTEMPTS.default
    visibility_timeout_s: int = VISIBILITY_TIMEOUT.default
    worker_name: str = WORKER_NAME.default
    agent_factory: str = AGENT_FACTORY.default
    shutdown_grace_s: float = SHUTDOWN_GRACE.default
    """How long running jobs may finish on SIGTERM before they are handed back (``shutdown.py``)."""
    allowed_base_urls: tuple[str, ...] = ALLOWED_BASE_URLS.default
    """Normalised; empty means the worker's own endpoint (``OPENAI_BASE_URL``, else OpenAI)."""
    prices: Mapping[str, ModelPrice] = field(default_factory=lambda: PRICES.default)
    """USD per million tokens by model; they win over the catalogue's and a job config's."""
    rate_limits: tuple[RateLimit, ...] = RATE_LIMITS.default
    """Requests and tokens per window, per model and endpoint, shared by every worker."""
    health: HealthSettings = field(default_factory=HealthSettings)
    """The heartbeat's interval and health file (``workers.health.HEALTH``)."""

    def __post_init__(self) -> None:
        if not self.fleet.broker_url:
            raise SettingsError(
                f"a worker needs a broker: set {BROKER_URL.name}, e.g. redis://127.0.0.1:6379/0"
            )
        WORKER.check(self)
        if not self.allowed_base_urls:
            object.__setattr__(self, "allowed_base_urls", _allowed_base_urls(os.environ))
        if not self.worker_name:
            object.__setattr__(self, "worker_name", f"{socket.gethostname()}-{os.getpid()}")
        self.ceiling()  # fail at start-up, not on the first job
        self.build_agent()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read every variable in ``SETTINGS`` (unset ones keep their defaults)."""
        env = os.environ if env is None else env
        values = WORKER.read(env)
        values["allowed_base_urls"] = _allowed_base_urls(env)
        return cls(FleetSettings.from_env(env), health=HealthSettings.from_env(env), **values)

    def ceiling(self) -> PermissionProfile:
        """The profile ceiling as a PermissionProfile (a built-in name or a YAML file)."""
        try:
            return load_profile(self.max_profile)
        except ProfileError as exc:
            raise SettingsError(f"{MAX_PROFILE.name}={self.max_profile!r}: {exc}") from None

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
                f"{AGENT_FACTORY.name}={self.agent_factory!r} cannot be imported ({exc}); "
                "use 'package.module:function'"
            ) from None
        if not callable(factory):
            raise SettingsError(f"{AGENT_FACTORY.name}={self.agent_factory!r} is not callable")
        return factory  # type: ignore[no-any-return]

    @property
    def lease_ms(self) -> int:
        return int(self.lease_ttl_s * 1000)


def _allowed_base_urls(env: Mapping[str, str]) -> tuple[str, ...]:
    """The listed endpoints, else the worker's own (``OPENAI_BASE_URL``, else OpenAI's)."""
    return WORKER.value(ALLOWED_BASE_URLS, env) or default_base_urls(env)


def _with_prices(
    factory: Callable[[AgentConfig], Agent], prices: dict[str, ModelPrice], config: AgentConfig
) -> Agent:
    agent = factory(config)
    agent.price_table = agent.price_table.with_prices(prices)
    return agent
