"""The price file format: a TOML document of model price cards, read and checked.

The packaged table, ``ratelimit/pricing/prices.toml``, documents the format in
its header: top-level ``checked`` (a date) and ``source``/``sources``; one
``[models."<id>"]`` table per model with its prices (USD per million tokens,
as decimal strings), ``name``, ``aliases`` and ``[[models."<id>".tiers]]``;
and an optional ``[fallback]`` card. Every unknown key is refused, so a typo
cannot silently leave a price out.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, TypedDict

from ratelimit.errors import InvalidArgument
from ratelimit.pricing.cards import (
    PRICE_FIELDS,
    ModelPrice,
    PriceTier,
    model_index,
    price_value,
    validate_model_id,
)


@dataclass(frozen=True)
class PriceDocument:
    """One price file, read: its models, fallback card, check date and sources."""

    models: dict[str, ModelPrice]
    fallback: ModelPrice | None
    checked: str | None
    sources: tuple[str, ...]


_TOP_KEYS: Final = frozenset({"checked", "source", "sources", "models", "fallback"})
_ENTRY_KEYS: Final = frozenset({"name", "aliases", "tiers", *PRICE_FIELDS})
_TIER_KEYS: Final = frozenset({"above_prompt_tokens", *PRICE_FIELDS})


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
        return price_value(table[name], f"{where}.{name}")

    def optional(name: str) -> Decimal | None:
        return price_value(table[name], f"{where}.{name}") if name in table else None

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


def parse_price_file(text: str, origin: str) -> PriceDocument:
    """Read a price file's ``text``; every error names ``origin`` (the file) and the entry."""
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
            validate_model_id(model_id)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: {exc}") from None
        models[model_id] = _parse_entry(entry, where)
    fallback = None
    if "fallback" in data:
        fallback = _parse_entry(data["fallback"], f"{origin}: fallback")
        if fallback.aliases:
            raise InvalidArgument(f"{origin}: fallback cannot have aliases")
    try:
        # Conflicting IDs in the file are reported here, with the file's name.
        model_index(models)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{origin}: {exc}") from None
    return PriceDocument(models=models, fallback=fallback, checked=checked, sources=tuple(sources))
