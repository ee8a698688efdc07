"""One scope's validated configuration, and its part of a script's arguments.

A scope is a named quota: a set of dimensions (rates, at most one budget)
that every process building a limiter with the same name shares in Redis.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

from ratelimit.core.calls import ScriptArg
from ratelimit.core.keys import ALERT_CHANNEL, ScopeKeys
from ratelimit.core.numbers import MICRO, positive
from ratelimit.core.settings import Budget, Rate, Retention, period_holding, zone
from ratelimit.errors import InvalidArgument, InvalidArgumentType

#: Dimension names are Python identifiers (they are keyword arguments); names
#: that would shadow an argument of acquire() or settle() are refused.
DIMENSION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_NAMES = frozenset({"timeout", "model", "tags", "usage", "remaining"})

OnRedisError = Literal["raise", "allow", "deny"]
ON_REDIS_ERROR: tuple[OnRedisError, ...] = ("raise", "allow", "deny")

DEFAULT_LEASE_S = 600.0


def validate_name(name: object, what: str = "name") -> str:
    """A non-empty string, or a typed error naming ``what``."""
    if not isinstance(name, str):
        raise InvalidArgumentType(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidArgument(f"{what} must not be empty")
    return name


def validate_flag(value: object, what: str) -> bool:
    """A ``bool`` (not merely truthy), or a typed error naming ``what``."""
    if not isinstance(value, bool):
        raise InvalidArgumentType(f"{what} must be a bool, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class RateDim:
    """A rate dimension as the scripts take it: capacity and refill fraction."""

    name: str
    rate: Rate
    capacity_micro: int
    num: int
    den: int

    @property
    def setting(self) -> str:
        """``"<cap>:<num>:<den>"``, as the scripts store and compare it (lua/lib/rates.lua)."""
        return f"{self.capacity_micro}:{self.num}:{self.den}"


@dataclass(frozen=True)
class BudgetDim:
    """A budget dimension as the scripts take it: limit and alert thresholds."""

    name: str
    budget: Budget
    limit_nano: int
    thresholds: str


@dataclass(frozen=True)
class ScopeSpec:
    """One limiter's configuration: its name, dimensions and keys.

    All keys share the hash tag ``{slot}`` (by default the scope's name), so a
    scope lives in one Redis Cluster slot; scopes given the same ``slot`` are
    checked together in one script call.
    """

    name: str
    slot: str
    rates: tuple[RateDim, ...]
    budget: BudgetDim | None
    lease_us: int
    on_redis_error: OnRedisError
    retention: Retention
    day_zone: ZoneInfo

    @classmethod
    def build(
        cls,
        name: object,
        dimensions: Mapping[str, object],
        *,
        slot: object = None,
        lease_s: object = DEFAULT_LEASE_S,
        on_redis_error: object = "raise",
        retention: object = None,
    ) -> ScopeSpec:
        """Validate a limiter's arguments; raises InvalidArgument* on any bad one."""
        scope = validate_name(name)
        tag = scope if slot is None else validate_name(slot, "slot")
        if not dimensions:
            raise InvalidArgument("a limiter needs at least one dimension, e.g. requests=Rate(...)")
        if on_redis_error not in ON_REDIS_ERROR:
            raise InvalidArgument(
                f"on_redis_error must be one of {ON_REDIS_ERROR}, got {on_redis_error!r}"
            )
        lease_us = math.ceil(positive(lease_s, "lease_s") * MICRO)
        if retention is None:
            retention = Retention()
        elif not isinstance(retention, Retention):
            raise InvalidArgumentType(
                f"retention must be a Retention, not {type(retention).__name__}"
            )
        rates: list[RateDim] = []
        budget: BudgetDim | None = None
        for dim_name, spec in dimensions.items():
            if not DIMENSION_NAME.match(dim_name) or dim_name in RESERVED_NAMES:
                raise InvalidArgument(f"invalid dimension name {dim_name!r}")
            if isinstance(spec, Rate):
                num, den = spec.refill_fraction()
                rates.append(RateDim(dim_name, spec, spec.capacity_micro, num, den))
            elif isinstance(spec, Budget):
                if budget is not None:
                    raise InvalidArgument(
                        "a limiter holds one Budget; put a second one (say, monthly beside "
                        "daily) in its own limiter and combine them with LimiterGroup"
                    )
                thresholds = ",".join(f"{ppm}:{nano}" for ppm, nano in spec.thresholds())
                budget = BudgetDim(dim_name, spec, spec.limit_nano, thresholds)
            else:
                raise InvalidArgumentType(
                    f"dimension {dim_name!r} needs a Rate or a Budget, not {type(spec).__name__}"
                )
        if retention.tz is not None:
            day_zone = zone(retention.tz, "Retention tz")
        else:
            day_zone = budget.budget.zone if budget else ZoneInfo("UTC")
        return cls(scope, tag, tuple(rates), budget, lease_us, on_redis_error, retention, day_zone)

    @property
    def keys(self) -> ScopeKeys:
        """The scope's Redis keys."""
        return ScopeKeys(self.name, self.slot)

    def template(self, instant_us: int) -> BlockTemplate:
        """This scope's part of a script's ARGV (see lua/lib/args.lua), for
        the budget period around ``instant_us``, with its amounts and its floor
        left to fill in (:meth:`BlockTemplate.fill`)."""
        args: list[ScriptArg] = [self.name, len(self.rates)]
        amounts: list[tuple[int, str]] = []
        for d in self.rates:
            args += [d.name, d.setting]
            amounts.append((len(args), d.name))
            args.append(0)
        b = self.budget
        if b is None:
            return BlockTemplate([*args, 0], amounts, None, "", -(2**63), 2**63)
        start, end, label = period_holding(instant_us, b.budget.zone, b.budget.per)
        day_start, day_end, day = period_holding(instant_us, self.day_zone, "day")
        retention = self.retention
        max_age_ms = 0 if retention.max_age_s is None else math.ceil(retention.max_age_s * 1000)
        same_days = 1 if self.day_zone.key == b.budget.zone.key else 0
        args += [1, b.name, b.limit_nano]
        amounts.append((len(args), b.name))
        valid_from, valid_to = max(start, day_start), min(end, day_end)
        args += [
            0, b.thresholds, ALERT_CHANNEL, start, end, label, valid_from, valid_to, day,
            retention.maxlen, max_age_ms, 0, same_days,
        ]  # fmt: skip
        floor_at = len(args) - 2
        return BlockTemplate(args, amounts, floor_at, label, valid_from, valid_to)


@dataclass(frozen=True)
class BlockTemplate:
    """A scope's block of a script's ARGV with its amounts and floor left out.

    Valid while the instant sent lies in [``valid_from``, ``valid_to``): the
    budget's period and day are the same throughout.
    """

    args: list[ScriptArg]
    amounts: list[tuple[int, str]]
    """Where each dimension's amount goes."""
    floor_at: int | None
    """Where the budget's floor goes (None: no budget)."""
    label: str
    """The budget period the floor must have been seen in."""
    valid_from: int
    valid_to: int
