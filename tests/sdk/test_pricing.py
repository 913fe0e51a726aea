"""Prices from the genai-prices catalogue, user prices on top, billed through real model calls."""

from __future__ import annotations

from pathlib import Path

import pytest
from genai_prices import Usage, calc_price

from rho_agent import Agent, AgentConfig, ConfigError, ModelPrice, PriceTable, Session
from rho_agent._catalogue import lookup
from rho_agent.testing import ScriptedModelServer, ScriptedUsage, text
from tests.sdk.helpers import make_session

# 100k input tokens of which 20k cached, 10k output tokens.
USAGE = ScriptedUsage(prompt_tokens=100_000, completion_tokens=10_000, cached_tokens=20_000)


async def billed(server: ScriptedModelServer, tmp_path: Path, model: str) -> float:
    """What one real model call through the openai client costs the session."""
    server.script(text("ok", usage=USAGE))
    session = make_session(server, tmp_path, model=model)
    await session.run(prompt="hi")
    return float(session.state.usage["cost_usd"])


# Worked out by hand from OpenAI's published prices (USD per million tokens):
#   gpt-5-pro $15 in / $120 out, no cache discount:   100k*15 + 10k*120            = $2.70
#   o3-pro    $20 in / $80 out, no cache discount:    100k*20 + 10k*80             = $2.80
#   o3-mini   $1.10 in / $0.55 cached / $4.40 out:    80k*1.10 + 20k*0.55 + 10k*4.40 = $0.143
#   gpt-5-mini $0.25 in / $0.025 cached / $2 out:     80k*0.25 + 20k*0.025 + 10k*2   = $0.0405
# The old prefix table billed them as gpt-5 ($0.2025), o3 ($0.25), o3 ($0.25): 13x, 11x too low
# and 1.75x too high.
PINNED = {"gpt-5-pro": 2.70, "o3-pro": 2.80, "o3-mini": 0.143, "gpt-5-mini": 0.0405}


@pytest.mark.parametrize(("model", "usd"), PINNED.items())
async def test_model_calls_are_billed_at_the_real_price(
    model_server: ScriptedModelServer, tmp_path: Path, model: str, usd: float
) -> None:
    assert await billed(model_server, tmp_path, model) == pytest.approx(usd)


@pytest.mark.parametrize("model", [*PINNED, "gpt-4.1", "o4-mini", "claude-sonnet-4-5"])
def test_the_table_agrees_with_genai_prices(model: str) -> None:
    expected = calc_price(
        Usage(input_tokens=100_000, cache_read_tokens=20_000, output_tokens=10_000), model
    )
    cost = PriceTable().cost(
        model, input_tokens=100_000, output_tokens=10_000, cached_tokens=20_000
    )
    assert cost == pytest.approx(float(expected.total_price))


def test_price_shows_the_per_million_rates_and_cached_rates_as_the_source_says() -> None:
    table = PriceTable()
    assert table.price("gpt-5-pro") == ModelPrice(15, 15, 120)
    assert table.price("o3-pro") == ModelPrice(20, 20, 80)
    assert table.price("o3-mini") == ModelPrice(1.1, 0.55, 4.4)
    assert table.price("gpt-5-mini-2025-08-07") == ModelPrice(0.25, 0.025, 2)
    assert table.price("openai/gpt-5-pro") == table.price("gpt-5-pro")
    assert table.price("my-local-llama") is None


def test_user_prices_win_over_the_catalogue() -> None:
    table = PriceTable().with_prices(
        {"gpt-5-pro": ModelPrice(1, 0.5, 2), "mine": ModelPrice(3, 1, 4)}
    )
    assert table.cost("gpt-5-pro", input_tokens=1_000_000, output_tokens=0) == 1
    assert table.cost("mine", input_tokens=1_000_000, output_tokens=1_000_000) == 7
    assert table.cost("o3-pro", input_tokens=1_000_000, output_tokens=0) == 20
    assert PriceTable({"mine": ModelPrice(3, 1, 4)}).price("mine") == ModelPrice(3, 1, 4)


async def test_prices_in_a_yaml_config_bill_the_session(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"model: my-llama\nbase_url: {model_server.base_url}\nextras:\n"
        "  prices:\n    my-llama: {input: 2, cached_input: 1, output: 10}\n",
        encoding="utf-8",
    )
    model_server.script(text("ok", usage=USAGE))
    session = Session(Agent(AgentConfig.from_file(path)))
    await session.run(prompt="hi")
    # 80k*2 + 20k*1 + 10k*10 per million
    assert session.state.usage["cost_usd"] == pytest.approx(0.28)


@pytest.mark.parametrize(
    ("prices", "named"),
    [
        ({"my-llama": {"input": -1, "output": 1}}, "'my-llama'"),
        ({"my-llama": {"input": 1}}, "output"),
        ({"my-llama": {"input": 1, "output": 1, "cahced_input": 1}}, "cahced_input"),
        (["my-llama"], "must map model names"),
    ],
)
def test_bad_prices_in_a_config_name_the_field(prices: object, named: str) -> None:
    with pytest.raises(ConfigError, match=r"extras\.prices") as caught:
        AgentConfig(extras={"prices": prices})
    assert named in str(caught.value)


def test_catalogue_lookups_are_cached() -> None:
    lookup.cache_clear()
    table = PriceTable()
    for _ in range(50):
        table.cost("o3-pro", input_tokens=10, output_tokens=10)
    PriceTable().cost("o3-pro", input_tokens=10, output_tokens=10)
    info = lookup.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_every_catalogue_price_costs_what_the_library_says() -> None:
    """The linear form reused for flat prices agrees with genai-prices on every model it knows,
    and tiered prices (which are not linear) still go through the library."""
    from datetime import UTC, datetime

    from genai_prices.data_snapshot import get_snapshot

    from rho_agent._catalogue import CatalogueModel, _linear

    counts = [(0, 0, 0), (1, 0, 1), (1_500, 1_024, 40), (150_000, 0, 9), (250_000, 10_000, 3)]
    counts += [(300_000, 299_000, 65_000), (1_000_000, 0, 1_000_000)]
    linear = tiered = 0
    for provider in get_snapshot().providers:
        for info in provider.models:
            model = CatalogueModel(provider, info)
            price = info.get_prices(datetime.now(UTC))
            if _linear(price) is None:
                tiered += 1
            else:
                linear += 1
            for input_tokens, cached, output in counts:
                usage = Usage(
                    input_tokens=input_tokens, cache_read_tokens=cached, output_tokens=output
                )
                expected = float(info.calc_price(usage, provider).total_price)
                ours = model.cost(
                    input_tokens=input_tokens, cached_tokens=cached, output_tokens=output
                )
                assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12), (info.id, usage)
    assert linear > 100 and tiered > 0  # both paths ran
