"""Reading a provider's usage record: token counts by the kinds a price card prices.

A usage is read by attribute or by key, so ``anthropic.types.Usage`` objects
and plain mappings both work, and nothing here imports ``anthropic``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from ratelimit.errors import InvalidArgument, InvalidArgumentType, MissingPrice
from ratelimit.pricing.cards import TokenKind, validate_token_count


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


@dataclass(frozen=True)
class TokenCounts:
    """Token counts of one request by kind, and whether it went through the Batch API."""

    input: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    output: int
    batch: bool

    @property
    def prompt(self) -> int:
        """The prompt's length as the long-context tiers count it: every input-side token."""
        return self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read

    def by_kind(self) -> Iterable[tuple[TokenKind, int]]:
        """Each kind with its count, zero counts included."""
        yield "input", self.input
        yield "cache_write_5m", self.cache_write_5m
        yield "cache_write_1h", self.cache_write_1h
        yield "cache_read", self.cache_read
        yield "output", self.output


#: The fields that count tokens: a usage states at least one.
_USAGE_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
)

#: Every key of the API's usage object (``anthropic.types.Usage``): a mapping
#: given as a usage holds these only.
USAGE_KEYS: Final = frozenset(
    {
        *_USAGE_FIELDS,
        "server_tool_use",
        "service_tier",
        "speed",
        "inference_geo",
        "output_tokens_details",
    }
)


def field_of(item: object, name: str) -> object:
    """A field of an API object given as a mapping or as an SDK object (None if absent).

    The provider's records (a usage, a content block) reach us both ways: as
    ``anthropic`` models, or as the plain dicts a caller wrote.
    """
    if isinstance(item, Mapping):
        return item.get(name)
    return getattr(item, name, None)


def _optional_str(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidArgumentType(f"usage {name} must be a str or None, got {type(value).__name__}")


def read_usage(usage: object) -> TokenCounts:
    """A usage's counts by kind; typed errors for anything that is not a usage.

    Cache writes are split into 5-minute and 1-hour writes by
    ``cache_creation``; writes the split does not account for are 5-minute
    writes, the API's default TTL. Fast mode (``speed == "fast"``) raises
    :class:`~ratelimit.errors.MissingPrice`: its prices are not in the table.
    """
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

    if isinstance(usage, Mapping):
        # A typo must not price a call at $0: every key is one a usage has.
        unknown = sorted(str(key) for key in usage if key not in USAGE_KEYS)
        if unknown:
            raise InvalidArgument(
                f"usage has unknown keys {unknown}; a usage has {sorted(USAGE_KEYS)}"
            )
    if all(field_of(usage, key) is None for key in _USAGE_FIELDS):
        raise InvalidArgument(
            f"usage has no token counts: give at least one of {list(_USAGE_FIELDS)}"
        )

    def count(source: object, key: str) -> int:
        value = field_of(source, key)
        return 0 if value is None else validate_token_count(value, f"usage {key}")

    input_tokens = count(usage, "input_tokens")
    output_tokens = count(usage, "output_tokens")
    cache_read = count(usage, "cache_read_input_tokens")
    writes = count(usage, "cache_creation_input_tokens")

    split = field_of(usage, "cache_creation")
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
        if field_of(usage, "cache_creation_input_tokens") is None:
            writes = split_5m + split_1h
        if split_5m + split_1h > writes:
            raise InvalidArgument(
                f"usage cache_creation splits {split_5m + split_1h} tokens but "
                f"cache_creation_input_tokens is {writes}"
            )
        # Writes the split does not account for are 5-minute writes, the default TTL.
        write_5m, write_1h = writes - split_1h, split_1h

    if _optional_str(field_of(usage, "speed"), "speed") == "fast":
        raise MissingPrice("fast mode (speed='fast') is not priced by this table")
    tier = _optional_str(field_of(usage, "service_tier"), "service_tier")
    return TokenCounts(
        input=input_tokens,
        cache_write_5m=write_5m,
        cache_write_1h=write_1h,
        cache_read=cache_read,
        output=output_tokens,
        batch=tier == "batch",
    )


def token_counts(usage: object) -> dict[str, int]:
    """A usage's token counts by kind (the table's kinds: input, cache_write_5m, ...).

    The same reading :meth:`~ratelimit.pricing.Pricing.cost` prices, for the
    ledger to record.
    """
    counts = read_usage(usage)
    return {kind: count for kind, count in counts.by_kind() if count}
