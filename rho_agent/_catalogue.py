"""What the maintained ``genai-prices`` catalogue knows about a model: its prices and window.

A hand-written table went stale and its prefix match billed ``gpt-5-pro`` as ``gpt-5``; the
catalogue matches each provider's model names exactly as the provider publishes them, so we defer
to it for every model a user has not priced themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, Provider


@dataclass(frozen=True)
class CatalogueModel:
    """One catalogue entry: the provider that sells the model and the model's data."""

    provider: Provider
    info: ModelInfo

    def cost(self, *, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
        """USD for one call, priced as the catalogue says.

        A model without a cache-read price bills its cached tokens at the input price, and tiered
        prices (e.g. above 200k input tokens) apply; ``input_tokens`` includes the cached ones.
        """
        from genai_prices import Usage

        usage = Usage(
            input_tokens=input_tokens,
            cache_read_tokens=min(cached_tokens, input_tokens),
            output_tokens=output_tokens,
        )
        return float(self.info.calc_price(usage, self.provider).total_price)


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
