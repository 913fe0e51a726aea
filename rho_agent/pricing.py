"""What model calls cost: a per-model price table users can extend, and context-window sizes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("rho_agent.pricing")


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. ``cached_input`` applies to the cached part of the input."""

    input: float
    cached_input: float
    output: float


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-5": ModelPrice(1.25, 0.125, 10.0),
    "gpt-5-mini": ModelPrice(0.25, 0.025, 2.0),
    "gpt-5-nano": ModelPrice(0.05, 0.005, 0.40),
    "gpt-4.1": ModelPrice(2.0, 0.50, 8.0),
    "gpt-4.1-mini": ModelPrice(0.40, 0.10, 1.60),
    "gpt-4.1-nano": ModelPrice(0.10, 0.025, 0.40),
    "gpt-4o": ModelPrice(2.50, 1.25, 10.0),
    "gpt-4o-mini": ModelPrice(0.15, 0.075, 0.60),
    "o3": ModelPrice(2.0, 0.50, 8.0),
    "o4-mini": ModelPrice(1.10, 0.275, 4.40),
}

DEFAULT_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
}
FALLBACK_CONTEXT_WINDOW = 128_000


def _lookup(table: dict[str, Any], model: str) -> Any:
    """Exact name, else the longest known prefix (``gpt-5-mini-2025-08-07`` is ``gpt-5-mini``)."""
    if model in table:
        return table[model]
    bare = model.rsplit("/", 1)[-1]
    matches = [name for name in table if bare.startswith(name)]
    return table[max(matches, key=len)] if matches else None


class PriceTable:
    """Prices per model; unknown models cost 0 and are reported once per table."""

    def __init__(self, prices: dict[str, ModelPrice] | None = None) -> None:
        self._prices = dict(DEFAULT_PRICES if prices is None else prices)
        self._reported_unknown: set[str] = set()

    def with_prices(self, prices: dict[str, ModelPrice]) -> PriceTable:
        """A new table with ``prices`` added or overriding the defaults."""
        return PriceTable({**self._prices, **prices})

    def price(self, model: str) -> ModelPrice | None:
        found: ModelPrice | None = _lookup(self._prices, model)
        return found

    def cost(
        self, model: str, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0
    ) -> float:
        """USD for one call; ``input_tokens`` includes the cached ones."""
        price = self.price(model)
        if price is None:
            if model not in self._reported_unknown:
                self._reported_unknown.add(model)
                logger.warning(
                    "no price known for model %r: its calls count as $0; "
                    "add one with PriceTable().with_prices({%r: ModelPrice(...)})",
                    model,
                    model,
                )
            return 0.0
        uncached = max(input_tokens - cached_tokens, 0)
        return (
            uncached * price.input
            + cached_tokens * price.cached_input
            + output_tokens * price.output
        ) / 1_000_000


def context_window(model: str) -> int:
    """The model's context window in tokens (a conservative default for unknown models)."""
    found = _lookup(DEFAULT_CONTEXT_WINDOWS, model)
    return int(found) if found is not None else FALLBACK_CONTEXT_WINDOW
