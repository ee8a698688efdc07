"""What a permit tells the ledger: its model, token counts and tags.

The scripts write a ledger entry as one msgpack record; the client packs the
parts it owns (tokens by kind, the caller's tags) here. Pricing a provider's
usage is not the core's business: a settle that gives a ``usage`` prices it
through a :class:`UsagePricer` the shell passes in (the packaged
:class:`~ratelimit.pricing.Pricing` is one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Protocol

import msgpack  # type: ignore[import-untyped]

from ratelimit.core.calls import ScriptArg
from ratelimit.core.numbers import exact
from ratelimit.core.scope import validate_name
from ratelimit.errors import InvalidArgument, InvalidArgumentType


class UsagePricer(Protocol):
    """Prices a provider's usage record for a settle: ``settle(usage=..., model=...)``."""

    def cost(self, model: str, usage: Any) -> Decimal:
        """The exact cost in USD of ``usage`` on ``model``."""
        ...

    def token_counts(self, usage: Any) -> dict[str, int]:
        """The usage's token counts by kind, as the ledger records them."""
        ...


#: The ledger fields a settle or cancel sends after its amounts: model,
#: tokens, tags (each empty = as at acquire) and the entry's kind.
LedgerTail = list[ScriptArg]

#: A cancel's ledger tail: model, tokens and tags as at acquire, cost 0.
CANCELLED: LedgerTail = ["", b"", b"", "cancelled"]


#: An empty map, msgpack-encoded.
EMPTY_MAP = b"\x80"


def pack_tokens(tokens: Mapping[str, int | str]) -> bytes:
    """A ledger entry's tokens by kind, msgpack-encoded."""
    packed: bytes = msgpack.packb(dict(tokens))
    return packed


def pack_tags(tags: Mapping[str, object] | None) -> bytes:
    """The caller's tags, msgpack-encoded; empty when none (a settle then keeps the acquire's)."""
    if tags is None:
        return b""
    if not isinstance(tags, Mapping):
        raise InvalidArgumentType(f"tags must be a mapping, not {type(tags).__name__}")
    named = [k for k in tags if not isinstance(k, str)]
    if named:
        raise InvalidArgumentType(f"tag names must be strings, got {named[0]!r}")
    try:
        packed: bytes = msgpack.packb(dict(tags))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentType(f"tags must hold msgpack-encodable values: {exc}") from exc
    return packed


def validate_model(model: object) -> str:
    """A ledger model label: a string without newlines or '|' (it is part of a counter's field)."""
    if model is None:
        return ""
    label = validate_name(model, "model")
    if "\n" in label or "|" in label:
        raise InvalidArgument(f"model must not contain a newline or '|', got {model!r}")
    return label


def token_value(value: object) -> int | str:
    """A token count as msgpack stores it: an int when whole, else its exact decimal text."""
    number = exact(value, "token count")
    return int(number) if number == number.to_integral_value() else str(number)


def acquire_record(
    rate_names: frozenset[str],
    costs: Mapping[str, object],
    model: object,
    tags: Mapping[str, object] | None,
) -> LedgerTail:
    """What an acquire keeps for the ledger: model, reserved tokens and tags."""
    if tags is None and rate_names.isdisjoint(costs):
        return [validate_model(model), EMPTY_MAP, EMPTY_MAP]  # most acquires: a cost in USD
    tokens = {k: token_value(v) for k, v in costs.items() if k in rate_names}
    return [validate_model(model), pack_tokens(tokens), pack_tags(tags) or pack_tags({})]


def settle_inputs(
    rate_names: frozenset[str],
    budget_names: frozenset[str],
    actual: Mapping[str, object],
    *,
    model: object,
    tags: Mapping[str, object] | None,
    usage: object,
    pricer: Callable[[], UsagePricer],
) -> tuple[dict[str, object], LedgerTail]:
    """A settle's actual amounts, and its ledger model, tokens and tags.

    With a ``usage`` (an anthropic ``Usage`` or a mapping of token counts),
    the record holds its token counts by kind and, when no budget amount is
    given, the budgets are charged what ``pricer`` says that usage cost for
    ``model``.
    """
    label = validate_model(model)
    amounts = dict(actual)
    tokens = {k: token_value(v) for k, v in actual.items() if k in rate_names}
    if usage is not None:
        table = pricer()
        tokens.update(table.token_counts(usage))
        missing = budget_names - set(actual)
        if missing:
            if not label:
                raise InvalidArgument("pricing a usage needs the model it ran on: model=...")
            cost = table.cost(label, usage)
            amounts.update(dict.fromkeys(missing, cost))
    return amounts, [label, pack_tokens(tokens) if tokens else b"", pack_tags(tags), "settled"]
