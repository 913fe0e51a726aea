"""Every model call of a session goes through here: budget reservation, rate limits, settlement.

``GuardedClient`` wraps the session's ModelClient. Per call: reserve the priced estimate in every
budget scope (``SpendGuard``, one step), wait for the shared rate limits (``RateLimiter``; a 429
pauses them for everyone and the call is tried again), call the model, settle the real usage.
With neither a guard nor a limiter the call goes straight to the client.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import replace
from typing import TYPE_CHECKING

from rho_agent import compaction
from rho_agent.budgets import CallEstimate, Reservation, SpendGuard
from rho_agent.errors import ModelError
from rho_agent.model.base import ModelClient, ModelRequest, ModelTurn, TextCallback
from rho_agent.ratelimits import DEFAULT_ENDPOINT, RateLimiter

if TYPE_CHECKING:
    from rho_agent.session import Session

logger = logging.getLogger("rho_agent.session")

MAX_RATE_LIMITED_TRIES = 20
"""429 answers one call may meet before the run fails: the limits are set too high for the
provider (each 429 paused every caller for its ``Retry-After`` first)."""
DEFAULT_PAUSE_S = 5.0
"""How long a 429 without ``Retry-After`` pauses the shared limit."""
_SERVER_RETRIES = 2
"""Retries of a 408/409/5xx answer for a rate-limited call (its client's own are off)."""
_LONGEST_SLEEP_S = 1.0
"""A waiting call looks again at least this often, so a cancel is seen promptly."""


class GuardedClient:
    """A ModelClient that applies the session's spend guard and rate limiter to every call."""

    def __init__(self, session: Session, inner: ModelClient) -> None:
        self._session = session
        self._inner = inner

    async def stream(self, request: ModelRequest, on_text: TextCallback | None = None) -> ModelTurn:
        session = self._session
        guard, limiter = session.spend_guard, session.rate_limiter
        endpoint = session.agent.config.base_url or DEFAULT_ENDPOINT
        limited = limiter is not None and bool(limiter.limits_for(endpoint, request.model))
        if guard is None and not limited:
            return await self._inner.stream(request, on_text)
        estimate = _estimate(session, request)
        reservation = None if guard is None else await _reserve(guard, estimate)
        sent = [False]
        try:
            if limiter is not None and limited:
                turn = await self._limited(limiter, endpoint, request, estimate, on_text, sent)
            else:
                sent[0] = True
                turn = await self._inner.stream(request, on_text)
        except asyncio.CancelledError:
            # A call cut off mid-stream may still be billed: count its whole estimate.
            if guard is not None and reservation is not None:
                used = (estimate.tokens, estimate.cost_usd) if sent[0] else (0, 0.0)
                await _settle(guard, reservation, *used)
            raise
        except BaseException:
            if guard is not None and reservation is not None:
                await _settle(guard, reservation, 0, 0.0)
            raise
        if guard is not None and reservation is not None:
            usage = turn.usage
            cost = session.agent.price_table.cost(
                request.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_tokens=usage.cached_tokens,
            )
            await _settle(guard, reservation, usage.input_tokens + usage.output_tokens, cost)
        return turn

    async def _limited(
        self,
        limiter: RateLimiter,
        endpoint: str,
        request: ModelRequest,
        estimate: CallEstimate,
        on_text: TextCallback | None,
        sent: list[bool],
    ) -> ModelTurn:
        request = replace(request, max_retries=0)
        server_errors = 0
        for _ in range(MAX_RATE_LIMITED_TRIES):
            await _admitted(self._session, limiter, endpoint, request.model, estimate.tokens)
            sent[0] = True
            try:
                return await self._inner.stream(request, on_text)
            except ModelError as exc:
                status = exc.status_code
                if status == 429:
                    pause = exc.retry_after if exc.retry_after is not None else DEFAULT_PAUSE_S
                    logger.info("429 at %s: %s paused %.1f s", endpoint, request.model, pause)
                    await limiter.pause(endpoint, request.model, pause)
                    continue
                if _server_error(status) and server_errors < _SERVER_RETRIES:
                    server_errors += 1
                    await asyncio.sleep(0.5 * 2**server_errors * (0.5 + random.random()))
                    continue
                raise
        raise ModelError(
            f"the model API kept answering 429 (rate limited) {MAX_RATE_LIMITED_TRIES} times "
            f"for {request.model} at {endpoint}; lower its rate limits (RHO_AGENT_RATE_LIMITS)",
            status_code=429,
        )


def _server_error(status: int | None) -> bool:
    return status in (408, 409) or (status is not None and status >= 500)


async def _admitted(
    session: Session, limiter: RateLimiter, endpoint: str, model: str, tokens: int
) -> None:
    """Wait until the shared limits admit the call; the session shows it is waiting."""
    waiting = False
    try:
        while True:
            admission = await limiter.try_acquire(endpoint, model, tokens)
            if admission.wait_s <= 0:
                return
            if not waiting:
                waiting = True
                session.report_waiting(f"waiting for rate limit ({model} at {endpoint})")
            session.check_cancelled()
            delay = min(admission.wait_s, _LONGEST_SLEEP_S)
            await asyncio.sleep(delay + random.uniform(0.0, 0.02 + delay / 20))
    finally:
        if waiting:
            session.report_waiting(None)


def _estimate(session: Session, request: ModelRequest) -> CallEstimate:
    """Input tokens (tool definitions included) plus the output cap, or the allowance."""
    input_tokens = compaction.count_tokens(request.messages, request.tools)
    output = request.max_output_tokens or session.output_allowance
    cost = session.agent.price_table.cost(
        request.model, input_tokens=input_tokens, output_tokens=output
    )
    return CallEstimate(input_tokens, output, cost)


_releasing: set[asyncio.Task[None]] = set()
"""Settlements of reservations whose caller was cancelled while reserving (kept referenced)."""


async def _reserve(guard: SpendGuard, estimate: CallEstimate) -> Reservation:
    """Reserve; a caller cancelled meanwhile releases the reservation once it lands."""
    task = asyncio.ensure_future(guard.reserve(estimate))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda done: _release(guard, done))
        raise


def _release(guard: SpendGuard, done: asyncio.Future[Reservation]) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    release = asyncio.ensure_future(_settle(guard, done.result(), 0, 0.0))
    _releasing.add(release)
    release.add_done_callback(_releasing.discard)


async def _settle(guard: SpendGuard, reservation: Reservation, tokens: int, cost: float) -> None:
    """Settle, even while the task is being cancelled (a lost settlement would leak the hold)."""
    try:
        await asyncio.shield(guard.settle(reservation, tokens=tokens, cost_usd=cost))
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("settling a model call's spend failed; its reservation stays held")
