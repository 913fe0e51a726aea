"""Spending budgets: limits in USD and tokens that every model call reserves against first.

A budget belongs to a *scope*: ``job:<id>``, ``batch:<id>``, ``label:<key>=<value>``, ``fleet``
(or ``session:<id>`` for a plain SDK session). A call belongs to every scope of its job at once.
Before each model call the session reserves the call's estimate (``CallEstimate``) in all of them
in one atomic step; after the call it settles the real usage. A reservation that would take a
scope past its limit fails, the scope is marked exhausted (its other jobs stop before their next
call) and the job ends ``budget_exceeded``.

``SpendGuard`` is the seam the Session sees: ``MemorySpendLedger`` implements it in-process (plain
sessions, embedded dispatchers); ``dispatch.fleet.spend`` implements it on Redis for the fleet.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rho_agent.errors import BudgetExceeded, ConfigError

DEFAULT_OUTPUT_ALLOWANCE = 4096
"""Output tokens reserved for a call that sets no output cap (``extras.max_output_tokens``).

Not the model's whole output maximum: a small budget would then refuse every call.
"""

_WINDOWS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_WINDOW = re.compile(r"^(\d+)\s*([smhd]?)$")


@dataclass(frozen=True)
class Budget:
    """A limit on one scope: USD and/or tokens, over fixed windows of ``window_s`` or forever.

    Windows are aligned to the epoch (a ``1d`` window is a UTC calendar day).
    """

    scope: str
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    window_s: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scope, str) or not self.scope.strip():
            raise ConfigError("Budget.scope must name a scope, e.g. 'fleet' or 'label:team=ops'")
        if self.max_cost_usd is None and self.max_tokens is None:
            raise ConfigError(
                f"budget {self.scope!r} sets no limit; give max_cost_usd and/or max_tokens"
            )
        if self.max_cost_usd is not None and not (
            isinstance(self.max_cost_usd, int | float)
            and not isinstance(self.max_cost_usd, bool)
            and math.isfinite(self.max_cost_usd)
            and self.max_cost_usd >= 0
        ):
            raise ConfigError(
                f"budget {self.scope!r}: max_cost_usd must be USD >= 0, got {self.max_cost_usd!r}"
            )
        if self.max_tokens is not None and not (
            isinstance(self.max_tokens, int)
            and not isinstance(self.max_tokens, bool)
            and self.max_tokens >= 0
        ):
            raise ConfigError(
                f"budget {self.scope!r}: max_tokens must be a whole number >= 0, "
                f"got {self.max_tokens!r}"
            )
        if self.window_s is not None and (not isinstance(self.window_s, int) or self.window_s < 1):
            raise ConfigError(
                f"budget {self.scope!r}: window must be >= 1 s (e.g. '1d', '1h'), "
                f"got {self.window_s!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "max_cost_usd": self.max_cost_usd,
            "max_tokens": self.max_tokens,
            "window_s": self.window_s,
        }


def parse_window(value: str | int | None) -> int | None:
    """``'1d'``, ``'12h'``, ``'30m'``, ``'90s'`` or seconds; None or '' for no window."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _WINDOW.match(str(value).strip().lower())
    if not match or int(match.group(1)) < 1:
        raise ConfigError(
            f"budget window {value!r} is not a duration; use e.g. '1d', '12h', '30m' or '90s'"
        )
    return int(match.group(1)) * _WINDOWS[match.group(2) or "s"]


def job_budget(scope: str, extras: Mapping[str, Any]) -> Budget | None:
    """The per-job budget in a config's ``extras`` (``max_cost_usd``, ``max_tokens``), if any."""
    usd, tokens = extras.get("max_cost_usd"), extras.get("max_tokens")
    if usd is None and tokens is None:
        return None
    return Budget(scope, max_cost_usd=usd, max_tokens=tokens)


def label_scope(key: str, value: str) -> str:
    return f"label:{key}={value}"


@dataclass(frozen=True)
class CallEstimate:
    """What one model call is expected to use: input (tool definitions included) plus the output
    allowance, and its price."""

    input_tokens: int
    output_tokens: int
    cost_usd: float

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Reservation:
    """A reserved estimate and the scope windows (``counters``) it was reserved in."""

    estimate: CallEstimate
    counters: tuple[str, ...] = ()


@dataclass(frozen=True)
class BudgetStatus:
    """One scope's budget in its current window: limit, spent, reserved by calls in flight."""

    budget: Budget
    window_start: float | None
    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    exhausted: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.budget.to_dict(),
            "window_start": self.window_start,
            "spent_usd": self.spent_usd,
            "spent_tokens": self.spent_tokens,
            "reserved_usd": self.reserved_usd,
            "reserved_tokens": self.reserved_tokens,
            "exhausted": self.exhausted,
        }


class SpendGuard(Protocol):
    """What a Session calls around each model call. ``reserve`` raises ``BudgetExceeded``."""

    async def reserve(self, estimate: CallEstimate) -> Reservation: ...

    async def settle(self, reservation: Reservation, *, tokens: int, cost_usd: float) -> None: ...


class SpendLedger(Protocol):
    """Where budgets live; ``guard`` binds one job's scopes (``own``: budgets that travel with
    the job, such as its own and its batch's)."""

    def guard(self, scopes: Sequence[str], own: Sequence[Budget] = ()) -> SpendGuard: ...


def exceeded_message(
    scope: str, kind: str, limit: float, spent: float, reserved: float, need: float
) -> str:
    """The one wording of a refusal, used by every ledger so the fleet and embedded mode agree."""
    if kind == "usd":
        return (
            f"budget {scope} exhausted: limit ${limit:.6g}, spent ${spent:.6g} "
            f"(${reserved:.6g} more reserved by calls in flight); the next call needs about "
            f"${need:.6g}"
        )
    return (
        f"budget {scope} exhausted: limit {int(limit)} tokens, spent {int(spent)} "
        f"({int(reserved)} more reserved by calls in flight); the next call needs about "
        f"{int(need)}"
    )


@dataclass
class _Counter:
    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    exhausted: str | None = None


@dataclass
class MemorySpendLedger:
    """Budgets and their spend in this process (thread-safe): the SDK's and embedded mode's ledger.

    ``guard(scopes, own=...)`` is the SpendGuard of one job: ``own`` are budgets that travel with
    the job (its own, its batch's); the other scopes use budgets set with ``set_budget``.
    """

    clock: Any = time.time
    _budgets: dict[str, Budget] = field(default_factory=dict)
    _counters: dict[str, _Counter] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_budget(self, budget: Budget) -> None:
        """Set or replace a scope's budget; a window the old limits had exhausted opens again."""
        with self._lock:
            self._budgets[budget.scope] = budget
            counter = self._counters.get(self._counter_key(budget)[0])
            if counter is not None:
                counter.exhausted = None

    def guard(self, scopes: Sequence[str], own: Sequence[Budget] = ()) -> SpendGuard:
        with self._lock:
            for budget in own:
                self._budgets.setdefault(budget.scope, budget)
        return _MemoryGuard(self, tuple(dict.fromkeys([*(b.scope for b in own), *scopes])))

    def statuses(self) -> list[BudgetStatus]:
        """Every budget's state in its current window."""
        with self._lock:
            found = []
            for budget in self._budgets.values():
                key, start = self._counter_key(budget)
                counter = self._counters.get(key, _Counter())
                found.append(
                    BudgetStatus(
                        budget,
                        start,
                        counter.spent_usd,
                        counter.spent_tokens,
                        counter.reserved_usd,
                        counter.reserved_tokens,
                        counter.exhausted,
                    )
                )
            return found

    def _counter_key(self, budget: Budget) -> tuple[str, float | None]:
        if budget.window_s is None:
            return budget.scope, None
        bucket = int(self.clock() // budget.window_s)
        return f"{budget.scope}@{bucket}", float(bucket * budget.window_s)

    def reserve(self, scopes: Sequence[str], estimate: CallEstimate) -> Reservation:
        with self._lock:
            chosen: list[tuple[Budget, str, _Counter]] = []
            for scope in scopes:
                budget = self._budgets.get(scope)
                if budget is None:
                    continue
                key, _ = self._counter_key(budget)
                counter = self._counters.setdefault(key, _Counter())
                refusal = counter.exhausted or _refusal(budget, counter, estimate)
                if refusal is not None:
                    counter.exhausted = refusal
                    raise BudgetExceeded(refusal, scope=scope)
                chosen.append((budget, key, counter))
            for _, _, counter in chosen:
                counter.reserved_usd += estimate.cost_usd
                counter.reserved_tokens += estimate.tokens
            return Reservation(estimate, tuple(key for _, key, _ in chosen))

    def settle(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        with self._lock:
            estimate = reservation.estimate
            for key in reservation.counters:
                counter = self._counters.setdefault(key, _Counter())
                counter.reserved_usd -= estimate.cost_usd
                counter.reserved_tokens -= estimate.tokens
                counter.spent_usd += cost_usd
                counter.spent_tokens += tokens


def _refusal(budget: Budget, counter: _Counter, estimate: CallEstimate) -> str | None:
    """Why this estimate does not fit the budget's window (None when it fits)."""
    usd_limit, token_limit = budget.max_cost_usd, budget.max_tokens
    if usd_limit is not None and (
        counter.spent_usd + counter.reserved_usd + estimate.cost_usd > usd_limit
    ):
        return exceeded_message(
            budget.scope,
            "usd",
            usd_limit,
            counter.spent_usd,
            counter.reserved_usd,
            estimate.cost_usd,
        )
    if token_limit is not None and (
        counter.spent_tokens + counter.reserved_tokens + estimate.tokens > token_limit
    ):
        return exceeded_message(
            budget.scope,
            "tokens",
            token_limit,
            counter.spent_tokens,
            counter.reserved_tokens,
            estimate.tokens,
        )
    return None


@dataclass(frozen=True)
class _MemoryGuard:
    ledger: MemorySpendLedger
    scopes: tuple[str, ...]

    async def reserve(self, estimate: CallEstimate) -> Reservation:
        return self.ledger.reserve(self.scopes, estimate)

    async def settle(self, reservation: Reservation, *, tokens: int, cost_usd: float) -> None:
        self.ledger.settle(reservation, tokens, cost_usd)
