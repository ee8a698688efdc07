"""The price table: model IDs and aliases to their prices, and the exact cost of a usage.

See :mod:`ratelimit.pricing` for how each kind of token is priced.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal, Inexact, localcontext
from importlib import resources
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Final

from ratelimit.core.scope import validate_flag
from ratelimit.errors import InvalidArgument, InvalidArgumentType, MissingPrice, UnknownModel
from ratelimit.pricing.cards import (
    INPUT_SIDE,
    ModelPrice,
    model_index,
    validate_model_id,
    validate_token_count,
)
from ratelimit.pricing.price_file import parse_price_file
from ratelimit.pricing.usage import UsageLike, read_usage, token_counts

# Enough digits to multiply any sane token count by any price exactly; a result
# that would need more raises instead of being rounded.
_PRECISION: Final = 80

_DEFAULT_RESOURCE: Final = "prices.toml"
"""The packaged price file, beside this module."""


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
        index = model_index(models)
        self._models: Mapping[str, ModelPrice] = MappingProxyType(dict(models))
        self._index: Mapping[str, str] = MappingProxyType(index)
        self._fallback = fallback
        self._checked = checked
        self._sources = tuple(sources)

    # -- construction -----------------------------------------------------

    @classmethod
    def default(cls) -> Pricing:
        """The packaged price table (``ratelimit/pricing/prices.toml``), loaded once."""
        return _default_pricing()

    @classmethod
    def from_file(cls, path: str | PathLike[str], *, base: Pricing | None = None) -> Pricing:
        """Lay the price file at ``path`` over ``base`` (the packaged table when ``None``).

        The file has the format of ``ratelimit/pricing/prices.toml``.  Each of its
        models replaces the base entry with the same ID whole (prices, aliases
        and tiers); an ID or alias the file claims is taken from whichever base
        entry had it; other base entries stay.  A ``[fallback]`` table in the
        file (prices only) becomes the fallback, otherwise ``base``'s is kept.
        To load a file on its own, pass ``base=Pricing({})``.
        """
        file = Path(path)
        loaded = parse_price_file(file.read_text(encoding="utf-8"), str(file))
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
        validate_model_id(model)
        try:
            return self._index[model]
        except KeyError:
            raise UnknownModel(f"no price for model {model!r} in the price table") from None

    def price(self, model: str) -> ModelPrice:
        """The prices of ``model`` (an ID or alias), or the fallback for an unknown model."""
        validate_model_id(model)
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
        validate_flag(batch, "batch")
        price = self.price(model)
        counts = read_usage(usage)
        batch = batch or counts.batch
        card = price.card_for(counts.prompt)
        terms: list[tuple[int, Decimal]] = []
        for kind, tokens in counts.by_kind():
            if tokens == 0:
                continue
            usd_per_mtok = card.usd_per_mtok(kind, batch=batch)
            if usd_per_mtok is None:
                raise MissingPrice(
                    f"no {'batch ' if batch else ''}{kind} price for model {model!r} "
                    f"in the price table ({tokens} tokens to price)"
                )
            terms.append((tokens, usd_per_mtok))
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
        validate_flag(batch, "batch")
        validate_token_count(input_tokens, "input_tokens")
        validate_token_count(max_output_tokens, "max_output_tokens")
        card = self.price(model).card_for(input_tokens)
        input_side = [p for k in INPUT_SIDE if (p := card.usd_per_mtok(k, batch=batch)) is not None]
        output = card.usd_per_mtok("output", batch=batch)
        if not input_side or output is None:
            raise MissingPrice(f"no {'batch ' if batch else ''}prices for model {model!r}")
        return _usd([(input_tokens, max(input_side)), (max_output_tokens, output)])

    def __repr__(self) -> str:
        """A short description: the number of models, the check date and the fallback."""
        return (
            f"Pricing({len(self._models)} models, checked={self._checked!r}, "
            f"fallback={'yes' if self._fallback is not None else 'no'})"
        )


@functools.cache
def _default_pricing() -> Pricing:
    resource = resources.files("ratelimit.pricing").joinpath(_DEFAULT_RESOURCE)
    origin = f"ratelimit/pricing/{_DEFAULT_RESOURCE}"
    loaded = parse_price_file(resource.read_text(encoding="utf-8"), origin)
    return Pricing(
        loaded.models, fallback=loaded.fallback, checked=loaded.checked, sources=loaded.sources
    )
