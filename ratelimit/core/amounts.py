"""The dimensions of a limiter's scopes, and the validation of the amounts asked of them.

Every amount a caller gives (a cost, an actual usage, a provider's remaining
figures, a timeout) is checked here before anything is sent: an unknown
dimension, a value that is negative, not finite, of the wrong type, or larger
than can be stored or can ever fit raises a typed error, and nothing is written.
Rate dimensions are counted in micro-units, budgets in nano-dollars.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal

from ratelimit.core.numbers import (
    MAX_BUDGET_NANO,
    MAX_CAPACITY_MICRO,
    MICRO,
    exact,
    to_micro,
    to_nano,
    usd,
)
from ratelimit.core.scope import ScopeSpec
from ratelimit.errors import (
    CostExceedsCapacity,
    InvalidArgument,
    InvalidArgumentType,
    UnknownDimension,
)


class Dimensions:
    """The rate dimensions and budgets of some scopes, and their amounts' validation."""

    def __init__(self, scopes: Sequence[ScopeSpec]) -> None:
        self.scopes = tuple(scopes)
        self.budget_names = frozenset(s.budget.name for s in scopes if s.budget)
        self.rate_names = frozenset(d.name for s in scopes for d in s.rates)
        #: The rate dimensions in the order a permit id lists their reservation.
        self.rate_order = tuple(sorted(self.rate_names))
        #: Every dimension, sorted.
        self.known = tuple(sorted(self.rate_names | self.budget_names))

    def amounts(self, costs: Mapping[str, object], *, acquire: bool) -> dict[str, int]:
        """Validated amounts per dimension: micro-units, or nano-dollars for budgets.

        For acquire, ``requests`` defaults to 1 and other dimensions to 0; for
        settle, a dimension not given keeps its reservation (-1).
        """
        verb = "cost" if acquire else "actual"
        amounts: dict[str, int] = {}
        for name in self.known:
            if name not in costs:
                if acquire and name in self.budget_names:
                    # A budget that is not told the cost guards nothing.
                    raise InvalidArgument(
                        f"an admission on a budget must state its worst-case cost: "
                        f"{name}=<USD> ({name}=0 for a call that costs nothing)"
                    )
                amounts[name] = (MICRO if name == "requests" else 0) if acquire else -1
                continue
            value = costs[name]
            if name in self.budget_names:
                amounts[name] = to_nano(value, f"{verb} {name!r}")
            elif type(value) is int and 0 <= value <= MAX_CAPACITY_MICRO:
                amounts[name] = value * MICRO  # the common case, exact without Decimal
            else:
                amounts[name] = to_micro(value, f"{verb} {name!r}")
        if not costs.keys() <= amounts.keys():
            unknown = sorted(set(costs) - set(amounts))
            raise UnknownDimension(
                f"no dimension {unknown[0]!r} here; there are {list(self.known)}"
            )
        for name, amount in amounts.items():
            bound = MAX_BUDGET_NANO if name in self.budget_names else MAX_CAPACITY_MICRO
            if amount > bound:
                raise CostExceedsCapacity(
                    f"{name}={costs[name]!r} is too large to be stored exactly"
                )
        if acquire:
            self._check_fits(amounts)
        return amounts

    def _check_fits(self, amounts: Mapping[str, int]) -> None:
        for scope in self.scopes:
            for d in scope.rates:
                if amounts[d.name] > d.capacity_micro:
                    raise CostExceedsCapacity(
                        f"a cost of {Decimal(amounts[d.name]) / MICRO} {d.name} can never "
                        f"fit in {scope.name!r}, whose bucket holds "
                        f"{Decimal(d.capacity_micro) / MICRO}"
                    )
            b = scope.budget
            if b and amounts[b.name] > b.limit_nano:
                raise CostExceedsCapacity(
                    f"a cost of ${usd(amounts[b.name])} can never fit in the "
                    f"${usd(b.limit_nano)} budget of {scope.name!r}"
                )

    def remaining(self, remaining: Mapping[str, object]) -> dict[str, int]:
        """Provider figures per rate dimension, validated, in micro-units."""
        if not isinstance(remaining, Mapping):
            raise InvalidArgumentType(
                f"remaining must map rate dimensions to units, not {type(remaining).__name__}"
            )
        left: dict[str, int] = {}
        for name, value in remaining.items():
            if name not in self.rate_names:
                raise UnknownDimension(
                    f"no rate dimension {name!r}; there are {sorted(self.rate_names)}"
                )
            left[name] = to_micro(value, f"remaining {name!r}")
        return left


def wait_bound_us(timeout_s: object) -> int:
    """How long an acquire may wait, in microseconds (-1: as long as it takes)."""
    if timeout_s is None:
        return -1
    if type(timeout_s) is int and timeout_s >= 0:
        return timeout_s * MICRO
    wait = exact(timeout_s, "timeout")
    if wait < 0:
        raise InvalidArgument(f"timeout must not be negative, got {timeout_s!r}")
    return math.floor(wait * MICRO)
