"""Budgets on Redis: the fleet's SpendGuard, and reading and setting budgets.

A reservation is one Lua step (``lua.RESERVE``) across every scope of the job, a settlement one
more (``lua.SETTLE``): two round trips per model call, shared with the other calls of the loop
(``ScriptBatcher``). Budgets that travel with a job (its own,
its batch's) are passed to the script; label and fleet budgets are stored in Redis with
``set_budget`` (``rho-agent budgets set``) and read by the script. Spend counters use the Redis
server's clock for windows, so workers' clocks do not matter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dispatch.fleet import lua
from dispatch.fleet.script_batch import ScriptBatcher
from dispatch.keys import Keys
from rho_agent.budgets import (
    Budget,
    BudgetStatus,
    CallEstimate,
    Reservation,
    SpendGuard,
    exceeded_message,
)
from rho_agent.errors import BudgetExceeded


def refusal_message(scope: str, encoded: str) -> str:
    """The refusal the script stored (JSON numbers), in the words every ledger uses."""
    data = json.loads(encoded)
    return exceeded_message(
        scope, data["kind"], data["limit"], data["spent"], data["reserved"], data["need"]
    )


class RedisSpendLedger:
    """Budgets shared by the whole fleet; ``guard`` gives one job's SpendGuard."""

    def __init__(
        self, client: Any, keys: Keys, *, retention_s: int, batcher: ScriptBatcher | None = None
    ) -> None:
        self._reserve = client.register_script(lua.RESERVE)
        self._settle = client.register_script(lua.SETTLE)
        self._batcher = batcher or ScriptBatcher(client)
        self._keys = keys
        self._retention = retention_s

    def guard(self, scopes: Sequence[str], own: Sequence[Budget] = ()) -> SpendGuard:
        args: list[str] = []
        owned = {budget.scope for budget in own}
        for budget in own:
            args += [budget.scope, *_limits(budget), "1"]
        for scope in dict.fromkeys(scopes):
            if scope not in owned:
                args += [scope, "", "", "", "0"]
        return _RedisGuard(self, args)

    async def reserve(self, args: list[str], estimate: CallEstimate) -> Reservation:
        reply = await self._batcher.call(
            self._reserve,
            [self._keys.budgets()],
            [
                self._keys.budget_prefix(),
                repr(estimate.cost_usd),
                str(estimate.tokens),
                str(self._retention),
                *args,
            ],
        )
        if reply[0] == "over":
            raise BudgetExceeded(refusal_message(reply[1], reply[2]), scope=reply[1])
        return Reservation(estimate, tuple(reply[1:]))

    async def settle(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        if not reservation.counters:
            return
        estimate = reservation.estimate
        await self._batcher.call(
            self._settle,
            list(reservation.counters),
            [repr(estimate.cost_usd), str(estimate.tokens), repr(cost_usd), str(tokens)],
        )


class _RedisGuard:
    def __init__(self, ledger: RedisSpendLedger, args: list[str]) -> None:
        self._ledger = ledger
        self._args = args

    async def reserve(self, estimate: CallEstimate) -> Reservation:
        return await self._ledger.reserve(self._args, estimate)

    async def settle(self, reservation: Reservation, *, tokens: int, cost_usd: float) -> None:
        await self._ledger.settle(reservation, tokens, cost_usd)


def _limits(budget: Budget) -> list[str]:
    return [
        "" if budget.max_cost_usd is None else repr(float(budget.max_cost_usd)),
        "" if budget.max_tokens is None else str(budget.max_tokens),
        "" if budget.window_s is None else str(budget.window_s),
    ]


# -- reading and setting budgets (sync: the CLI and the Dispatcher's caller thread) ---------------


def set_budget(client: Any, keys: Keys, budget: Budget, *, retention_s: int) -> None:
    """Store a label or fleet budget, replacing its limits. The spend so far is kept; a window
    the old limits had exhausted opens again (the new limits decide the next call)."""
    usd, tokens, window = _limits(budget)
    key = keys.budget(budget.scope)
    seconds, _ = client.time()
    bucket = "all" if budget.window_s is None else str(int(seconds) // budget.window_s)
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, mapping={"max_cost_usd": usd, "max_tokens": tokens, "window_s": window})
    pipe.hdel(f"{key}@{bucket}", "exhausted")
    pipe.persist(key)
    pipe.zadd(keys.budgets(), {budget.scope: 0}, nx=True)
    pipe.expire(keys.budgets(), max(retention_s, 86_400 * 366))
    pipe.execute()


def budget_statuses(client: Any, keys: Keys, limit: int = 1000) -> list[BudgetStatus]:
    """Every budget scope used or set recently, with its spend in the current window."""
    scopes = list(client.zrevrange(keys.budgets(), 0, limit - 1))
    seconds, micros = client.time()
    now_s = float(seconds) + float(micros) / 1e6
    pipe = client.pipeline(transaction=False)
    for scope in scopes:
        pipe.hgetall(keys.budget(scope))
    definitions = pipe.execute()
    found: list[tuple[Budget, str, float | None]] = []
    for scope, fields in zip(scopes, definitions, strict=True):
        budget = _budget_from_fields(scope, fields)
        if budget is None:
            continue
        counter, start = keys.budget(scope) + "@all", None
        if budget.window_s is not None:
            bucket = int(now_s // budget.window_s)
            counter, start = f"{keys.budget(scope)}@{bucket}", float(bucket * budget.window_s)
        found.append((budget, counter, start))
    pipe = client.pipeline(transaction=False)
    for _, counter, _ in found:
        pipe.hgetall(counter)
    statuses = []
    for (budget, _, start), counts in zip(found, pipe.execute(), strict=True):
        exhausted = counts.get("exhausted")
        statuses.append(
            BudgetStatus(
                budget,
                start,
                spent_usd=float(counts.get("spent_usd") or 0),
                spent_tokens=int(counts.get("spent_tokens") or 0),
                reserved_usd=max(float(counts.get("reserved_usd") or 0), 0.0),
                reserved_tokens=max(int(counts.get("reserved_tokens") or 0), 0),
                exhausted=refusal_message(budget.scope, exhausted) if exhausted else None,
            )
        )
    return statuses


def _budget_from_fields(scope: str, fields: dict[str, str]) -> Budget | None:
    if not fields:
        return None
    names = ("max_cost_usd", "max_tokens", "window_s")
    usd, tokens, window = (fields.get(name) or "" for name in names)
    return Budget(
        scope,
        max_cost_usd=float(usd) if usd else None,
        max_tokens=int(tokens) if tokens else None,
        window_s=int(window) if window else None,
    )
