"""Price cards: what one model charges, in USD per million tokens, for each kind of token.

A :class:`PriceCard` holds one price per token kind; a :class:`PriceTier` is
the card of prompts above a length; a :class:`ModelPrice` is a model's base
card with its tiers and aliases. Every price is an exact
:class:`~decimal.Decimal`. The checks every layer of the price table shares
(token counts, model IDs, alias claims) are here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final, Literal

from ratelimit.errors import InvalidArgument, InvalidArgumentType

TOKENS_PER_MILLION: Final = 1_000_000
"""Prices are quoted in USD per this many tokens (one MTok)."""

TokenKind = Literal["input", "cache_write_5m", "cache_write_1h", "cache_read", "output"]
"""A kind of token that Anthropic prices separately."""

TOKEN_KINDS: Final[tuple[TokenKind, ...]] = (
    "input",
    "cache_write_5m",
    "cache_write_1h",
    "cache_read",
    "output",
)
"""Every :data:`TokenKind`, in the order of the pricing page's columns."""

INPUT_SIDE: Final[tuple[TokenKind, ...]] = (
    "input",
    "cache_write_5m",
    "cache_write_1h",
    "cache_read",
)
"""The kinds a prompt token may be billed as (which one is known only afterwards)."""

PRICE_FIELDS: Final[tuple[str, ...]] = (
    *TOKEN_KINDS,
    *(f"batch_{kind}" for kind in TOKEN_KINDS),
)
"""The price fields of a card: each token kind, standard and through the Batch API."""


def validate_model_id(value: object, what: str = "model") -> str:
    """A model ID: a non-empty ``str`` without surrounding spaces, or a typed error."""
    if not isinstance(value, str):
        raise InvalidArgumentType(f"{what} must be a model ID (str), not {type(value).__name__}")
    if not value or value != value.strip():
        raise InvalidArgument(
            f"{what} must be a non-empty ID without surrounding spaces, got {value!r}"
        )
    return value


def validate_token_count(value: object, name: str) -> int:
    """A token count: a non-negative int (``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"{name} must be an int token count, got {type(value).__name__}")
    if value < 0:
        raise InvalidArgument(f"{name} must be >= 0, got {value}")
    return value


def price_value(value: object, where: str) -> Decimal:
    """A price in USD / MTok from a Decimal, an int or a decimal string."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise InvalidArgumentType(
            f"{where}: a price must be a decimal string, an int or a Decimal "
            f"(floats are not exact), got {type(value).__name__}"
        )
    try:
        price = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise InvalidArgument(f"{where}: {value!r} is not a decimal number") from None
    if not price.is_finite() or price < 0:
        raise InvalidArgument(f"{where}: a price must be finite and >= 0, got {value!r}")
    return price


@dataclass(frozen=True, kw_only=True)
class PriceCard:
    """One price card: a price in USD per million tokens for each kind of token.

    ``input`` and ``output`` are required.  Every other price may be ``None``,
    meaning "not published": pricing a non-zero count of that kind raises
    :class:`~ratelimit.errors.MissingPrice` rather than guessing.  The
    ``batch_*`` prices apply to requests sent through the Message Batches API.
    """

    input: Decimal
    """Uncached input tokens, USD / MTok."""
    output: Decimal
    """Output tokens (thinking included), USD / MTok."""
    cache_write_5m: Decimal | None = None
    """Prompt-cache writes with the 5-minute TTL, USD / MTok."""
    cache_write_1h: Decimal | None = None
    """Prompt-cache writes with the 1-hour TTL, USD / MTok."""
    cache_read: Decimal | None = None
    """Prompt-cache hits and refreshes, USD / MTok."""
    batch_input: Decimal | None = None
    """Uncached input tokens through the Batch API, USD / MTok."""
    batch_output: Decimal | None = None
    """Output tokens through the Batch API, USD / MTok."""
    batch_cache_write_5m: Decimal | None = None
    """5-minute cache writes through the Batch API, USD / MTok."""
    batch_cache_write_1h: Decimal | None = None
    """1-hour cache writes through the Batch API, USD / MTok."""
    batch_cache_read: Decimal | None = None
    """Cache hits and refreshes through the Batch API, USD / MTok."""

    def __post_init__(self) -> None:
        """Check that every price is a finite, non-negative Decimal."""
        for name in PRICE_FIELDS:
            value = getattr(self, name)
            if value is None and name not in ("input", "output"):
                continue
            if not isinstance(value, Decimal):
                raise InvalidArgumentType(
                    f"{name} must be a Decimal (USD per million tokens), got {type(value).__name__}"
                )
            if not value.is_finite() or value < 0:
                raise InvalidArgument(f"{name} must be finite and >= 0, got {value}")

    def usd_per_mtok(self, kind: TokenKind, *, batch: bool = False) -> Decimal | None:
        """The price of ``kind`` in USD per million tokens (``None`` if not published)."""
        if kind not in TOKEN_KINDS:
            raise InvalidArgument(f"unknown token kind {kind!r}; expected one of {TOKEN_KINDS}")
        value: Decimal | None = getattr(self, f"batch_{kind}" if batch else kind)
        return value


@dataclass(frozen=True, kw_only=True)
class PriceTier(PriceCard):
    """The price card of requests whose prompt exceeds ``above_prompt_tokens``.

    The prompt is ``input_tokens + cache_creation_input_tokens +
    cache_read_input_tokens``; the tier's prices apply to every token of such a
    request, output included.
    """

    above_prompt_tokens: int
    """The tier applies when the prompt is strictly longer than this many tokens."""

    def __post_init__(self) -> None:
        """Check the prices and the threshold (a positive int)."""
        super().__post_init__()
        validate_token_count(self.above_prompt_tokens, "above_prompt_tokens")
        if self.above_prompt_tokens == 0:
            raise InvalidArgument("above_prompt_tokens must be > 0")


@dataclass(frozen=True, kw_only=True)
class ModelPrice(PriceCard):
    """The prices of one model: a base :class:`PriceCard` plus prompt-length tiers.

    ``aliases`` are other model IDs (dated snapshots) that resolve to this
    entry; ``name`` is the display name on Anthropic's pricing page.
    """

    name: str = ""
    """Display name, e.g. ``"Claude Sonnet 4.5"``; informational only."""
    aliases: tuple[str, ...] = ()
    """Other model IDs priced by this entry, e.g. dated snapshot IDs."""
    tiers: tuple[PriceTier, ...] = ()
    """Prompt-length tiers in strictly ascending ``above_prompt_tokens`` order."""

    def __post_init__(self) -> None:
        """Check prices, aliases and the order of the tiers."""
        super().__post_init__()
        if not isinstance(self.name, str):
            raise InvalidArgumentType(f"name must be a str, got {type(self.name).__name__}")
        if not isinstance(self.aliases, tuple):
            raise InvalidArgumentType(f"aliases must be a tuple, got {type(self.aliases).__name__}")
        for alias in self.aliases:
            validate_model_id(alias, "alias")
        if len(set(self.aliases)) != len(self.aliases):
            raise InvalidArgument(f"duplicate alias in {self.aliases}")
        if not isinstance(self.tiers, tuple):
            raise InvalidArgumentType(f"tiers must be a tuple, got {type(self.tiers).__name__}")
        previous = 0
        for tier in self.tiers:
            if not isinstance(tier, PriceTier):
                raise InvalidArgumentType(f"tiers must hold PriceTier, got {type(tier).__name__}")
            if tier.above_prompt_tokens <= previous:
                raise InvalidArgument(
                    "tiers must be in strictly ascending above_prompt_tokens order"
                )
            previous = tier.above_prompt_tokens

    def card_for(self, prompt_tokens: int) -> PriceCard:
        """The price card for a request whose prompt has ``prompt_tokens`` tokens."""
        validate_token_count(prompt_tokens, "prompt_tokens")
        card: PriceCard = self
        for tier in self.tiers:
            if prompt_tokens > tier.above_prompt_tokens:
                card = tier
        return card


def model_index(models: Mapping[str, ModelPrice]) -> dict[str, str]:
    """Every model ID and alias in ``models`` to the canonical ID it resolves to.

    Raises a typed error for a bad ID or entry, or for an ID claimed twice.
    """
    index: dict[str, str] = {}
    for model_id, price in models.items():
        validate_model_id(model_id)
        if not isinstance(price, ModelPrice):
            raise InvalidArgumentType(
                f"models[{model_id!r}] must be a ModelPrice, got {type(price).__name__}"
            )
        for name in (model_id, *price.aliases):
            if name in index:
                raise InvalidArgument(
                    f"model ID {name!r} is claimed by both {index[name]!r} and {model_id!r}"
                )
            index[name] = model_id
    return index
