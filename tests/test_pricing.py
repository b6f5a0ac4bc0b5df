"""The price table (issue 4): shipped prices, dated names, cached-token pricing, estimates,
overrides, and unpriced models costed at 0 and counted without a model label."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from proxy.ledger.collector import register_ledger_metrics
from proxy.ledger.pricing import (
    UNPRICED_NAMES_MAX,
    ModelPrice,
    PriceTable,
    default_pricing_path,
    read_price_file,
)
from proxy.settings import PricingSettings, SettingsError
from proxy.settings_load import load_settings


@pytest.fixture
def table() -> PriceTable:
    return PriceTable.from_settings(PricingSettings())


def test_the_shipped_table_covers_every_kind_with_dates() -> None:
    prices = read_price_file(default_pricing_path())
    for family in ("gpt-4o-mini", "gpt-4.1", "gpt-5", "o3", "o4-mini", "text-embedding-3-small"):
        assert family in prices
    assert prices["omni-moderation-latest"].input == 0 == prices["omni-moderation-latest"].output
    assert prices["text-embedding-3-large"].output == 0
    for name, price in prices.items():
        assert price.taken is not None and re.fullmatch(r"\d{4}-\d{2}-\d{2}", price.taken), name
        assert price.cached_rate <= price.input, name


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # a listed snapshot wins over its family
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("o3-2025-04-16", "o3"),
        ("o3-pro", "o3-pro"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("GPT-4o-Mini", "gpt-4o-mini"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
    ],
)
def test_dated_and_variant_names_resolve_to_their_family(
    table: PriceTable, model: str, family: str
) -> None:
    assert table.price_for(model) == table.models[family]


@pytest.mark.parametrize("model", ["claude-3-opus", "gpt-4oo", "o30", "", "ft:gpt-4o:org::x"])
def test_unknown_names_are_unpriced(table: PriceTable, model: str) -> None:
    assert table.price_for(model) is None


def test_cached_tokens_are_priced_at_the_cached_rate(table: PriceTable) -> None:
    price = table.models["gpt-4o-mini"]
    cost = table.cost("gpt-4o-mini-2024-07-18", 1000, 400, 200)
    expected = (600 * price.input + 400 * price.cached_rate + 200 * price.output) / 1e6
    assert cost == pytest.approx(expected, rel=1e-12)
    assert price.cached_rate < price.input
    assert cost < table.cost("gpt-4o-mini", 1000, 0, 200)
    # More cached than prompt tokens (a broken usage block) never prices below zero.
    assert table.cost("gpt-4o-mini", 10, 50, 0) == pytest.approx(10 * price.cached_rate / 1e6)


def test_a_model_without_a_cached_price_charges_input(table: PriceTable) -> None:
    assert table.models["gpt-4o-2024-05-13"].cached_input is None
    assert table.cost("gpt-4o-2024-05-13", 1000, 1000, 0) == table.cost(
        "gpt-4o-2024-05-13", 1000, 0, 0
    )


def test_unpriced_models_cost_zero_and_are_counted(table: PriceTable) -> None:
    registry = CollectorRegistry()
    register_ledger_metrics(registry, prices=table)
    assert table.cost("my-local-llama", 5000, 0, 5000) == 0.0
    assert table.cost("my-local-llama", 1, 0, 1) == 0.0
    assert table.cost("gpt-4o-mini", 1, 0, 1) > 0
    assert table.unpriced_requests == 2
    assert table.unpriced_models == {"my-local-llama"}
    assert registry.get_sample_value("sidecache_unpriced_requests_total") == 2
    exposed = [s for m in registry.collect() for s in m.samples]
    assert all("model" not in s.labels for s in exposed)
    # Client-chosen names cannot grow the kept set without bound.
    for n in range(UNPRICED_NAMES_MAX * 3):
        table.cost(f"made-up-{n}", 1, 0, 1)
    assert len(table.unpriced_models) == UNPRICED_NAMES_MAX
    assert table.unpriced_requests == 2 + UNPRICED_NAMES_MAX * 3


def test_estimates_use_chars_per_token_and_max_tokens(table: PriceTable) -> None:
    price = table.models["gpt-4o"]
    assert table.estimate("gpt-4o", 4001, 100) == pytest.approx(
        (1001 * price.input + 100 * price.output) / 1e6
    )
    # No max_tokens: the configured default output size.
    assert table.estimate("gpt-4o", 400, None) == pytest.approx(
        (100 * price.input + 512 * price.output) / 1e6
    )
    assert table.estimate("text-embedding-3-small", 4000, None) == pytest.approx(1000 * 0.02 / 1e6)
    assert table.estimate("unknown-model", 4000, 100) == 0.0
    assert table.unpriced_requests == 0  # estimates are not requests


def test_settings_add_and_override_models(tmp_path: Path) -> None:
    config = tmp_path / "sidecache.toml"
    config.write_text(
        """
[pricing]
chars_per_token = 2.0
default_output_tokens = 10
[pricing.models]
"gpt-4o-mini" = { input = 1.0, output = 2.0 }
"house-model" = { input = 0.5, cached_input = 0.25, output = 1.5, taken = "2026-11-01" }
"""
    )
    table = PriceTable.from_settings(load_settings({"SIDECACHE_CONFIG": str(config)}).pricing)
    assert table.price_for("gpt-4o-mini-2024-07-18") == ModelPrice(
        input=1.0, output=2.0, source="settings [pricing.models]"
    )
    assert table.cost("house-model-v2", 1000, 1000, 0) == pytest.approx(0.25 * 1000 / 1e6)
    assert table.price_for("gpt-4o") == read_price_file(default_pricing_path())["gpt-4o"]
    assert table.estimate("house-model", 10, None) == pytest.approx((5 * 0.5 + 10 * 1.5) / 1e6)


def test_pricing_file_replaces_the_shipped_table(tmp_path: Path) -> None:
    own = tmp_path / "prices.toml"
    own.write_text('[models."only-model"]\ninput = 3.0\noutput = 4.0\ntaken = "2026-11-24"\n')
    table = PriceTable.from_settings(load_settings({"PRICING_FILE": str(own)}).pricing)
    assert set(table.models) == {"only-model"}
    assert table.price_for("gpt-4o-mini") is None


@pytest.mark.parametrize(
    "content",
    ['[models."x"]\noutput = 1.0\n', '[models."x"]\ninput = -1.0\n', "not toml ["],
)
def test_a_bad_price_file_stops_start_up_with_one_line(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "prices.toml"
    bad.write_text(content)
    with pytest.raises(SettingsError) as caught:
        PriceTable.from_settings(PricingSettings(file=str(bad)))
    assert str(bad) in str(caught.value) and "\n" not in str(caught.value)


# A table whose every rate differs, so each token kind's price shows in the sum.
HOUSE = """
[tiers]
flex = 0.5
priority = 2.0

[models."house"]
input = 1.0
cached_input = 0.25
cache_write = 1.25
output = 4.0
reasoning = 8.0
taken = "2026-12-06"

[models."house-cheap-flex"]
input = 1.0
output = 4.0
tiers = { flex = 0.25 }
taken = "2026-12-06"
"""


@pytest.fixture
def house(tmp_path: Path) -> PriceTable:
    path = tmp_path / "prices.toml"
    path.write_text(HOUSE)
    return PriceTable.from_settings(PricingSettings(file=str(path)))


@pytest.mark.parametrize(
    ("tokens", "usd_per_million"),
    [
        ((1000, 0, 0, 0, 0), 1000 * 1.0),  # plain input
        ((1000, 400, 0, 0, 0), 600 * 1.0 + 400 * 0.25),  # cached reads
        ((1000, 0, 0, 300, 0), 700 * 1.0 + 300 * 1.25),  # cache writes
        ((1000, 400, 0, 300, 0), 300 * 1.0 + 400 * 0.25 + 300 * 1.25),  # both
        ((0, 0, 500, 0, 0), 500 * 4.0),  # plain output
        ((0, 0, 500, 0, 200), 300 * 4.0 + 200 * 8.0),  # reasoning in the output
        ((1000, 400, 500, 300, 200), 300 + 400 * 0.25 + 300 * 1.25 + 300 * 4.0 + 200 * 8.0),
        # Parts larger than their whole are cut to it: never below zero, never double-counted.
        ((100, 80, 0, 80, 0), 80 * 0.25 + 20 * 1.25),
        ((0, 0, 10, 0, 50), 10 * 8.0),
    ],
)
def test_every_token_kind_is_priced_at_its_own_rate(
    house: PriceTable, tokens: tuple[int, int, int, int, int], usd_per_million: float
) -> None:
    prompt, cached, completion, written, reasoning = tokens
    cost = house.cost("house", prompt, cached, completion, written, reasoning)
    assert cost == pytest.approx(usd_per_million / 1e6, rel=1e-12)


def test_cache_writes_and_reasoning_default_to_input_and_output(table: PriceTable) -> None:
    """OpenAI bills neither apart: absent rates are the input and output rates."""
    price = table.models["o3"]
    assert (price.cache_write, price.reasoning) == (None, None)
    assert (price.cache_write_rate, price.reasoning_rate) == (price.input, price.output)
    assert table.cost("o3", 1000, 0, 500, 200, 300) == table.cost("o3", 1000, 0, 500)


def test_a_service_tier_scales_the_whole_call(house: PriceTable) -> None:
    standard = house.cost("house", 1000, 400, 500, 300, 200)
    assert house.cost("house", 1000, 400, 500, 300, 200, tier="flex") == pytest.approx(
        standard * 0.5
    )
    assert house.cost("house", 1000, 400, 500, 300, 200, tier="priority") == pytest.approx(
        standard * 2
    )
    for tier in (None, "default", "auto", "standard", "scale"):  # unlisted: standard price
        assert house.cost("house", 1000, 400, 500, 300, 200, tier=tier) == standard
    # A model's own factor wins over the file's.
    cheap = house.cost("house-cheap-flex", 1000, 0, 1000)
    assert house.cost("house-cheap-flex", 1000, 0, 1000, tier="flex") == pytest.approx(cheap / 4)
    assert house.cost("made-up", 1000, 0, 1000, tier="flex") == 0.0  # unpriced stays 0
    assert house.unpriced_requests == 1


def test_the_shipped_table_prices_flex_at_half_and_claude_cache_writes(table: PriceTable) -> None:
    assert table.tiers["flex"] == 0.5
    for model in ("o3", "o4-mini", "gpt-5", "gpt-5-mini-2025-08-07"):
        standard = table.cost(model, 1000, 100, 1000, 0, 400)
        assert table.cost(model, 1000, 100, 1000, 0, 400, tier="flex") == pytest.approx(
            standard / 2
        )
    for model, family in (
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-haiku-4-5", "claude-haiku-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
    ):
        price = table.price_for(model)
        assert price == table.models[family], model
        assert price.cache_write_rate == pytest.approx(1.25 * price.input), model
        assert price.cached_rate == pytest.approx(0.1 * price.input), model


def test_settings_models_take_cache_write_and_reasoning(tmp_path: Path) -> None:
    config = tmp_path / "sidecache.toml"
    config.write_text(
        '[pricing.models]\n"m" = { input = 1.0, output = 2.0, cache_write = 3.0, '
        "reasoning = 5.0 }\n"
    )
    table = PriceTable.from_settings(load_settings({"SIDECACHE_CONFIG": str(config)}).pricing)
    assert table.cost("m", 10, 0, 10, 10, 10) == pytest.approx((10 * 3.0 + 10 * 5.0) / 1e6)


@pytest.mark.parametrize(
    "content",
    ["[tiers]\nflex = -0.5\n", '[models."x"]\ninput = 1.0\ncache_write = -1.0\n'],
)
def test_negative_rates_and_factors_are_refused(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "prices.toml"
    bad.write_text(content)
    with pytest.raises(SettingsError):
        PriceTable.from_settings(PricingSettings(file=str(bad)))
