"""What a Claude API request costs, in exact US dollars.

:class:`Pricing` holds a price table: for each model, a price in USD per million
tokens (USD / MTok) for every kind of token Anthropic bills separately, stored
as :class:`~decimal.Decimal` so that every cost is exact.  The table shipped with
the package (``ratelimit/prices.toml``) records Anthropic's published list
prices; :meth:`Pricing.from_file` lays a user's own file (same format) over it.

>>> pricing = Pricing.default()
>>> pricing.cost("claude-sonnet-4-6", {"input_tokens": 1000, "output_tokens": 500})
Decimal('0.010500')

How a usage is priced (:meth:`Pricing.cost`):

* ``input_tokens`` at the ``input`` price, ``output_tokens`` at ``output``,
  ``cache_read_input_tokens`` at ``cache_read``.
* ``cache_creation_input_tokens`` at ``cache_write_5m`` and ``cache_write_1h``
  as split by ``cache_creation`` (``ephemeral_5m_input_tokens`` /
  ``ephemeral_1h_input_tokens``).  Without that split, or for any part of the
  total the split does not account for, writes are priced as 5-minute writes
  (the API's default TTL).
* Batch pricing (the ``batch_*`` prices) when ``batch=True`` or the usage says
  ``service_tier == "batch"``.  Any other service tier is priced as standard.
* Prompt-length tiers: the *prompt* is ``input_tokens +
  cache_creation_input_tokens + cache_read_input_tokens``, as Anthropic counts
  it for its long-context thresholds.  When a model has a tier whose
  ``above_prompt_tokens`` the prompt exceeds, the tier's prices apply to every
  token of the request, output included; a prompt of exactly the threshold
  pays the base prices.

Not priced: fast mode (a usage with ``speed == "fast"`` raises
:class:`MissingPrice`, since its prices are not in the table), the 1.1x
surcharge of US-only inference (``inference_geo``), server tool use (web
search and the like, billed per use) and Priority Tier contracts.

This module never imports ``anthropic``: a usage is read by attribute or by
key, so ``anthropic.types.Usage`` objects and plain mappings both work, and a
bare install without the ``anthropic`` extra can use it.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, Inexact, InvalidOperation, localcontext
from importlib import resources
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, Protocol, TypedDict

from ratelimit.errors import InvalidArgument, InvalidArgumentType, MissingPrice, UnknownModel

__all__ = [
    "TOKENS_PER_MILLION",
    "TOKEN_KINDS",
    "MissingPrice",
    "ModelPrice",
    "PriceTier",
    "Pricing",
    "Rates",
    "TokenKind",
    "UsageLike",
    "token_counts",
]

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

_INPUT_SIDE: Final[tuple[TokenKind, ...]] = (
    "input",
    "cache_write_5m",
    "cache_write_1h",
    "cache_read",
)

_PRICE_FIELDS: Final[tuple[str, ...]] = (
    *TOKEN_KINDS,
    *(f"batch_{kind}" for kind in TOKEN_KINDS),
)

# Enough digits to multiply any sane token count by any price exactly; a result
# that would need more raises instead of being rounded.
_PRECISION: Final = 80

_DEFAULT_RESOURCE: Final = "prices.toml"


class UsageLike(Protocol):
    """The part of ``anthropic.types.Usage`` that pricing reads (token counts).

    Any object with these attributes works; so does a mapping with these keys.
    Other fields read when present: ``cache_creation_input_tokens``,
    ``cache_read_input_tokens``, ``cache_creation``, ``service_tier``, ``speed``.
    """

    @property
    def input_tokens(self) -> int | None:
        """Uncached input tokens of the request."""

    @property
    def output_tokens(self) -> int | None:
        """Output tokens of the response, thinking included."""


def _price_value(value: object, where: str) -> Decimal:
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
class Rates:
    """One rate card: a price in USD per million tokens for each kind of token.

    ``input`` and ``output`` are required.  Every other price may be ``None``,
    meaning "not published": pricing a non-zero count of that kind raises
    :class:`MissingPrice` rather than guessing.  The ``batch_*`` prices apply
    to requests sent through the Message Batches API.
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
        for name in _PRICE_FIELDS:
            value = getattr(self, name)
            if value is None and name not in ("input", "output"):
                continue
            if not isinstance(value, Decimal):
                raise InvalidArgumentType(
                    f"{name} must be a Decimal (USD per million tokens), got {type(value).__name__}"
                )
            if not value.is_finite() or value < 0:
                raise InvalidArgument(f"{name} must be finite and >= 0, got {value}")

    def rate(self, kind: TokenKind, *, batch: bool = False) -> Decimal | None:
        """The price of ``kind`` in USD / MTok (``None`` if not published)."""
        if kind not in TOKEN_KINDS:
            raise InvalidArgument(f"unknown token kind {kind!r}; expected one of {TOKEN_KINDS}")
        value: Decimal | None = getattr(self, f"batch_{kind}" if batch else kind)
        return value


@dataclass(frozen=True, kw_only=True)
class PriceTier(Rates):
    """The rate card of requests whose prompt exceeds ``above_prompt_tokens``.

    The prompt is ``input_tokens + cache_creation_input_tokens +
    cache_read_input_tokens``; the tier's prices apply to every token of such a
    request, output included.
    """

    above_prompt_tokens: int
    """The tier applies when the prompt is strictly longer than this many tokens."""

    def __post_init__(self) -> None:
        """Check the prices and the threshold (a positive int)."""
        super().__post_init__()
        _check_count(self.above_prompt_tokens, "above_prompt_tokens")
        if self.above_prompt_tokens == 0:
            raise InvalidArgument("above_prompt_tokens must be > 0")


@dataclass(frozen=True, kw_only=True)
class ModelPrice(Rates):
    """The prices of one model: a base :class:`Rates` card plus prompt-length tiers.

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
            _check_model_id(alias, "alias")
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

    def rates_for(self, prompt_tokens: int) -> Rates:
        """The rate card for a request whose prompt has ``prompt_tokens`` tokens."""
        _check_count(prompt_tokens, "prompt_tokens")
        rates: Rates = self
        for tier in self.tiers:
            if prompt_tokens > tier.above_prompt_tokens:
                rates = tier
        return rates


def _check_count(value: object, name: str) -> int:
    """A token count: a non-negative int (``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"{name} must be an int token count, got {type(value).__name__}")
    if value < 0:
        raise InvalidArgument(f"{name} must be >= 0, got {value}")
    return value


def _check_model_id(value: object, what: str = "model") -> str:
    if not isinstance(value, str):
        raise InvalidArgumentType(f"{what} must be a str, got {type(value).__name__}")
    if not value or value != value.strip():
        raise InvalidArgument(
            f"{what} must be a non-empty ID without surrounding spaces, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class _Counts:
    """Token counts of one request by kind, and whether it went through the Batch API."""

    input: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    output: int
    batch: bool

    @property
    def prompt(self) -> int:
        return self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read

    def by_kind(self) -> Iterable[tuple[TokenKind, int]]:
        yield "input", self.input
        yield "cache_write_5m", self.cache_write_5m
        yield "cache_write_1h", self.cache_write_1h
        yield "cache_read", self.cache_read
        yield "output", self.output


_USAGE_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
)


def _get(source: object, key: str) -> object:
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)


def _optional_str(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidArgumentType(f"usage {name} must be a str or None, got {type(value).__name__}")


def _read_usage(usage: object) -> _Counts:
    if usage is None or isinstance(usage, str | bytes | int | float):
        raise InvalidArgumentType(
            "usage must be an anthropic Usage or a mapping of token counts, "
            f"got {type(usage).__name__}"
        )
    if not isinstance(usage, Mapping) and not any(hasattr(usage, f) for f in _USAGE_FIELDS):
        raise InvalidArgumentType(
            "usage must be an anthropic Usage or a mapping of token counts, "
            f"got {type(usage).__name__} (pass message.usage, not the message)"
        )

    def count(source: object, key: str) -> int:
        value = _get(source, key)
        return 0 if value is None else _check_count(value, f"usage {key}")

    input_tokens = count(usage, "input_tokens")
    output_tokens = count(usage, "output_tokens")
    cache_read = count(usage, "cache_read_input_tokens")
    writes = count(usage, "cache_creation_input_tokens")

    split = _get(usage, "cache_creation")
    if split is None:
        write_5m, write_1h = writes, 0
    else:
        if isinstance(split, str | bytes | int | float):
            raise InvalidArgumentType(
                "usage cache_creation must be a CacheCreation or a mapping, "
                f"got {type(split).__name__}"
            )
        split_5m = count(split, "ephemeral_5m_input_tokens")
        split_1h = count(split, "ephemeral_1h_input_tokens")
        if _get(usage, "cache_creation_input_tokens") is None:
            writes = split_5m + split_1h
        if split_5m + split_1h > writes:
            raise InvalidArgument(
                f"usage cache_creation splits {split_5m + split_1h} tokens but "
                f"cache_creation_input_tokens is {writes}"
            )
        # Writes the split does not account for are 5-minute writes, the default TTL.
        write_5m, write_1h = writes - split_1h, split_1h

    if _optional_str(_get(usage, "speed"), "speed") == "fast":
        raise MissingPrice("fast mode (speed='fast') is not priced by this table")
    tier = _optional_str(_get(usage, "service_tier"), "service_tier")
    return _Counts(
        input=input_tokens,
        cache_write_5m=write_5m,
        cache_write_1h=write_1h,
        cache_read=cache_read,
        output=output_tokens,
        batch=tier == "batch",
    )


def token_counts(usage: object) -> dict[str, int]:
    """A usage's token counts by kind (the table's kinds: input, cache_write_5m, ...).

    The same reading :meth:`Pricing.cost` prices, for the ledger to record.
    """
    counts = _read_usage(usage)
    return {kind: count for kind, count in counts.by_kind() if count}


def _usd(terms: Iterable[tuple[int, Decimal]]) -> Decimal:
    """Sum of ``tokens * price`` over ``terms``, converted from per-MTok to USD, exactly."""
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        ctx.traps[Inexact] = True
        try:
            total = sum((Decimal(tokens) * price for tokens, price in terms), Decimal(0))
            return total.scaleb(-6)
        except Inexact:
            raise InvalidArgument("token counts are too large to price exactly") from None


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentType(f"{name} must be a bool, got {type(value).__name__}")
    return value


class Pricing:
    """A price table: model IDs (and their aliases) to :class:`ModelPrice`.

    ``models`` maps each canonical model ID to its prices; the aliases of each
    :class:`ModelPrice` resolve to it too.  ``fallback``, when given, prices any
    model the table does not know; without it an unknown model raises
    :class:`~ratelimit.errors.UnknownModel`.  Instances are immutable.
    """

    __slots__ = ("_checked", "_fallback", "_index", "_models", "_sources")

    def __init__(
        self,
        models: Mapping[str, ModelPrice],
        *,
        fallback: ModelPrice | None = None,
        checked: str | None = None,
        sources: Sequence[str] = (),
    ) -> None:
        """Build a table; ``checked`` and ``sources`` record when and where prices were read."""
        if not isinstance(models, Mapping):
            raise InvalidArgumentType(f"models must be a mapping, got {type(models).__name__}")
        if fallback is not None and not isinstance(fallback, ModelPrice):
            raise InvalidArgumentType(
                f"fallback must be a ModelPrice, got {type(fallback).__name__}"
            )
        if checked is not None and not isinstance(checked, str):
            raise InvalidArgumentType(f"checked must be a str, got {type(checked).__name__}")
        if isinstance(sources, str) or not all(isinstance(s, str) for s in sources):
            raise InvalidArgumentType("sources must be a sequence of str")
        index: dict[str, str] = {}
        for model_id, price in models.items():
            _check_model_id(model_id)
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
        self._models: Mapping[str, ModelPrice] = MappingProxyType(dict(models))
        self._index: Mapping[str, str] = MappingProxyType(index)
        self._fallback = fallback
        self._checked = checked
        self._sources = tuple(sources)

    # -- construction -----------------------------------------------------

    @classmethod
    def default(cls) -> Pricing:
        """The price table shipped with the package (``ratelimit/prices.toml``), loaded once."""
        return _default_pricing()

    @classmethod
    def from_file(cls, path: str | PathLike[str], *, base: Pricing | None = None) -> Pricing:
        """Lay the price file at ``path`` over ``base`` (the packaged table when ``None``).

        The file has the format of ``ratelimit/prices.toml``.  Each of its
        models replaces the base entry with the same ID whole (prices, aliases
        and tiers); an ID or alias the file claims is taken from whichever base
        entry had it; other base entries stay.  A ``[fallback]`` table in the
        file (prices only) becomes the fallback, otherwise ``base``'s is kept.
        To load a file on its own, pass ``base=Pricing({})``.
        """
        file = Path(path)
        loaded = _parse_document(file.read_text(encoding="utf-8"), str(file))
        under = cls.default() if base is None else base
        if not isinstance(under, Pricing):
            raise InvalidArgumentType(f"base must be a Pricing, got {type(under).__name__}")
        claimed = set(loaded.models)
        for price in loaded.models.values():
            claimed.update(price.aliases)
        merged: dict[str, ModelPrice] = {}
        for model_id, price in under._models.items():
            if model_id in claimed:
                continue
            kept = tuple(a for a in price.aliases if a not in claimed)
            merged[model_id] = price if kept == price.aliases else replace(price, aliases=kept)
        merged.update(loaded.models)
        return cls(
            merged,
            fallback=loaded.fallback if loaded.fallback is not None else under._fallback,
            checked=loaded.checked if loaded.checked is not None else under._checked,
            sources=loaded.sources or under._sources,
        )

    def with_fallback(self, price: ModelPrice | None) -> Pricing:
        """A copy of this table that prices unknown models at ``price`` (``None`` removes it)."""
        return Pricing(self._models, fallback=price, checked=self._checked, sources=self._sources)

    # -- lookup -----------------------------------------------------------

    @property
    def fallback(self) -> ModelPrice | None:
        """The prices used for unknown models, if any."""
        return self._fallback

    @property
    def checked(self) -> str | None:
        """The date (ISO, ``YYYY-MM-DD``) the prices were last checked against their sources."""
        return self._checked

    @property
    def sources(self) -> tuple[str, ...]:
        """Where the prices come from (URLs)."""
        return self._sources

    def models(self) -> list[str]:
        """The canonical IDs of every model in the table, sorted."""
        return sorted(self._models)

    def __contains__(self, model: object) -> bool:
        """Whether ``model`` is a canonical ID or an alias in the table (fallback aside)."""
        return isinstance(model, str) and model in self._index

    def resolve(self, model: str) -> str:
        """The canonical ID of ``model`` (an ID or alias); unknown models raise ``UnknownModel``.

        The fallback price does not apply here: it prices unknown models but
        gives them no canonical ID.
        """
        _check_model_id(model)
        try:
            return self._index[model]
        except KeyError:
            raise UnknownModel(f"no price for model {model!r} in the price table") from None

    def price(self, model: str) -> ModelPrice:
        """The prices of ``model`` (an ID or alias), or the fallback for an unknown model."""
        _check_model_id(model)
        canonical = self._index.get(model)
        if canonical is not None:
            return self._models[canonical]
        if self._fallback is not None:
            return self._fallback
        raise UnknownModel(
            f"no price for model {model!r} in the price table and no fallback price is configured"
        )

    # -- costs ------------------------------------------------------------

    def cost(
        self, model: str, usage: UsageLike | Mapping[str, object], *, batch: bool = False
    ) -> Decimal:
        """The exact cost in USD of one request to ``model`` that used ``usage``.

        ``usage`` is an ``anthropic.types.Usage`` (``message.usage``) or a
        mapping with the same keys; missing or ``None`` counts are 0.  ``batch``
        (or ``service_tier == "batch"`` in the usage) selects Batch API prices.
        See the module documentation for how each count is priced.  Raises
        ``UnknownModel`` for an unknown model without fallback,
        ``InvalidArgumentType``/``InvalidArgument`` for a count that is not a
        non-negative int, and :class:`MissingPrice` for a non-zero count of a
        kind the model has no price for.
        """
        _check_flag(batch, "batch")
        price = self.price(model)
        counts = _read_usage(usage)
        batch = batch or counts.batch
        rates = price.rates_for(counts.prompt)
        terms: list[tuple[int, Decimal]] = []
        for kind, tokens in counts.by_kind():
            if tokens == 0:
                continue
            rate = rates.rate(kind, batch=batch)
            if rate is None:
                raise MissingPrice(
                    f"no {'batch ' if batch else ''}{kind} price for model {model!r} "
                    f"in the price table ({tokens} tokens to price)"
                )
            terms.append((tokens, rate))
        return _usd(terms)

    def token_counts(self, usage: UsageLike | Mapping[str, object]) -> dict[str, int]:
        """``usage``'s token counts by kind, as :meth:`cost` reads them (for the ledger)."""
        return token_counts(usage)

    def max_cost(
        self,
        model: str,
        *,
        input_tokens: int,
        max_output_tokens: int,
        batch: bool = False,
    ) -> Decimal:
        """The most a request can cost in USD, known before it is sent.

        ``input_tokens`` is the whole prompt (as ``count_tokens`` reports it,
        cached or not) and ``max_output_tokens`` the request's ``max_tokens``.
        The prompt length picks the tier.  Since a prompt token may end up as a
        cache write, which costs more than plain input (1.25x for 5 minutes, 2x
        for 1 hour on most models), every input token is priced at the highest
        published input-side price of that tier (input, 5-minute write, 1-hour
        write, cache read); output tokens at the output price.  The actual
        :meth:`cost` of the request is never higher.
        """
        _check_flag(batch, "batch")
        _check_count(input_tokens, "input_tokens")
        _check_count(max_output_tokens, "max_output_tokens")
        rates = self.price(model).rates_for(input_tokens)
        input_side = [r for k in _INPUT_SIDE if (r := rates.rate(k, batch=batch)) is not None]
        output = rates.rate("output", batch=batch)
        if not input_side or output is None:
            raise MissingPrice(f"no {'batch ' if batch else ''}prices for model {model!r}")
        return _usd([(input_tokens, max(input_side)), (max_output_tokens, output)])

    def __repr__(self) -> str:
        """A short description: the number of models, the check date and the fallback."""
        return (
            f"Pricing({len(self._models)} models, checked={self._checked!r}, "
            f"fallback={'yes' if self._fallback is not None else 'no'})"
        )


# -- the file format --------------------------------------------------------


@dataclass(frozen=True)
class _Document:
    models: dict[str, ModelPrice]
    fallback: ModelPrice | None
    checked: str | None
    sources: tuple[str, ...]


_TOP_KEYS: Final = frozenset({"checked", "source", "sources", "models", "fallback"})
_ENTRY_KEYS: Final = frozenset({"name", "aliases", "tiers", *_PRICE_FIELDS})
_TIER_KEYS: Final = frozenset({"above_prompt_tokens", *_PRICE_FIELDS})


def _table(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{where} must be a table")
    return value


def _reject_unknown(table: Mapping[str, object], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InvalidArgument(
            f"{where}: unknown key(s) {unknown}; expected some of {sorted(allowed)}"
        )


class _PriceArgs(TypedDict):
    input: Decimal
    output: Decimal
    cache_write_5m: Decimal | None
    cache_write_1h: Decimal | None
    cache_read: Decimal | None
    batch_input: Decimal | None
    batch_output: Decimal | None
    batch_cache_write_5m: Decimal | None
    batch_cache_write_1h: Decimal | None
    batch_cache_read: Decimal | None


def _prices(table: Mapping[str, object], where: str) -> _PriceArgs:
    def required(name: str) -> Decimal:
        if name not in table:
            raise InvalidArgument(f"{where}: {name!r} price is required")
        return _price_value(table[name], f"{where}.{name}")

    def optional(name: str) -> Decimal | None:
        return _price_value(table[name], f"{where}.{name}") if name in table else None

    return _PriceArgs(
        input=required("input"),
        output=required("output"),
        cache_write_5m=optional("cache_write_5m"),
        cache_write_1h=optional("cache_write_1h"),
        cache_read=optional("cache_read"),
        batch_input=optional("batch_input"),
        batch_output=optional("batch_output"),
        batch_cache_write_5m=optional("batch_cache_write_5m"),
        batch_cache_write_1h=optional("batch_cache_write_1h"),
        batch_cache_read=optional("batch_cache_read"),
    )


def _parse_entry(value: object, where: str) -> ModelPrice:
    table = _table(value, where)
    _reject_unknown(table, _ENTRY_KEYS, where)
    name = table.get("name", "")
    if not isinstance(name, str):
        raise InvalidArgument(f"{where}.name must be a string")
    aliases = table.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise InvalidArgument(f"{where}.aliases must be a list of strings")
    raw_tiers = table.get("tiers", [])
    if not isinstance(raw_tiers, list):
        raise InvalidArgument(f"{where}.tiers must be an array of tables")
    tiers: list[PriceTier] = []
    for i, raw in enumerate(raw_tiers):
        tier_where = f"{where}.tiers[{i}]"
        tier_table = _table(raw, tier_where)
        _reject_unknown(tier_table, _TIER_KEYS, tier_where)
        if "above_prompt_tokens" not in tier_table:
            raise InvalidArgument(f"{tier_where}: 'above_prompt_tokens' is required")
        threshold = tier_table["above_prompt_tokens"]
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise InvalidArgument(f"{tier_where}.above_prompt_tokens must be an integer")
        try:
            tiers.append(
                PriceTier(above_prompt_tokens=threshold, **_prices(tier_table, tier_where))
            )
        except InvalidArgument as exc:
            raise InvalidArgument(f"{tier_where}: {exc}") from None
    try:
        return ModelPrice(
            name=name,
            aliases=tuple(aliases),
            tiers=tuple(tiers),
            **_prices(table, where),
        )
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {exc}") from None


def _parse_document(text: str, origin: str) -> _Document:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{origin}: not valid TOML: {exc}") from None
    _reject_unknown(data, _TOP_KEYS, origin)
    checked = data.get("checked")
    if checked is not None and not isinstance(checked, str):
        raise InvalidArgument(f"{origin}: 'checked' must be a string date")
    sources: list[str] = []
    for key in ("source", "sources"):
        value = data.get(key)
        if value is None:
            continue
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise InvalidArgument(f"{origin}: {key!r} must be a string or a list of strings")
        sources.extend(items)
    models: dict[str, ModelPrice] = {}
    for model_id, entry in _table(data.get("models", {}), f"{origin}: models").items():
        where = f"{origin}: models.{model_id!r}"
        try:
            _check_model_id(model_id)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: {exc}") from None
        models[model_id] = _parse_entry(entry, where)
    fallback = None
    if "fallback" in data:
        fallback = _parse_entry(data["fallback"], f"{origin}: fallback")
        if fallback.aliases:
            raise InvalidArgument(f"{origin}: fallback cannot have aliases")
    try:
        # Builds the alias index once, so conflicting IDs in the file are reported here.
        Pricing(models)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{origin}: {exc}") from None
    return _Document(models=models, fallback=fallback, checked=checked, sources=tuple(sources))


@functools.cache
def _default_pricing() -> Pricing:
    resource = resources.files("ratelimit").joinpath(_DEFAULT_RESOURCE)
    loaded = _parse_document(resource.read_text(encoding="utf-8"), f"ratelimit/{_DEFAULT_RESOURCE}")
    return Pricing(
        loaded.models, fallback=loaded.fallback, checked=loaded.checked, sources=loaded.sources
    )
