"""One contract for both spend ledgers and both rate limiters: in memory, and on real Redis (Lua).

The Redis cases use the real server on 127.0.0.1:6379 in a database of their own.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from dispatch.fleet.ratelimit import RedisRateLimiter
from dispatch.fleet.spend import RedisSpendLedger, budget_statuses, set_budget
from dispatch.keys import Keys
from rho_agent.budgets import Budget, BudgetStatus, CallEstimate, MemorySpendLedger, SpendLedger
from rho_agent.errors import BudgetExceeded
from rho_agent.ratelimits import MemoryRateLimiter, RateLimit, RateLimiter
from tests.integration.fleet import REDIS_HOST, claimed_db


@pytest.fixture(scope="module")
def redis_db() -> Iterator[int]:
    with claimed_db() as db:
        yield db


@dataclass
class Ledger:
    ledger: SpendLedger
    set_budget: Callable[[Budget], None]
    statuses: Callable[[], list[BudgetStatus]]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def ledger(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        memory = MemorySpendLedger()
        yield Ledger(memory, memory.set_budget, memory.statuses)
        return
    db = request.getfixturevalue("redis_db")
    keys = Keys(f"s{secrets.token_hex(3)}:")
    sync = redis.Redis.from_url(f"{REDIS_HOST}/{db}", decode_responses=True)
    client = aioredis.Redis.from_url(f"{REDIS_HOST}/{db}", decode_responses=True)
    yield Ledger(
        RedisSpendLedger(client, keys, retention_s=3600),
        lambda budget: set_budget(sync, keys, budget, retention_s=3600),
        lambda: budget_statuses(sync, keys),
    )
    await client.aclose()
    sync.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def limiter_for(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        yield lambda limits: MemoryRateLimiter(limits)
        return
    db = request.getfixturevalue("redis_db")
    keys = Keys(f"r{secrets.token_hex(3)}:")
    client = aioredis.Redis.from_url(f"{REDIS_HOST}/{db}", decode_responses=True)
    yield lambda limits: RedisRateLimiter(client, keys, limits)
    await client.aclose()


def by_scope(statuses: list[BudgetStatus]) -> dict[str, BudgetStatus]:
    return {status.budget.scope: status for status in statuses}


async def test_a_reservation_is_all_or_nothing_across_scopes(ledger: Ledger) -> None:
    ledger.set_budget(Budget("label:team=ops", max_cost_usd=1.0, window_s=86_400))
    own = [Budget("job:j1", max_tokens=1000), Budget("batch:b1", max_cost_usd=10.0)]
    guard = ledger.ledger.guard(["job:j1", "batch:b1", "label:team=ops", "fleet"], own=own)
    held = await guard.reserve(CallEstimate(100, 50, 0.4))
    statuses = by_scope(ledger.statuses())
    assert set(statuses) == {"job:j1", "batch:b1", "label:team=ops"}, "fleet has no budget"
    assert statuses["label:team=ops"].reserved_usd == pytest.approx(0.4)
    assert statuses["job:j1"].reserved_tokens == 150
    assert statuses["label:team=ops"].window_start == pytest.approx(time.time() // 86_400 * 86_400)
    with pytest.raises(BudgetExceeded) as refused:
        await guard.reserve(CallEstimate(100, 50, 0.7))
    assert refused.value.scope == "label:team=ops"
    assert str(refused.value) == (
        "budget label:team=ops exhausted: limit $1, spent $0 ($0.4 more reserved by calls in "
        "flight); the next call needs about $0.7"
    )
    after = by_scope(ledger.statuses())
    assert after["job:j1"].reserved_tokens == 150, "the refused call reserved nowhere"
    assert after["batch:b1"].reserved_usd == pytest.approx(0.4)
    await guard.settle(held, tokens=120, cost_usd=0.3)
    settled = by_scope(ledger.statuses())
    assert (settled["job:j1"].spent_tokens, settled["job:j1"].reserved_tokens) == (120, 0)
    assert settled["label:team=ops"].spent_usd == pytest.approx(0.3)
    assert settled["label:team=ops"].exhausted is not None


async def test_an_exhausted_scope_refuses_every_other_job_of_it(ledger: Ledger) -> None:
    own = [Budget("batch:b2", max_tokens=300)]
    first = ledger.ledger.guard(["batch:b2"], own=own)
    second = ledger.ledger.guard(["batch:b2", "job:other"], own=own)
    await first.reserve(CallEstimate(100, 100, 0))
    with pytest.raises(BudgetExceeded, match=r"limit 300 tokens, spent 0 .200 more reserved"):
        await second.reserve(CallEstimate(100, 100, 0))
    with pytest.raises(BudgetExceeded, match="batch:b2"):
        await second.reserve(CallEstimate(1, 1, 0))


async def test_a_raised_limit_opens_an_exhausted_window_again(ledger: Ledger) -> None:
    ledger.set_budget(Budget("label:x=y", max_tokens=100, window_s=86_400))
    guard = ledger.ledger.guard(["label:x=y"])
    held = await guard.reserve(CallEstimate(40, 40, 0))
    await guard.settle(held, tokens=80, cost_usd=0)
    with pytest.raises(BudgetExceeded):
        await guard.reserve(CallEstimate(20, 20, 0))
    ledger.set_budget(Budget("label:x=y", max_tokens=200, window_s=86_400))
    await guard.reserve(CallEstimate(20, 20, 0))
    (status,) = [s for s in ledger.statuses() if s.budget.scope == "label:x=y"]
    assert (status.spent_tokens, status.reserved_tokens, status.exhausted) == (80, 40, None)


async def test_a_windowed_budget_starts_again_in_the_next_window(ledger: Ledger) -> None:
    ledger.set_budget(Budget("fleet", max_tokens=10, window_s=1))
    guard = ledger.ledger.guard(["fleet"])
    deadline = time.time() // 1 + 1
    with pytest.raises(BudgetExceeded):
        await guard.reserve(CallEstimate(10, 10, 0))
    await asyncio.sleep(max(deadline - time.time(), 0) + 0.05)
    held = await guard.reserve(CallEstimate(5, 5, 0))
    await guard.settle(held, tokens=3, cost_usd=0)
    assert by_scope(ledger.statuses())["fleet"].spent_tokens == 3


async def test_scopes_without_a_budget_cost_nothing(ledger: Ledger) -> None:
    guard = ledger.ledger.guard(["fleet", "label:a=b"])
    held = await guard.reserve(CallEstimate(10**9, 10**9, 10**6))
    await guard.settle(held, tokens=1, cost_usd=1)
    assert held.counters == ()


async def test_requests_are_limited_in_any_window(limiter_for: Any) -> None:
    limiter: RateLimiter = limiter_for([RateLimit(model="m", requests=3, window_s=2, guard_s=0)])
    for _ in range(3):
        assert (await limiter.try_acquire("e", "m", 10)).wait_s == 0
    admission = await limiter.try_acquire("e", "m", 10)
    assert 1.9 <= admission.wait_s <= 2.0 and not admission.paused
    assert (await limiter.try_acquire("e", "n", 10)).wait_s == 0, "another model, another bucket"
    await asyncio.sleep(admission.wait_s + 0.01)
    assert (await limiter.try_acquire("e", "m", 10)).wait_s == 0


async def test_tokens_are_limited_in_any_window(limiter_for: Any) -> None:
    limiter: RateLimiter = limiter_for([RateLimit(tokens=100, window_s=2, guard_s=0)])
    assert (await limiter.try_acquire("e", "m", 60)).wait_s == 0
    await asyncio.sleep(0.4)
    assert (await limiter.try_acquire("e", "m", 30)).wait_s == 0
    wait = (await limiter.try_acquire("e", "m", 30)).wait_s
    assert 1.45 < wait < 1.65, "it waits for the first call to leave the window, not the second"
    assert (await limiter.try_acquire("e", "m", 10)).wait_s == 0


async def test_a_pause_holds_every_caller_and_batch_limits_count_apart(limiter_for: Any) -> None:
    limiter: RateLimiter = limiter_for([RateLimit(requests=100, window_s=60)])
    batch = limiter.with_limits([RateLimit(requests=1, window_s=60)], "batch:b")
    assert (await batch.try_acquire("e", "m", 1)).wait_s == 0
    assert (await batch.try_acquire("e", "m", 1)).wait_s > 59
    assert (await limiter.try_acquire("e", "m", 1)).wait_s == 0, "the fleet limit has room"
    await limiter.pause("e", "m", 0.5)
    admission = await batch.try_acquire("e", "m", 1)
    assert admission.paused and admission.wait_s > 59
    paused = await limiter.try_acquire("e", "m", 1)
    assert paused.paused and 0.3 < paused.wait_s <= 0.5
    await asyncio.sleep(0.55)
    assert (await limiter.try_acquire("e", "m", 1)).wait_s == 0
