"""Rate limits per model endpoint and model: requests and tokens per window, shared by callers.

A limit admits at most ``requests`` calls and ``tokens`` tokens (each call's estimate: input with
tool definitions plus the output allowance) in *any* window of ``window_s`` seconds, counted when
a call is admitted. Each admitted call holds its place for the window plus ``guard_s`` (by default
1% of the window, at least 0.5 s), so the time between admission and the request reaching the
provider (a busy event loop, a new connection) cannot put one call too many into a window as the
provider measures it. A call
that does not fit waits (it never fails); a 429 with ``Retry-After`` pauses the limit for every
caller sharing it.

``RateLimiter`` is the seam the Session sees: ``MemoryRateLimiter`` shares limits within one
process; ``dispatch.fleet.ratelimit`` shares them across the fleet through Redis (one Lua step).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rho_agent._data_option import load_data_option, validation_problems
from rho_agent.errors import ConfigError

GUARD_MIN_S = 0.5
"""The least time an admitted call holds its place beyond the window (see ``RateLimit.guard``):
measured here, a loaded worker took up to 0.24 s from admission to the provider."""
DEFAULT_ENDPOINT = "default"
"""The endpoint name of calls that set no ``base_url`` (the provider's own API)."""


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` calls and ``tokens`` tokens in any ``window_s`` seconds.

    ``model`` ``*`` matches every model; ``endpoint`` ``*`` every endpoint (``base_url``).
    """

    model: str = "*"
    endpoint: str = "*"
    requests: int | None = None
    tokens: int | None = None
    window_s: float = 60.0
    guard_s: float | None = None
    namespace: str = ""
    """Counts this limit apart from the same limit elsewhere (a batch's own limits)."""

    @property
    def guard(self) -> float:
        """Seconds an admitted call holds its place beyond the window (1% of it, >= 0.5 s)."""
        return self.guard_s if self.guard_s is not None else max(GUARD_MIN_S, self.window_s / 100)

    def matches(self, endpoint: str, model: str) -> bool:
        return self.model in ("*", model) and self.endpoint in ("*", endpoint)

    def bucket(self, endpoint: str, model: str) -> str:
        """The name of the shared bucket a call lands in (one per endpoint and model)."""
        name = f"{endpoint}|{model}|{self.requests}r|{self.tokens}t|{self.window_s:g}s"
        return f"{self.namespace}|{name}" if self.namespace else name


class _RateLimitData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "*"
    endpoint: str = "*"
    requests: int | None = Field(default=None, ge=1)
    tokens: int | None = Field(default=None, ge=1)
    window_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    guard_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)


def rate_limits_from_data(data: object, *, source: str) -> list[RateLimit]:
    """A list of ``{model, endpoint, requests, tokens, window_s}`` mappings as RateLimits."""
    if isinstance(data, Mapping):
        data = data.get("rate_limits", [data])
    if not isinstance(data, list):
        raise ConfigError(
            f"{source} must be a list of limits, e.g. "
            '[{"model": "gpt-5-mini", "requests": 500, "tokens": 200000}]'
        )
    limits = []
    for index, entry in enumerate(data):
        try:
            parsed = _RateLimitData.model_validate(entry)
        except ValidationError as exc:
            problems = validation_problems(exc, "limit")
            raise ConfigError(f"{source}[{index}] is not a valid rate limit ({problems})") from None
        if parsed.requests is None and parsed.tokens is None:
            raise ConfigError(f"{source}[{index}] sets neither requests nor tokens")
        limits.append(RateLimit(**parsed.model_dump()))
    return limits


def load_rate_limits(value: str, *, source: str) -> list[RateLimit]:
    """Rate limits from inline JSON or from a YAML/JSON file path."""
    data, where = load_data_option(value, source=source, what="limits", inline=("[", "{"))
    return rate_limits_from_data(data, source=where)


@dataclass(frozen=True)
class Admission:
    """``wait_s`` 0: admitted. Otherwise wait that long and ask again (``paused``: by a 429)."""

    wait_s: float
    paused: bool = False


class RateLimiter(Protocol):
    """What a Session calls before each model call, and after a 429."""

    def limits_for(self, endpoint: str, model: str) -> Sequence[RateLimit]: ...

    def with_limits(self, extra: Sequence[RateLimit], namespace: str) -> RateLimiter: ...

    async def try_acquire(self, endpoint: str, model: str, tokens: int) -> Admission: ...

    async def pause(self, endpoint: str, model: str, seconds: float) -> None: ...


@dataclass
class MemoryRateLimiter:
    """Rate limits shared by the sessions of one process (thread-safe).

    ``with_limits`` adds a batch's own limits, counted apart under ``namespace``.
    """

    limits: Sequence[RateLimit] = ()
    clock: Any = time.monotonic
    _logs: dict[str, collections.deque[tuple[float, int]]] = field(default_factory=dict)
    _paused: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def limits_for(self, endpoint: str, model: str) -> Sequence[RateLimit]:
        return [limit for limit in self.limits if limit.matches(endpoint, model)]

    def with_limits(self, extra: Sequence[RateLimit], namespace: str) -> MemoryRateLimiter:
        scoped = [dataclasses.replace(limit, namespace=namespace) for limit in extra]
        return MemoryRateLimiter(
            [*self.limits, *scoped], self.clock, self._logs, self._paused, self._lock
        )

    async def try_acquire(self, endpoint: str, model: str, tokens: int) -> Admission:
        limits = self.limits_for(endpoint, model)
        with self._lock:
            now = self.clock()
            wait, paused = 0.0, False
            for limit in limits:
                name = limit.bucket(endpoint, model)
                until = self._paused.get(name, 0.0)
                if until > now:
                    wait, paused = max(wait, until - now), True
                log = self._logs.setdefault(name, collections.deque())
                wait = max(wait, _log_wait(log, limit, now, tokens))
            if wait > 0:
                return Admission(wait, paused)
            for limit in limits:
                self._logs[limit.bucket(endpoint, model)].append((now, tokens))
            return Admission(0.0)

    async def pause(self, endpoint: str, model: str, seconds: float) -> None:
        with self._lock:
            until = self.clock() + seconds
            for limit in self.limits_for(endpoint, model):
                name = limit.bucket(endpoint, model)
                self._paused[name] = max(self._paused.get(name, 0.0), until)


def _log_wait(
    log: collections.deque[tuple[float, int]], limit: RateLimit, now: float, tokens: int
) -> float:
    """Seconds until a call of ``tokens`` fits the sliding window held in ``log`` (0: now)."""
    span = limit.window_s + limit.guard
    while log and log[0][0] <= now - span:
        log.popleft()
    wait = 0.0
    if limit.requests is not None and len(log) >= limit.requests:
        wait = log[len(log) - limit.requests][0] + span - now
    if limit.tokens is not None and log:
        held = sum(used for _, used in log)
        for admitted, used in log:
            if held + tokens <= limit.tokens:
                break
            held -= used
            wait = max(wait, admitted + span - now)
    return max(wait, 0.0)
