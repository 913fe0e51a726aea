"""What the maintained ``genai-prices`` catalogue knows about a model: its prices and window.

A hand-written table went stale and its prefix match billed ``gpt-5-pro`` as ``gpt-5``; the
catalogue matches each provider's model names exactly as the provider publishes them, so we defer
to it for every model a user has not priced themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice, Provider


@dataclass(frozen=True)
class CatalogueModel:
    """One catalogue entry: the provider that sells the model and the model's data."""

    provider: Provider
    info: ModelInfo

    def cost(self, *, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        """USD for one call, priced as the catalogue says.

        A model without a cache-read price bills its cached tokens at the input price, and tiered
        prices (e.g. above 200k input tokens) apply; ``input_tokens`` includes the cached ones.
        The library's price calculation costs about 0.15 ms a call, so a price it computes as
        a linear function of the three counts is asked once and reused (``_Linear``).
        """
        from datetime import UTC, datetime

        cached_tokens = min(cached_tokens, input_tokens)
        price = self.info.get_prices(datetime.now(UTC))
        linear = _linear(price)
        if linear is not None:
            return linear.cost(input_tokens, cached_tokens, output_tokens)
        return float(_calc(price, input_tokens, cached_tokens, output_tokens))


@dataclass(frozen=True)
class _Linear:
    """A catalogue price that is linear in the counts: USD per token, and per call."""

    fixed: float
    uncached_input: float
    cached_input: float
    output: float

    def cost(self, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        return (
            self.fixed
            + self.uncached_input * (input_tokens - cached_tokens)
            + self.cached_input * cached_tokens
            + self.output * output_tokens
        )


_LINEAR: dict[int, tuple[object, _Linear | None]] = {}
"""Per catalogue price object (by id, the object kept alive beside its result)."""

_UNIT = 1_000_000
_PROBES = ((1_234_567, 345_678, 89_012), (3, 1, 250_001), (400_000, 0, 7))
"""Counts at which a linear form must agree with the library to the last decimal: across the
tier boundaries the catalogue uses (200k and 272k input tokens), so a tiered price never
passes."""


def _linear(price: ModelPrice) -> _Linear | None:
    """The price's linear form, or None when the library's result is not linear in the counts."""
    entry = _LINEAR.get(id(price))
    if entry is None or entry[0] is not price:
        entry = (price, _fit_linear(price))
        _LINEAR[id(price)] = entry
    return entry[1]


def _fit_linear(price: ModelPrice) -> _Linear | None:
    fixed = _calc(price, 0, 0, 0)
    uncached = _calc(price, _UNIT, 0, 0) - fixed
    cached = _calc(price, _UNIT, _UNIT, 0) - fixed
    output = _calc(price, 0, 0, _UNIT) - fixed
    for input_tokens, cached_tokens, output_tokens in _PROBES:
        expected = (
            fixed
            + uncached * (input_tokens - cached_tokens) / _UNIT
            + cached * cached_tokens / _UNIT
            + output * output_tokens / _UNIT
        )
        if _calc(price, input_tokens, cached_tokens, output_tokens) != expected:
            return None
    return _Linear(
        float(fixed), float(uncached / _UNIT), float(cached / _UNIT), float(output / _UNIT)
    )


def _calc(price: ModelPrice, input_tokens: int, cached_tokens: int, output_tokens: int) -> Decimal:
    """The library's price of one call, in USD."""
    from genai_prices import Usage

    usage = Usage(
        input_tokens=input_tokens, cache_read_tokens=cached_tokens, output_tokens=output_tokens
    )
    return price.calc_price(usage)["total_price"]


@lru_cache(maxsize=1024)
def lookup(model: str) -> CatalogueModel | None:
    """The catalogue entry for ``model``, or None; cached because it runs for every model call.

    ``openai/gpt-5`` style names (a provider prefix, as LiteLLM and OpenRouter write them) are
    tried as that provider's model, then as the bare name.
    """
    from genai_prices.data_snapshot import get_snapshot  # loading its data takes ~0.5 s: once

    snapshot = get_snapshot()
    head, _, tail = model.rpartition("/")
    attempts: list[tuple[str, str | None]] = [(model, None)]
    if head:
        attempts += [(tail, head.rsplit("/", 1)[-1]), (tail, None)]
    for name, provider_id in attempts:
        try:
            provider, info = snapshot.find_provider_model(name, None, provider_id, None)
        except LookupError:
            continue
        return CatalogueModel(provider, info)
    return None
