"""What model calls cost and how much context a model takes.

Prices and context windows come from the maintained ``genai-prices`` catalogue (see
``_catalogue``). Users price their own models with ``PriceTable.with_prices``, with
``extras.prices`` in an AgentConfig, or on a fleet with ``RHO_AGENT_PRICES``; their prices win over
the catalogue's. A model priced nowhere costs 0 and is reported once per table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rho_agent._catalogue import CatalogueModel, lookup
from rho_agent._data_option import load_data_option, validation_problems
from rho_agent.errors import ConfigError

logger = logging.getLogger("rho_agent.pricing")

FALLBACK_CONTEXT_WINDOW = 128_000
"""The window assumed for a model the catalogue does not know and no setting names."""


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. ``cached_input`` applies to the cached part of the input."""

    input: float
    cached_input: float
    output: float

    def __post_init__(self) -> None:
        for name in ("input", "cached_input", "output"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"ModelPrice.{name} must be a number of USD per million tokens >= 0, "
                    f"got {value!r}"
                )

    def cost(self, *, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        """USD for one call; ``input_tokens`` includes the cached ones."""
        cached = min(cached_tokens, input_tokens)
        return (
            (input_tokens - cached) * self.input
            + cached * self.cached_input
            + output_tokens * self.output
        ) / 1_000_000


class PriceTable:
    """Prices per model: the user's own first, then the ``genai-prices`` catalogue.

    User prices match a model's exact name (or its name after a ``provider/`` prefix); there is
    no prefix matching, which is what once billed ``gpt-5-pro`` as ``gpt-5``. Unknown models cost
    0 and are reported once per table.
    """

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        self._prices = dict(prices or {})
        self._resolved: dict[str, ModelPrice | CatalogueModel | None] = {}
        self._reported_unknown: set[str] = set()

    def with_prices(self, prices: Mapping[str, ModelPrice]) -> PriceTable:
        """A new table with ``prices`` added or overriding this table's and the catalogue's."""
        return PriceTable({**self._prices, **prices})

    def price(self, model: str) -> ModelPrice | None:
        """The model's price per million tokens (the first tier of a tiered catalogue price)."""
        found = self._resolve(model)
        if isinstance(found, CatalogueModel):
            return _base_price(found)
        return found

    def cost(
        self, model: str, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0
    ) -> float:
        """USD for one call; ``input_tokens`` includes the cached ones."""
        found = self._resolve(model)
        if found is None:
            if model not in self._reported_unknown:
                self._reported_unknown.add(model)
                logger.warning(
                    "no price known for model %r: its calls count as $0; add one with "
                    "extras.prices in the AgentConfig, RHO_AGENT_PRICES on a fleet, or "
                    "PriceTable().with_prices({%r: ModelPrice(...)})",
                    model,
                    model,
                )
            return 0.0
        return found.cost(
            input_tokens=input_tokens, cached_tokens=cached_tokens, output_tokens=output_tokens
        )

    def _resolve(self, model: str) -> ModelPrice | CatalogueModel | None:
        """Memoised per table: this runs for every model call."""
        if model not in self._resolved:
            bare = model.rsplit("/", 1)[-1]
            own = self._prices.get(model) or self._prices.get(bare)
            self._resolved[model] = own if own is not None else lookup(model)
        return self._resolved[model]


def context_window(model: str, configured: int | None = None) -> int:
    """The model's context window in tokens.

    ``configured`` (``extras.context_window``, ``--context-window``) wins, since a self-hosted
    model's window is whatever its server was started with; then the catalogue; then a default.
    """
    if configured is not None:
        return configured
    found = lookup(model)
    if found is not None and found.info.context_window:
        return found.info.context_window
    return FALLBACK_CONTEXT_WINDOW


def _base_price(found: CatalogueModel) -> ModelPrice:
    prices = found.info.get_prices(datetime.now(UTC))
    input_price = _first_tier(prices.input_mtok)
    cached = prices.cache_read_mtok
    return ModelPrice(
        input=input_price,
        cached_input=input_price if cached is None else _first_tier(cached),
        output=_first_tier(prices.output_mtok),
    )


def _first_tier(value: object) -> float:
    if value is None:
        return 0.0
    base = value if isinstance(value, Decimal) else getattr(value, "base", 0)
    return float(base)


# -- user prices from data ------------------------------------------------------------------------


class _PriceData(BaseModel):
    """One model's price as written in YAML or JSON; ``cached_input`` defaults to ``input``."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)


def prices_from_data(data: object, *, source: str) -> dict[str, ModelPrice]:
    """``{model: {input, output, cached_input?}}`` (USD per million tokens) as ModelPrices.

    Raises ConfigError naming ``source``, the model and the field that is wrong.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source} must map model names to prices, e.g. "
            "{'my-model': {'input': 0.5, 'output': 1.5}}, "
            f"got {type(data).__name__}"
        )
    prices: dict[str, ModelPrice] = {}
    for model, entry in data.items():
        try:
            parsed = _PriceData.model_validate(entry)
        except ValidationError as exc:
            problems = validation_problems(exc, "price")
            raise ConfigError(
                f"{source}: price of {model!r} is invalid ({problems}); write USD per million "
                "tokens as {input: 0.5, output: 1.5, cached_input: 0.05}"
            ) from None
        cached = parsed.input if parsed.cached_input is None else parsed.cached_input
        prices[str(model)] = ModelPrice(parsed.input, cached, parsed.output)
    return prices


def load_prices(value: str, *, source: str) -> dict[str, ModelPrice]:
    """Prices from inline JSON (``{"my-model": {...}}``) or from a YAML/JSON file path."""
    data, where = load_data_option(value, source=source, what="prices", inline=("{",))
    return prices_from_data(data, source=where)
