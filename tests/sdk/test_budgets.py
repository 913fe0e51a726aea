"""Budgets and rate limits in the SDK: reserve before each call, settle after, wait for limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from rho_agent import ConfigError
from rho_agent.budgets import Budget, CallEstimate, MemorySpendLedger, parse_window
from rho_agent.errors import BudgetExceeded
from rho_agent.pricing import load_prices
from rho_agent.ratelimits import (
    MemoryRateLimiter,
    RateLimit,
    load_rate_limits,
    rate_limits_from_data,
)
from rho_agent.testing import ScriptedModelServer, ScriptedUsage, error, text, tool_call
from tests.sdk.helpers import make_session

PRICES = {"priced": {"input": 1_000_000.0, "output": 1_000_000.0}}
"""$1 a token, so budgets in the tests read as token counts."""


def _usage(prompt: int, completion: int) -> ScriptedUsage:
    return ScriptedUsage(prompt_tokens=prompt, completion_tokens=completion)


async def test_a_session_budget_stops_the_run_before_the_call_that_would_pass_it(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: tool_call("list", {"path": "."}, usage=_usage(400, 100))
    session = make_session(
        model_server,
        tmp_path,
        model="priced",
        extras={"prices": PRICES, "max_cost_usd": 5_000, "max_output_tokens": 20},
    )
    session.auto_compact = False
    result = await session.run("go")
    assert result.status == "budget_exceeded"
    message = str(result.events[-1].content)
    assert f"budget session:{session.state.session_id} exhausted: limit $5000" in message
    spent = result.usage["cost_usd"]
    assert 2_500 < spent <= 5_000, "a reservation never lets the spend pass the limit"
    assert f"spent ${spent:.6g}" in message
    assert len(model_server.requests) == spent // 500
    assert model_server.requests[0].body["max_completion_tokens"] == 20
    assert session.state.status == "budget_exceeded"
    assert session.state.last_error is not None


async def test_reservations_count_tool_definitions_and_the_output_allowance(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: text("hi", usage=_usage(5, 1))
    ledger = MemorySpendLedger()
    ledger.set_budget(Budget("team", max_tokens=1_000_000))
    session = make_session(model_server, tmp_path, profile="developer")
    session.spend_guard = ledger.guard(["team"])
    session.output_allowance = 1234
    seen: list[CallEstimate] = []
    original = ledger.reserve

    def spy(scopes: Any, estimate: CallEstimate) -> Any:
        seen.append(estimate)
        return original(scopes, estimate)

    ledger.reserve = spy  # type: ignore[method-assign]
    await session.run("hello")
    (estimate,) = seen
    assert estimate.output_tokens == 1234
    from rho_agent import compaction

    tools = session.agent.registry.schemas()
    assert tools, "the developer profile offers tools"
    with_tools = compaction.count_tokens(model_server.requests[0].body["messages"], tools)
    assert estimate.input_tokens == with_tools
    (status,) = ledger.statuses()
    assert status.spent_tokens == 6 and status.reserved_tokens == 0


def test_a_refusal_exhausts_the_scope_for_every_later_call() -> None:
    ledger = MemorySpendLedger()
    ledger.set_budget(Budget("batch:b", max_cost_usd=1.0))
    first, second = ledger.guard(["batch:b"]), ledger.guard(["batch:b", "other"])
    held = asyncio.run(first.reserve(CallEstimate(10, 10, 0.6)))
    with pytest.raises(BudgetExceeded, match=r"budget batch:b exhausted: limit \$1, spent \$0"):
        asyncio.run(second.reserve(CallEstimate(10, 10, 0.6)))
    asyncio.run(first.settle(held, tokens=5, cost_usd=0.1))
    with pytest.raises(BudgetExceeded) as caught:
        asyncio.run(second.reserve(CallEstimate(1, 1, 0.01)))
    assert caught.value.scope == "batch:b"
    (status,) = ledger.statuses()
    assert status.spent_usd == pytest.approx(0.1) and status.reserved_usd == pytest.approx(0)


def test_a_windowed_budget_starts_again_in_the_next_window() -> None:
    now = [86_400.0 * 3 + 10]
    ledger = MemorySpendLedger(clock=lambda: now[0])
    ledger.set_budget(Budget("fleet", max_tokens=100, window_s=parse_window("1d")))
    guard = ledger.guard(["fleet"])
    asyncio.run(
        guard.settle(asyncio.run(guard.reserve(CallEstimate(60, 30, 0))), tokens=90, cost_usd=0)
    )
    with pytest.raises(BudgetExceeded):
        asyncio.run(guard.reserve(CallEstimate(10, 10, 0)))
    now[0] += 86_400
    asyncio.run(guard.reserve(CallEstimate(10, 10, 0)))
    assert ledger.statuses()[0].window_start == 86_400.0 * 4


@pytest.mark.parametrize(
    ("data", "match"),
    [({"scope": "x"}, "sets no limit"), ({"scope": "x", "max_cost_usd": -1}, "max_cost_usd")],
)
def test_a_bad_budget_names_the_field(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Budget(**data)


def test_windows_parse_and_bad_ones_say_how() -> None:
    assert parse_window("1d") == 86_400 and parse_window("90") == 90 and parse_window(None) is None
    with pytest.raises(ConfigError, match=r"e\.g\. '1d'"):
        parse_window("daily")


async def test_a_rate_limit_spaces_calls_within_any_window() -> None:
    now = [100.0]
    limiter = MemoryRateLimiter(
        [RateLimit(model="m", requests=2, window_s=10)], clock=lambda: now[0]
    )
    assert (await limiter.try_acquire("e", "m", 1)).wait_s == 0
    now[0] += 1
    assert (await limiter.try_acquire("e", "m", 1)).wait_s == 0
    wait = (await limiter.try_acquire("e", "m", 1)).wait_s
    assert wait == pytest.approx(9 + 0.5), "the oldest call holds its place for the window + 0.5 s"
    assert (await limiter.try_acquire("e", "other", 1)).wait_s == 0, "limits are per model"
    now[0] += wait
    assert (await limiter.try_acquire("e", "m", 1)).wait_s == 0
    await limiter.pause("e", "m", 30)
    admission = await limiter.try_acquire("e", "m", 1)
    assert admission.paused and admission.wait_s >= 30


async def test_a_429_pauses_the_shared_limit_and_the_call_is_tried_again(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    answers = [error(429, "slow down", headers={"retry-after-ms": "300"}), text("ok")]
    model_server.responder = lambda body: answers.pop(0)
    session = make_session(model_server, tmp_path)
    limiter = MemoryRateLimiter([RateLimit(requests=100, window_s=60)])
    session.rate_limiter = limiter
    waits: list[str | None] = []
    session.wait_observer = waits.append
    started = asyncio.get_running_loop().time()
    result = await session.run("hi")
    assert result.status == "completed" and result.text == "ok"
    assert asyncio.get_running_loop().time() - started >= 0.3
    assert len(model_server.requests) == 2, "the client's own retries are off: one 429, one retry"
    assert waits and waits[0] is not None and "waiting for rate limit" in waits[0]
    assert waits[-1] is None


def test_rate_limit_settings_are_checked() -> None:
    (limit,) = rate_limits_from_data(
        [{"model": "gpt-5-mini", "requests": 30, "window_s": 6}], source="X"
    )
    assert limit.requests == 30 and limit.window_s == 6 and limit.endpoint == "*"
    with pytest.raises(ConfigError, match=r"X\[0\] sets neither"):
        rate_limits_from_data([{"model": "m"}], source="X")
    with pytest.raises(ConfigError, match=r"X\[0\] is not a valid rate limit"):
        rate_limits_from_data([{"requests": 0}], source="X")
    for field in ("window_s", "guard_s"):  # an endless window: calls past the limit never go
        with pytest.raises(ConfigError, match=rf"X\[0\] is not a valid rate limit \({field}"):
            rate_limits_from_data([{"requests": 1, field: float("inf")}], source="X")


def test_a_limits_or_prices_file_that_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    latin1 = tmp_path / "limits.yaml"
    latin1.write_bytes("- {model: caf\u00e9, requests: 5}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as raised:
        load_rate_limits(str(latin1), source="RHO_AGENT_RATE_LIMITS")
    assert "RHO_AGENT_RATE_LIMITS" in str(raised.value)
    with pytest.raises(ConfigError, match=r"RHO_AGENT_PRICES.*directory"):
        load_prices(str(tmp_path), source="RHO_AGENT_PRICES")


@pytest.mark.parametrize("name", ["max_output_tokens", "output_allowance", "max_cost_usd"])
def test_bad_budget_extras_fail_when_the_session_is_made(
    model_server: ScriptedModelServer, tmp_path: Path, name: str
) -> None:
    with pytest.raises(ConfigError, match=name):
        make_session(model_server, tmp_path, extras={name: "lots"})


async def test_a_reservation_landing_after_its_caller_was_cancelled_is_released() -> None:
    ledger = MemorySpendLedger()
    ledger.set_budget(Budget("b", max_tokens=1_000))
    inner = ledger.guard(["b"])
    gate = asyncio.Event()

    class SlowGuard:
        async def reserve(self, estimate: CallEstimate) -> Any:
            await gate.wait()
            return await inner.reserve(estimate)

        async def settle(self, reservation: Any, *, tokens: int, cost_usd: float) -> None:
            await inner.settle(reservation, tokens=tokens, cost_usd=cost_usd)

    from rho_agent._loop.spend_step import _reserve

    caller = asyncio.create_task(_reserve(SlowGuard(), CallEstimate(100, 100, 0)))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    (status,) = ledger.statuses()
    assert (status.reserved_tokens, status.spent_tokens) == (0, 0)
