"""Model routing policies, alone and composed, on hand-made contexts (no I/O)."""

from __future__ import annotations

import math
import typing
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic.types
import pytest
from anthropic._data.deprecated_models import DEPRECATED_MODELS

from ratelimit import BudgetState
from ratelimit.errors import InvalidArgument, InvalidArgumentType
from ratelimit.routing import (
    DEFAULT_MAX_WAIT_S,
    BudgetAware,
    ByPromptLength,
    Fallback,
    Fixed,
    ModelPolicy,
    RoutingContext,
    prompt_chars,
)

HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-6"
OPUS = "claude-opus-4-6"
OPUS_47 = "claude-opus-4-7"
USED_MODELS = (HAIKU, SONNET, OPUS, OPUS_47)

NO_BUDGET = RoutingContext(budget=None)


def _sdk_models() -> set[str]:
    """The literal model IDs of the installed SDK's ``ModelParam``."""
    literal = next(a for a in typing.get_args(anthropic.types.ModelParam) if a is not str)
    return set(typing.get_args(literal))


def budget(spent: str, reserved: str = "0", limit: str = "10") -> BudgetState:
    return BudgetState(
        spent=Decimal(spent),
        reserved=Decimal(reserved),
        limit=Decimal(limit),
        resets_at=datetime(2026, 1, 2, tzinfo=UTC),
        period="day",
    )


def ctx(spent: str = "0", reserved: str = "0", *, ready: set[str] | None = None) -> RoutingContext:
    can_admit = None if ready is None else ready.__contains__
    return RoutingContext(budget=budget(spent, reserved), can_admit=can_admit)


def prompt(chars: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "ignored-by-policies",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "x" * chars}],
        **extra,
    }


# -- model IDs ----------------------------------------------------------------------


def test_model_ids_are_current_sdk_models() -> None:
    models = _sdk_models()
    defaults = ByPromptLength()
    used = {*USED_MODELS, defaults.default, *(m for _, m in defaults.thresholds)}
    assert used <= models
    assert not used & set(DEPRECATED_MODELS)


# -- prompt length ----------------------------------------------------------------


def test_prompt_chars_counts_text_of_every_message() -> None:
    req = {
        "system": "s" * 1000,
        "messages": [
            {"role": "user", "content": "abc"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "de"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"q": "x" * 99}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "fgh"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "content": [{"type": "text", "text": "ij"}],
                    },
                    {"type": "image", "source": {"type": "base64", "data": "A" * 500}},
                ],
            },
        ],
    }
    assert prompt_chars(req) == 3 + 2 + 3 + 2
    assert prompt_chars(req, include_system=True) == 10 + 1000
    assert prompt_chars({"system": [{"type": "text", "text": "xy"}]}, include_system=True) == 2
    assert prompt_chars({}) == 0


def test_prompt_chars_reads_sdk_objects() -> None:
    block = anthropic.types.TextBlock(type="text", text="hello")
    req = {"messages": [{"role": "assistant", "content": [block]}]}
    assert prompt_chars(req) == 5


# -- ByPromptLength ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("chars", "model"),
    [(0, HAIKU), (499, HAIKU), (500, SONNET), (1999, SONNET), (2000, OPUS), (50_000, OPUS)],
)
def test_by_prompt_length_matches_the_seed_article(chars: int, model: str) -> None:
    # select_model_by_complexity: < 500 haiku, < 2000 sonnet, else opus.
    assert ByPromptLength().choose(prompt(chars), NO_BUDGET) == [model]


def test_by_prompt_length_custom_thresholds_and_system() -> None:
    policy = ByPromptLength([(10, HAIKU)], default=SONNET)
    assert policy.choose(prompt(9, system="y" * 50), NO_BUDGET) == [HAIKU]
    with_system = ByPromptLength([(10, HAIKU)], default=SONNET, include_system=True)
    assert with_system.choose(prompt(9, system="y" * 50), NO_BUDGET) == [SONNET]
    assert ByPromptLength([], default=OPUS).choose(prompt(1), NO_BUDGET) == [OPUS]


def test_by_prompt_length_freezes_its_thresholds() -> None:
    thresholds = [[500, HAIKU]]
    policy = ByPromptLength(thresholds, default=OPUS)  # type: ignore[arg-type]
    thresholds.append([900, SONNET])
    assert policy.thresholds == ((500, HAIKU),)
    assert hash(policy) == hash(ByPromptLength([(500, HAIKU)], default=OPUS))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"thresholds": [(500, HAIKU), (500, SONNET)]}, InvalidArgument),
        ({"thresholds": [(2000, SONNET), (500, HAIKU)]}, InvalidArgument),
        ({"thresholds": [(0, HAIKU)]}, InvalidArgument),
        ({"thresholds": [(-1, HAIKU)]}, InvalidArgument),
        ({"thresholds": [(500.0, HAIKU)]}, InvalidArgumentType),
        ({"thresholds": [(True, HAIKU)]}, InvalidArgumentType),
        ({"thresholds": [(500, HAIKU, 1)]}, InvalidArgumentType),
        ({"thresholds": [(500, 3)]}, InvalidArgumentType),
        ({"thresholds": [(500, "")]}, InvalidArgument),
        ({"thresholds": "haiku"}, InvalidArgumentType),
        ({"thresholds": 500}, InvalidArgumentType),
        ({"default": ""}, InvalidArgument),
        ({"default": " claude-opus-4-6"}, InvalidArgument),
        ({"default": None}, InvalidArgumentType),
        ({"include_system": 1}, InvalidArgumentType),
        ({"max_wait_s": -1}, InvalidArgument),
        ({"max_wait_s": math.nan}, InvalidArgument),
        ({"max_wait_s": "2"}, InvalidArgumentType),
    ],
)
def test_by_prompt_length_validates(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        ByPromptLength(**kwargs)


# -- Fixed ---------------------------------------------------------------------------


def test_fixed() -> None:
    assert Fixed(HAIKU).choose(prompt(10), NO_BUDGET) == [HAIKU]
    assert Fixed(HAIKU).max_wait_s == DEFAULT_MAX_WAIT_S
    assert Fixed(HAIKU, max_wait_s=0).max_wait_s == 0.0
    with pytest.raises(InvalidArgumentType):
        Fixed(1)  # type: ignore[arg-type]


# -- Fallback -----------------------------------------------------------------------


def test_fallback_keeps_order_without_capacity_hint() -> None:
    policy = Fallback([SONNET, OPUS_47, HAIKU])
    assert policy.choose(prompt(10), NO_BUDGET) == [SONNET, OPUS_47, HAIKU]
    assert policy.max_wait_s == 2.0


def test_fallback_puts_models_that_can_admit_first_and_drops_none() -> None:
    policy = Fallback([SONNET, OPUS_47, HAIKU], max_wait_s=0.5)
    assert policy.choose(prompt(10), ctx(ready={HAIKU})) == [HAIKU, SONNET, OPUS_47]
    assert policy.choose(prompt(10), ctx(ready={HAIKU, OPUS_47})) == [OPUS_47, HAIKU, SONNET]
    assert policy.choose(prompt(10), ctx(ready=set())) == [SONNET, OPUS_47, HAIKU]
    assert policy.choose(prompt(10), ctx(ready={SONNET, OPUS_47, HAIKU})) == [
        SONNET,
        OPUS_47,
        HAIKU,
    ]


def test_fallback_asks_can_admit_about_each_model_once() -> None:
    asked: list[str] = []

    def can_admit(model: str) -> bool:
        asked.append(model)
        return model == OPUS_47

    policy = Fallback([SONNET, OPUS_47])
    assert policy.choose(prompt(1), RoutingContext(None, can_admit)) == [OPUS_47, SONNET]
    assert asked == [SONNET, OPUS_47]


@pytest.mark.parametrize(
    ("models", "kwargs", "error"),
    [
        ([], {}, InvalidArgument),
        ([HAIKU, HAIKU], {}, InvalidArgument),
        (HAIKU, {}, InvalidArgumentType),  # a str is a sequence, but not of models
        ([HAIKU, None], {}, InvalidArgumentType),
        ([HAIKU, ""], {}, InvalidArgument),
        ({HAIKU}, {}, InvalidArgumentType),
        ([HAIKU], {"max_wait_s": -0.1}, InvalidArgument),
        ([HAIKU], {"max_wait_s": math.inf}, InvalidArgument),
        ([HAIKU], {"max_wait_s": True}, InvalidArgumentType),
    ],
)
def test_fallback_validates(models: Any, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Fallback(models, **kwargs)


# -- BudgetAware ----------------------------------------------------------------------


def test_budget_aware_switches_at_the_mark() -> None:
    policy = BudgetAware(SONNET, HAIKU)  # above=0.8 of a $10 budget: $8
    assert policy.choose(prompt(10), ctx("7.99")) == [SONNET]
    assert policy.choose(prompt(10), ctx("8")) == [HAIKU]
    assert policy.choose(prompt(10), ctx("9.5")) == [HAIKU]
    assert policy.choose(prompt(10), ctx("12")) == [HAIKU]  # overshoot past the limit


def test_budget_aware_counts_reserved_money() -> None:
    policy = BudgetAware(SONNET, HAIKU, above=0.5)
    assert policy.choose(prompt(10), ctx("3", "1.99")) == [SONNET]
    assert policy.choose(prompt(10), ctx("3", "2")) == [HAIKU]


def test_budget_aware_without_budget_is_primary() -> None:
    policy = BudgetAware(SONNET, HAIKU, above=0.01)
    assert policy.choose(prompt(10), NO_BUDGET) == [SONNET]
    assert not policy.over(None)


def test_budget_aware_above_one_means_at_the_limit() -> None:
    policy = BudgetAware(SONNET, HAIKU, above=1)
    assert policy.choose(prompt(10), ctx("9.99")) == [SONNET]
    assert policy.choose(prompt(10), ctx("10")) == [HAIKU]


def test_budget_aware_is_exact_with_float_fractions() -> None:
    # 0.7 * 10 is 7.000000000000001 in floats; the mark must be exactly $7.
    policy = BudgetAware(SONNET, HAIKU, above=0.7)
    assert policy.above == Decimal("0.7")
    assert policy.choose(prompt(10), ctx("7")) == [HAIKU]


@pytest.mark.parametrize(
    ("above", "error"),
    [
        (0, InvalidArgument),
        (-0.5, InvalidArgument),
        (1.01, InvalidArgument),
        (math.nan, InvalidArgument),
        ("0.8", InvalidArgumentType),
        (True, InvalidArgumentType),
    ],
)
def test_budget_aware_validates_above(above: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        BudgetAware(SONNET, HAIKU, above=above)


def test_budget_aware_validates_sides() -> None:
    with pytest.raises(InvalidArgumentType):
        BudgetAware(3, HAIKU)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        BudgetAware(SONNET, [HAIKU])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        BudgetAware("", HAIKU)
    with pytest.raises(InvalidArgument):
        BudgetAware(SONNET, HAIKU, max_wait_s=-1)


def test_budget_aware_max_wait_defaults_to_the_policy_side() -> None:
    fallback = Fallback([SONNET, HAIKU], max_wait_s=0.25)
    assert BudgetAware(fallback, HAIKU).max_wait_s == 0.25
    assert BudgetAware(SONNET, fallback).max_wait_s == 0.25
    assert BudgetAware(SONNET, HAIKU).max_wait_s == DEFAULT_MAX_WAIT_S
    assert BudgetAware(fallback, HAIKU, max_wait_s=5).max_wait_s == 5.0


# -- composition ----------------------------------------------------------------------


def test_budget_aware_over_fallback() -> None:
    policy = BudgetAware(Fallback([OPUS_47, SONNET]), HAIKU)
    assert policy.choose(prompt(10), ctx("1")) == [OPUS_47, SONNET]
    assert policy.choose(prompt(10), ctx("1", ready={SONNET})) == [SONNET, OPUS_47]
    assert policy.choose(prompt(10), ctx("8.5", ready={SONNET})) == [HAIKU]


def test_budget_aware_over_prompt_length_with_cheaper_fallback() -> None:
    policy = BudgetAware(ByPromptLength(), Fallback([HAIKU, SONNET]), above=0.9)
    assert policy.choose(prompt(100), ctx("1")) == [HAIKU]
    assert policy.choose(prompt(5000), ctx("1")) == [OPUS]
    assert policy.choose(prompt(5000), ctx("9")) == [HAIKU, SONNET]
    assert policy.choose(prompt(5000), ctx("9", ready={SONNET})) == [SONNET, HAIKU]


def test_nested_budget_aware_steps_down_twice() -> None:
    policy = BudgetAware(BudgetAware(OPUS, SONNET, above=0.5), HAIKU, above=0.9)
    assert policy.choose(prompt(1), ctx("4")) == [OPUS]
    assert policy.choose(prompt(1), ctx("6")) == [SONNET]
    assert policy.choose(prompt(1), ctx("9.5")) == [HAIKU]


def test_every_policy_is_a_model_policy() -> None:
    policies: list[ModelPolicy] = [
        Fixed(HAIKU),
        ByPromptLength(),
        Fallback([HAIKU]),
        BudgetAware(SONNET, HAIKU),
    ]
    for policy in policies:
        assert isinstance(policy, ModelPolicy)
        assert isinstance(policy.max_wait_s, float)
        assert policy.choose(prompt(1), NO_BUDGET)


def test_policies_compare_by_configuration() -> None:
    assert BudgetAware(Fallback([SONNET]), HAIKU) == BudgetAware(Fallback([SONNET]), HAIKU)
    assert BudgetAware(SONNET, HAIKU) != BudgetAware(SONNET, HAIKU, above=0.5)
    assert len({BudgetAware(SONNET, HAIKU), BudgetAware(SONNET, HAIKU)}) == 1
    assert "above=0.8" in repr(BudgetAware(SONNET, HAIKU))


# -- bad calls ----------------------------------------------------------------------


def test_choose_validates_its_arguments() -> None:
    for policy in (Fixed(HAIKU), ByPromptLength(), Fallback([HAIKU]), BudgetAware(SONNET, HAIKU)):
        with pytest.raises(InvalidArgumentType):
            policy.choose([], NO_BUDGET)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentType):
            policy.choose(prompt(1), None)  # type: ignore[arg-type]


def test_routing_context_validates() -> None:
    with pytest.raises(InvalidArgumentType):
        RoutingContext(budget={"spent": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        RoutingContext(budget=None, can_admit=True)  # type: ignore[arg-type]
