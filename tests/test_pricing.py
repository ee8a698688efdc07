"""Tests for ratelimit.pricing and the packaged price table (ratelimit/pricing/prices.toml).

Expected costs are computed here independently of the module: from the raw
strings of the TOML file with ``fractions.Fraction``, and, for a few models,
as dollar amounts written out by hand.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
import typing
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import CacheCreation, ModelParam, Usage

from ratelimit.errors import InvalidArgument, InvalidArgumentType, UnknownModel
from ratelimit.pricing import (
    TOKEN_KINDS,
    MissingPrice,
    ModelPrice,
    PriceTier,
    Pricing,
)

RAW: dict[str, Any] = tomllib.loads(
    resources.files("ratelimit.pricing").joinpath("prices.toml").read_text(encoding="utf-8")
)
RAW_MODELS: dict[str, dict[str, Any]] = RAW["models"]
MODEL_IDS = sorted(RAW_MODELS)
TIERED = sorted(m for m, entry in RAW_MODELS.items() if entry.get("tiers"))
ALIASES = sorted((alias, m) for m, entry in RAW_MODELS.items() for alias in entry["aliases"])

# Distinct counts per kind; the prompt (11,602 tokens) is below every tier threshold.
COUNTS = {
    "input": 1234,
    "cache_write_5m": 2345,
    "cache_write_1h": 3456,
    "cache_read": 4567,
    "output": 5678,
}
M = 1_000_000


@pytest.fixture(scope="module")
def pricing() -> Pricing:
    return Pricing.default()


def usage_of(counts: Mapping[str, int], **extra: object) -> dict[str, object]:
    """A usage mapping shaped like the API's, from counts by token kind."""
    return {
        "input_tokens": counts.get("input", 0),
        "output_tokens": counts.get("output", 0),
        "cache_read_input_tokens": counts.get("cache_read", 0),
        "cache_creation_input_tokens": counts.get("cache_write_5m", 0)
        + counts.get("cache_write_1h", 0),
        "cache_creation": {
            "ephemeral_5m_input_tokens": counts.get("cache_write_5m", 0),
            "ephemeral_1h_input_tokens": counts.get("cache_write_1h", 0),
        },
        **extra,
    }


def expected_usd(card: Mapping[str, Any], counts: Mapping[str, int], *, batch: bool) -> Fraction:
    """Cost from the raw TOML strings, in exact fractions of a dollar."""
    total = Fraction(0)
    for kind, tokens in counts.items():
        if tokens:
            total += Fraction(card[f"batch_{kind}" if batch else kind]) * tokens
    return total / M


def priced_kinds(card: Mapping[str, Any], *, batch: bool) -> dict[str, int]:
    return {k: n for k, n in COUNTS.items() if (f"batch_{k}" if batch else k) in card}


# -- the table itself -----------------------------------------------------------


def test_table_records_check_date_and_sources(pricing: Pricing) -> None:
    assert RAW["checked"] == "2026-11-28"
    assert pricing.checked == "2026-11-28"
    assert "https://platform.claude.com/docs/en/about-claude/pricing" in pricing.sources


def test_every_model_id_of_the_installed_sdk_is_priced(pricing: Pricing) -> None:
    literal = next(arg for arg in typing.get_args(ModelParam) if typing.get_args(arg))
    sdk_ids = typing.get_args(literal)
    assert "claude-sonnet-4-5-20250929" in sdk_ids
    missing = [m for m in sdk_ids if m not in pricing]
    assert missing == []
    for model in sdk_ids:
        assert pricing.resolve(model) in pricing.models()


def test_older_models_are_in_the_table(pricing: Pricing) -> None:
    for model in (
        "claude-opus-4-1-20250805",
        "claude-opus-4-20250514",
        "claude-sonnet-4-20250514",
        "claude-3-7-sonnet-20250219",
        "claude-3-5-haiku-20241022",
        "claude-3-haiku-20240307",
    ):
        assert model in pricing


@pytest.mark.parametrize("model", MODEL_IDS)
def test_every_price_is_an_exact_decimal_string(model: str) -> None:
    cards = [RAW_MODELS[model], *RAW_MODELS[model].get("tiers", [])]
    for card in cards:
        for key, value in card.items():
            if key not in ("name", "aliases", "tiers", "above_prompt_tokens"):
                assert isinstance(value, str), (model, key)
                assert Decimal(value) >= 0


@pytest.mark.parametrize("model", MODEL_IDS)
def test_batch_input_and_output_are_half_price_in_the_data(model: str) -> None:
    # The Batch API halves input and output on every model that has batch prices.
    for card in [RAW_MODELS[model], *RAW_MODELS[model].get("tiers", [])]:
        if "batch_input" in card:
            assert Fraction(card["batch_input"]) * 2 == Fraction(card["input"])
            assert Fraction(card["batch_output"]) * 2 == Fraction(card["output"])


def test_model_prices_mirror_the_file(pricing: Pricing) -> None:
    price = pricing.price("claude-sonnet-4-5")
    assert price.name == "Claude Sonnet 4.5"
    assert price.aliases == ("claude-sonnet-4-5-20250929",)
    assert price.input == Decimal("3")
    assert price.cache_write_5m == Decimal("3.75")
    assert price.cache_write_1h == Decimal("6")
    assert price.cache_read == Decimal("0.30")
    assert price.output == Decimal("15")
    assert price.batch_input == Decimal("1.50")
    assert price.batch_output == Decimal("7.50")
    assert [t.above_prompt_tokens for t in price.tiers] == [200_000]
    assert price.tiers[0].input == Decimal("6")
    assert price.tiers[0].output == Decimal("22.50")


# -- every model against the raw table -----------------------------------------


@pytest.mark.parametrize("batch", [False, True], ids=["standard", "batch"])
@pytest.mark.parametrize("model", MODEL_IDS)
def test_cost_of_every_model_matches_the_raw_table(
    pricing: Pricing, model: str, *, batch: bool
) -> None:
    card = RAW_MODELS[model]
    counts = priced_kinds(card, batch=batch)
    if not counts:  # no batch prices published for this model
        with pytest.raises(MissingPrice):
            pricing.cost(model, usage_of(COUNTS), batch=batch)
        return
    got = pricing.cost(model, usage_of(counts), batch=batch)
    assert isinstance(got, Decimal)
    assert Fraction(got) == expected_usd(card, counts, batch=batch)
    for kind in TOKEN_KINDS:
        if kind not in counts:  # a price that is not published is refused, not guessed
            with pytest.raises(MissingPrice):
                pricing.cost(model, usage_of({kind: 1}), batch=batch)


@pytest.mark.parametrize("model", MODEL_IDS)
def test_each_kind_alone_costs_its_raw_price(pricing: Pricing, model: str) -> None:
    card = RAW_MODELS[model]
    tokens = 50_000  # below every tier threshold
    for kind in TOKEN_KINDS:
        if kind in card:
            got = pricing.cost(model, usage_of({kind: tokens}))
            assert Fraction(got) == Fraction(card[kind]) * tokens / M


@pytest.mark.parametrize("batch", [False, True], ids=["standard", "batch"])
@pytest.mark.parametrize("model", TIERED)
def test_tiers_of_every_tiered_model(pricing: Pricing, model: str, *, batch: bool) -> None:
    base = RAW_MODELS[model]
    for tier in base["tiers"]:
        threshold = tier["above_prompt_tokens"]
        # Exactly at the threshold: base prices; one token more: the tier's, output included.
        at = {"input": threshold - 100, "cache_read": 60, "cache_write_1h": 40, "output": 777}
        over = {**at, "cache_write_5m": 1}
        assert Fraction(pricing.cost(model, usage_of(at), batch=batch)) == expected_usd(
            base, at, batch=batch
        )
        assert Fraction(pricing.cost(model, usage_of(over), batch=batch)) == expected_usd(
            tier, over, batch=batch
        )


@pytest.mark.parametrize(("alias", "model"), ALIASES)
def test_aliases_resolve_to_their_model(pricing: Pricing, alias: str, model: str) -> None:
    assert pricing.resolve(alias) == model
    assert pricing.resolve(model) == model
    assert pricing.price(alias) is pricing.price(model)
    usage = usage_of(COUNTS)
    assert pricing.cost(alias, usage) == pricing.cost(model, usage)
    assert alias not in pricing.models()


# -- hand-computed dollar amounts ------------------------------------------------


def test_opus_4_5_by_hand(pricing: Pricing) -> None:
    # $5 in / $6.25 5m write / $10 1h write / $0.50 read / $25 out per MTok.
    assert pricing.cost(
        "claude-opus-4-5", {"input_tokens": M, "output_tokens": 100_000}
    ) == Decimal("7.50")
    usage = {
        "input_tokens": 2_000,  # 0.010
        "cache_creation_input_tokens": 30_000,
        "cache_creation": {
            "ephemeral_5m_input_tokens": 10_000,
            "ephemeral_1h_input_tokens": 20_000,
        },
        "cache_read_input_tokens": 100_000,  # 0.050
        "output_tokens": 4_000,  # 0.100
    }  # writes: 0.0625 + 0.200
    assert pricing.cost("claude-opus-4-5-20251101", usage) == Decimal("0.4225")
    # Batch: half of every kind.
    assert pricing.cost("claude-opus-4-5", usage, batch=True) == Decimal("0.21125")


def test_opus_4_1_by_hand(pricing: Pricing) -> None:
    # $15 / $18.75 / $30 / $1.50 / $75.
    assert pricing.cost(
        "claude-opus-4-1", {"input_tokens": 1000, "output_tokens": 1000}
    ) == Decimal("0.09")
    usage = {"cache_creation_input_tokens": 1000, "cache_read_input_tokens": 10_000}
    assert pricing.cost("claude-opus-4-1-20250805", usage) == Decimal("0.03375")  # 5m + reads
    assert pricing.cost("claude-opus-4-1", {"input_tokens": M}, batch=True) == Decimal("7.5")


def test_sonnet_4_5_by_hand_including_the_long_context_tier(pricing: Pricing) -> None:
    # $3 / $3.75 / $6 / $0.30 / $15; above 200K prompt tokens $6 / $7.50 / $12 / $0.60 / $22.50.
    assert pricing.cost(
        "claude-sonnet-4-5", {"input_tokens": 100_000, "output_tokens": 10_000}
    ) == (Decimal("0.45"))
    cached = {"input_tokens": 1_000, "cache_read_input_tokens": 100_000, "output_tokens": 0}
    assert pricing.cost("claude-sonnet-4-5", cached) == Decimal("0.033")  # reads at $0.30
    big = {"input_tokens": 250_000, "output_tokens": 10_000}
    assert pricing.cost("claude-sonnet-4-5", big) == Decimal("1.725")
    assert pricing.cost("claude-sonnet-4-5", big, batch=True) == Decimal("0.8625")
    # Cache reads count toward the 200K threshold: 150K + 60K crosses it.
    mixed = {"input_tokens": 150_000, "cache_read_input_tokens": 60_000, "output_tokens": 1_000}
    assert pricing.cost("claude-sonnet-4-5", mixed) == Decimal("0.9585")
    # So do cache writes; exactly 200,000 prompt tokens is still the base price.
    edge = {"input_tokens": 199_000, "cache_creation_input_tokens": 1_000}
    assert pricing.cost("claude-sonnet-4-5-20250929", edge) == Decimal("0.60075")
    edge_plus = {**edge, "input_tokens": 199_001}
    assert pricing.cost("claude-sonnet-4-5", edge_plus) == Decimal("1.201506")


def test_haiku_4_5_by_hand(pricing: Pricing) -> None:
    # $1 / $1.25 / $2 / $0.10 / $5.
    usage = {"input_tokens": M, "output_tokens": M}
    assert pricing.cost("claude-haiku-4-5", usage) == Decimal("6")
    assert pricing.cost("claude-haiku-4-5-20251001", usage, batch=True) == Decimal("3")
    assert pricing.cost("claude-haiku-4-5", {"cache_read_input_tokens": 50_000}) == Decimal("0.005")


def test_newer_models_by_hand(pricing: Pricing) -> None:
    reads = {"cache_read_input_tokens": M}
    assert pricing.cost("claude-sonnet-5-5", reads) == Decimal("0.10")  # 0.05x since 2026-10-07
    assert pricing.cost("claude-sonnet-5", reads) == Decimal("0.20")
    assert pricing.cost("claude-opus-5-5", reads) == Decimal("0.20")
    assert pricing.cost("claude-fable-5-1", reads) == Decimal("0.25")
    assert pricing.cost("claude-fable-5", reads) == Decimal("1")
    assert pricing.cost("claude-fable-5-2", {"input_tokens": M, "output_tokens": M}) == Decimal(
        "48"
    )
    # Haiku 5.5: $0.10 / $0.50 up to 100,000 prompt tokens, $0.50 / $2.50 above, output included.
    assert pricing.cost("claude-haiku-5-5", {"input_tokens": 100_000, "output_tokens": 1_000}) == (
        Decimal("0.0105")
    )
    assert pricing.cost("claude-haiku-5-5", {"input_tokens": 100_001, "output_tokens": 1_000}) == (
        Decimal("0.0525005")
    )


# -- anthropic.types.Usage -------------------------------------------------------


def test_an_sdk_usage_object_is_accepted(pricing: Pricing) -> None:
    usage = Usage(
        input_tokens=2_000,
        output_tokens=4_000,
        cache_creation_input_tokens=30_000,
        cache_read_input_tokens=100_000,
        cache_creation=CacheCreation(
            ephemeral_5m_input_tokens=10_000, ephemeral_1h_input_tokens=20_000
        ),
    )
    assert pricing.cost("claude-opus-4-5", usage) == Decimal("0.4225")


def test_an_sdk_usage_with_batch_service_tier_gets_batch_prices(pricing: Pricing) -> None:
    usage = Usage(input_tokens=M, output_tokens=M, service_tier="batch")
    assert pricing.cost("claude-haiku-4-5", usage) == Decimal("3")
    assert pricing.cost("claude-haiku-4-5", usage, batch=True) == Decimal("3")
    standard = Usage(input_tokens=M, output_tokens=M, service_tier="standard")
    assert pricing.cost("claude-haiku-4-5", standard) == Decimal("6")


def test_an_sdk_usage_with_only_the_required_fields(pricing: Pricing) -> None:
    usage = Usage(input_tokens=1000, output_tokens=1000)
    assert usage.cache_creation is None
    assert usage.cache_read_input_tokens is None
    assert pricing.cost("claude-opus-4-1", usage) == Decimal("0.09")


def test_fast_mode_is_refused_not_underpriced(pricing: Pricing) -> None:
    with pytest.raises(MissingPrice):
        pricing.cost("claude-opus-5-5", Usage(input_tokens=1, output_tokens=1, speed="fast"))
    assert pricing.cost("claude-opus-5-5", {"input_tokens": M, "speed": "standard"}) == Decimal(4)


# -- cache write split --------------------------------------------------------------


def test_writes_without_a_split_are_5_minute_writes(pricing: Pricing) -> None:
    assert pricing.cost("claude-sonnet-4-6", {"cache_creation_input_tokens": M}) == Decimal("3.75")
    nones = {"cache_creation_input_tokens": M, "cache_creation": None, "input_tokens": None}
    assert pricing.cost("claude-sonnet-4-6", nones) == Decimal("3.75")


def test_writes_the_split_does_not_cover_are_5_minute_writes(pricing: Pricing) -> None:
    usage = {
        "cache_creation_input_tokens": 3 * M,
        "cache_creation": {"ephemeral_1h_input_tokens": M},
    }
    assert pricing.cost("claude-sonnet-4-6", usage) == Decimal("13.50")  # 2 x 3.75 + 6


def test_a_split_without_a_total_is_used_as_is(pricing: Pricing) -> None:
    usage = {"cache_creation": {"ephemeral_5m_input_tokens": M, "ephemeral_1h_input_tokens": M}}
    assert pricing.cost("claude-sonnet-4-6", usage) == Decimal("9.75")


def test_a_split_larger_than_the_total_is_rejected(pricing: Pricing) -> None:
    usage = {
        "cache_creation_input_tokens": 10,
        "cache_creation": {"ephemeral_5m_input_tokens": 8, "ephemeral_1h_input_tokens": 8},
    }
    with pytest.raises(InvalidArgument):
        pricing.cost("claude-sonnet-4-6", usage)


def test_a_usage_of_zero_tokens_costs_nothing(pricing: Pricing) -> None:
    assert pricing.cost("claude-opus-4-5", {"input_tokens": 0}) == 0
    assert pricing.cost("claude-opus-4-5", Usage(input_tokens=0, output_tokens=0)) == 0


def test_a_usage_without_counts_or_with_a_typo_is_refused(pricing: Pricing) -> None:
    """Neither prices a call at $0: the caller hears about it."""
    with pytest.raises(InvalidArgument, match="no token counts"):
        pricing.cost("claude-sonnet-4-6", {})
    with pytest.raises(InvalidArgument, match="unknown keys"):
        pricing.cost("claude-sonnet-4-6", {"inptu_tokens": 5})
    with pytest.raises(InvalidArgument, match="unknown keys"):
        pricing.cost("claude-sonnet-4-6", {"input_tokens": 5, "outputtokens": 5})


# -- unknown models and the fallback --------------------------------------------------


def test_unknown_model_is_rejected(pricing: Pricing) -> None:
    for call in (
        lambda: pricing.cost("claude-opus-9", {"input_tokens": 1}),
        lambda: pricing.price("claude-opus-9"),
        lambda: pricing.resolve("claude-opus-9"),
        lambda: pricing.max_cost("claude-opus-9", input_tokens=1, max_output_tokens=1),
    ):
        with pytest.raises(UnknownModel):
            call()
    assert "claude-opus-9" not in pricing
    assert pricing.fallback is None


def test_ids_are_not_matched_loosely(pricing: Pricing) -> None:
    for near_miss in ("claude-opus-5-1", "Claude-Opus-4-5", "claude-sonnet-4-5-2025", "claude"):
        with pytest.raises(UnknownModel):
            pricing.price(near_miss)
    for bad in ("", " claude-opus-4-5"):
        with pytest.raises(InvalidArgument):
            pricing.price(bad)
    with pytest.raises(InvalidArgumentType):
        pricing.price(None)  # type: ignore[arg-type]


def test_fallback_prices_unknown_models_only_when_configured(pricing: Pricing) -> None:
    fallback = ModelPrice(input=Decimal("100"), output=Decimal("500"))
    guarded = pricing.with_fallback(fallback)
    assert guarded.fallback is fallback
    assert guarded.cost("claude-opus-9", {"input_tokens": M, "output_tokens": M}) == Decimal(600)
    assert guarded.price("claude-opus-9") is fallback
    # Known models keep their own prices; resolve stays strict.
    assert guarded.cost("claude-haiku-4-5", {"input_tokens": M}) == Decimal(1)
    with pytest.raises(UnknownModel):
        guarded.resolve("claude-opus-9")
    # The original table is unchanged, and the fallback can be removed again.
    with pytest.raises(UnknownModel):
        pricing.price("claude-opus-9")
    with pytest.raises(UnknownModel):
        guarded.with_fallback(None).price("claude-opus-9")
    # A fallback without cache prices refuses cache tokens rather than guessing.
    with pytest.raises(MissingPrice):
        guarded.cost("claude-opus-9", {"cache_read_input_tokens": 1})


def test_constructor_fallback_and_table(pricing: Pricing) -> None:
    price = ModelPrice(input=Decimal(1), output=Decimal(2), aliases=("mine-2026",))
    table = Pricing({"mine": price}, fallback=ModelPrice(input=Decimal(9), output=Decimal(9)))
    assert table.models() == ["mine"]
    assert table.resolve("mine-2026") == "mine"
    assert table.cost("other", {"output_tokens": M}) == Decimal(9)
    assert table.checked is None
    with pytest.raises(InvalidArgument):  # one ID claimed twice
        Pricing({"a": price, "b": price})
    with pytest.raises(InvalidArgumentType):
        Pricing({"a": {"input": "1"}})  # type: ignore[dict-item]


# -- bad arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    ["input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"],
)
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1, InvalidArgument),
        (True, InvalidArgumentType),
        (False, InvalidArgumentType),
        (1.0, InvalidArgumentType),
        ("10", InvalidArgumentType),
        (Decimal(10), InvalidArgumentType),
    ],
)
def test_bad_token_counts_are_rejected(
    pricing: Pricing, field: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        pricing.cost("claude-haiku-4-5", {field: value})
    if error is InvalidArgument:
        assert not isinstance(info.value, InvalidArgumentType)


@pytest.mark.parametrize("value", [-1, True, 2.5])
def test_bad_split_counts_are_rejected(pricing: Pricing, value: object) -> None:
    usage = {"cache_creation": {"ephemeral_1h_input_tokens": value}}
    with pytest.raises(InvalidArgument):
        pricing.cost("claude-haiku-4-5", usage)


class _NotAUsage:
    usage = Usage(input_tokens=1, output_tokens=1)


@pytest.mark.parametrize("usage", [None, 5, "input_tokens", b"", _NotAUsage()])
def test_things_that_are_not_a_usage_are_rejected(pricing: Pricing, usage: object) -> None:
    with pytest.raises(InvalidArgumentType):
        pricing.cost("claude-haiku-4-5", usage)  # type: ignore[arg-type]


def test_bad_flags_and_fields_are_rejected(pricing: Pricing) -> None:
    with pytest.raises(InvalidArgumentType):
        pricing.cost("claude-haiku-4-5", {}, batch=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        pricing.cost("claude-haiku-4-5", {"input_tokens": 1, "service_tier": 3})
    with pytest.raises(InvalidArgumentType):
        pricing.cost("claude-haiku-4-5", {"cache_creation": 7})
    with pytest.raises(InvalidArgumentType):
        pricing.max_cost("claude-haiku-4-5", input_tokens=1.5, max_output_tokens=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        pricing.max_cost("claude-haiku-4-5", input_tokens=1, max_output_tokens=-1)


def test_price_cards_validate_their_prices() -> None:
    with pytest.raises(InvalidArgumentType):
        ModelPrice(input=0.1, output=Decimal(1))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        ModelPrice(input=Decimal(-1), output=Decimal(1))
    with pytest.raises(InvalidArgument):
        ModelPrice(input=Decimal("NaN"), output=Decimal(1))
    tier = PriceTier(above_prompt_tokens=10, input=Decimal(2), output=Decimal(2))
    with pytest.raises(InvalidArgument):
        ModelPrice(input=Decimal(1), output=Decimal(1), tiers=(tier, tier))
    with pytest.raises(InvalidArgument):
        PriceTier(above_prompt_tokens=0, input=Decimal(2), output=Decimal(2))
    with pytest.raises(InvalidArgumentType):
        PriceTier(above_prompt_tokens=True, input=Decimal(2), output=Decimal(2))


# -- max_cost --------------------------------------------------------------------------


def test_max_cost_prices_input_at_the_dearest_input_side_kind(pricing: Pricing) -> None:
    # Opus 4.5: the 1-hour write ($10) is the dearest input-side price; output $25.
    assert pricing.max_cost("claude-opus-4-5", input_tokens=M, max_output_tokens=M) == Decimal(35)
    assert pricing.max_cost(
        "claude-opus-4-5", input_tokens=M, max_output_tokens=M, batch=True
    ) == Decimal("17.5")
    # The prompt length picks the tier: Sonnet 4.5 above 200K pays $12 / $22.50.
    assert pricing.max_cost("claude-sonnet-4-5", input_tokens=200_000, max_output_tokens=0) == (
        Decimal("1.2")
    )
    assert pricing.max_cost("claude-sonnet-4-5", input_tokens=200_001, max_output_tokens=0) == (
        Decimal("2.400012")
    )
    # Mythos Preview publishes only input and output: those are the bound.
    assert pricing.max_cost("claude-mythos-preview", input_tokens=M, max_output_tokens=M) == (
        Decimal(150)
    )
    with pytest.raises(MissingPrice):
        pricing.max_cost("claude-mythos-preview", input_tokens=1, max_output_tokens=1, batch=True)


@pytest.mark.parametrize("model", MODEL_IDS)
def test_max_cost_bounds_every_split_of_the_prompt(pricing: Pricing, model: str) -> None:
    card = RAW_MODELS[model]
    kinds = [k for k in ("input", "cache_write_5m", "cache_write_1h", "cache_read") if k in card]
    for prompt in (5_000, 150_000, 250_000):
        bound = pricing.max_cost(model, input_tokens=prompt, max_output_tokens=3_000)
        for kind in kinds:
            actual = pricing.cost(model, usage_of({kind: prompt, "output": 3_000}))
            assert actual <= bound


# -- exactness ----------------------------------------------------------------------


def test_a_million_fold_sum_equals_the_product_exactly(pricing: Pricing) -> None:
    # Sonnet 4.6 has no prompt-length tier, so cost is linear in the counts.
    one = pricing.cost("claude-sonnet-4-6", {"input_tokens": 1, "cache_read_input_tokens": 1})
    assert one == Decimal("0.0000033")
    total = Decimal(0)
    for _ in range(M):
        total += one
    assert total == pricing.cost(
        "claude-sonnet-4-6", {"input_tokens": M, "cache_read_input_tokens": M}
    )
    assert total == one * M == Decimal("3.3")


def test_huge_counts_stay_exact(pricing: Pricing) -> None:
    tokens = 10**30 + 7
    got = pricing.cost("claude-haiku-4-5", {"cache_read_input_tokens": tokens})
    assert Fraction(got) == Fraction(tokens) * Fraction("0.10") / M


# -- loading -------------------------------------------------------------------------


def test_default_table_is_loaded_once() -> None:
    assert Pricing.default() is Pricing.default()


def test_module_imports_without_anthropic() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["anthropic"] = None  # any import of anthropic now fails
        from ratelimit.pricing import Pricing
        p = Pricing.default()
        assert str(p.cost("claude-haiku-4-5", {"input_tokens": 10**6})) == "1.000000"
        assert sys.modules["anthropic"] is None
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


OVERRIDE = """
checked = "2027-01-01"
source = "https://example.com/our-contract"

# A negotiated price for one model, replacing its whole entry.
[models."claude-sonnet-4-5"]
aliases = ["claude-sonnet-4-5-20250929", "our-sonnet"]
input = "2.40"
output = "12"
cache_write_5m = "3"
cache_write_1h = "4.80"
cache_read = "0.24"

# A model the packaged table does not know.
[models."our-finetune"]
input = "1"
output = "2"

[[models."our-finetune".tiers]]
above_prompt_tokens = 1000
input = "10"
output = "20"

# Cache prices for Mythos Preview, which the packaged table leaves out.
[models."claude-mythos-preview"]
input = "25"
output = "125"
cache_read = "2.50"

[fallback]
input = "50"
output = "250"
"""


def test_user_override_file_overrides_and_extends(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(OVERRIDE, encoding="utf-8")
    table = Pricing.from_file(path)
    assert table.checked == "2027-01-01"
    assert table.sources == ("https://example.com/our-contract",)
    # Replaced entry, old and new aliases.
    assert table.cost("claude-sonnet-4-5-20250929", {"input_tokens": M}) == Decimal("2.40")
    assert table.resolve("our-sonnet") == "claude-sonnet-4-5"
    # The whole entry is replaced: no batch prices, no long-context tier any more.
    assert table.price("claude-sonnet-4-5").tiers == ()
    with pytest.raises(MissingPrice):
        table.cost("claude-sonnet-4-5", {"input_tokens": 1}, batch=True)
    # New model with its tier.
    assert table.cost("our-finetune", {"input_tokens": 1000}) == Decimal("0.001")
    assert table.cost("our-finetune", {"input_tokens": 1001}) == Decimal("0.01001")
    assert table.cost("claude-mythos-preview", {"cache_read_input_tokens": M}) == Decimal("2.50")
    # Untouched entries stay; the fallback now prices unknown models.
    assert table.cost("claude-opus-4-1", {"output_tokens": M}) == Decimal(75)
    assert table.cost("claude-unknown", {"output_tokens": M}) == Decimal(250)
    assert "our-finetune" in table.models()
    # The packaged table is unchanged.
    assert "our-finetune" not in Pricing.default()
    assert Pricing.default().fallback is None


def test_override_file_can_take_an_alias_away_and_stand_alone(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        '[models."claude-haiku-4-5-20251001"]\ninput = "0.90"\noutput = "4.50"\n', encoding="utf-8"
    )
    table = Pricing.from_file(str(path))
    assert table.resolve("claude-haiku-4-5-20251001") == "claude-haiku-4-5-20251001"
    assert table.price("claude-haiku-4-5").aliases == ()
    assert table.cost("claude-haiku-4-5-20251001", {"input_tokens": M}) == Decimal("0.90")
    assert table.cost("claude-haiku-4-5", {"input_tokens": M}) == Decimal(1)
    assert table.checked == "2026-11-28"  # the base's, since the file has none
    alone = Pricing.from_file(path, base=Pricing({}))
    assert alone.models() == ["claude-haiku-4-5-20251001"]


@pytest.mark.parametrize(
    "text",
    [
        '[models."m"]\ninput = 1.5\noutput = "2"\n',  # float price
        '[models."m"]\ninput = "1"\n',  # no output price
        '[models."m"]\ninput = "1"\noutput = "2"\ncache_reads = "0.1"\n',  # typo'd kind
        '[models."m"]\ninput = "-1"\noutput = "2"\n',  # negative
        '[models."m"]\ninput = "abc"\noutput = "2"\n',  # not a number
        '[models."m"]\ninput = "1"\noutput = "2"\n'
        '[[models."m".tiers]]\ninput = "1"\noutput = "2"\n',  # tier without threshold
        '[models."m"]\ninput = "1"\noutput = "2"\naliases = ["n"]\n'
        '[models."n"]\ninput = "1"\noutput = "2"\n',  # one ID claimed twice
        'price = "1"\n',  # unknown top-level key
        '[models."m"\n',  # not TOML
    ],
)
def test_bad_price_files_are_rejected(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidArgument):
        Pricing.from_file(path)
