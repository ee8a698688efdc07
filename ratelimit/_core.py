"""The pure core: validation, key layout, script arguments and reply parsing.

Nothing here does I/O. An operation (acquire, settle, state) is a generator
that yields :class:`ScriptCall` objects and receives their replies; the sync
:mod:`ratelimit.limiter` and the asyncio :mod:`ratelimit.asyncio` shells only
drive it (``send`` the reply, or ``throw`` the Redis error), so both clients
share every rule.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation, localcontext
from fractions import Fraction
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgpack  # type: ignore[import-untyped]
import redis.exceptions

from ratelimit.errors import (
    AcquireTimeout,
    BackendError,
    BudgetExceeded,
    CostExceedsCapacity,
    InvalidArgument,
    InvalidArgumentType,
    RedisUnavailable,
    UnknownDimension,
)
from ratelimit.pricing import Pricing, token_counts

log = logging.getLogger("ratelimit")

#: Every key starts with this prefix; bumped whenever a script's storage format changes.
KEY_PREFIX = "rl:v1:"

#: Channel on which the scripts publish every alert (tab-separated fields).
ALERT_CHANNEL = "rl:v1:alerts"

#: One unit of a rate dimension (a request, a token) is this many integer micro-units.
MICRO = 1_000_000

#: One US dollar is this many integer nano-dollars. Every published price per
#: million tokens has at most three decimals, so every token's cost is a whole
#: number of nano-dollars and sums stay exact.
NANO = 1_000_000_000

#: The Lua scripts compute in doubles: integers must stay below 2^53 to be exact.
#: Rates are reduced to num/den micro-units per microsecond with num * den below
#: this bound, which leaves the scripts' intermediate products room to spare.
_RATE_PRODUCT_LIMIT = 2**50
_MAX_CAPACITY_MICRO = 2**50
_MAX_BUDGET_NANO = 2**52

#: Dimension names are Python identifiers (they are keyword arguments); names
#: that would shadow an argument of acquire() or settle() are refused.
_DIMENSION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_NAMES = frozenset({"timeout", "model", "tags", "usage", "remaining"})

OnRedisError = Literal["raise", "allow", "deny"]
_ON_REDIS_ERROR: tuple[OnRedisError, ...] = ("raise", "allow", "deny")

DEFAULT_LEASE_S = 600.0
DEFAULT_LEDGER_MAXLEN = 1_000_000


# -- numbers -----------------------------------------------------------------


def _exact(value: object, what: str, *, strings: bool = False) -> Decimal:
    """A finite number as an exact Decimal; bools, NaN and infinity are refused.

    Strings are accepted only where ``strings`` says so (money: "0.0123").
    """
    if isinstance(value, str) and strings:
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidArgument(f"{what} must be a number, got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, int | float | Decimal | Fraction):
        raise InvalidArgumentType(f"{what} must be a number, not {type(value).__name__}")
    elif isinstance(value, Fraction):
        number = Decimal(value.numerator) / Decimal(value.denominator)
    elif isinstance(value, float):
        # The shortest repr is what the user wrote: 0.1 means one tenth.
        number = Decimal(repr(value))
    else:
        number = Decimal(value)
    if not number.is_finite():
        raise InvalidArgument(f"{what} must be finite, got {value!r}")
    return number


def _positive(value: object, what: str) -> Decimal:
    number = _exact(value, what)
    if number <= 0:
        raise InvalidArgument(f"{what} must be positive, got {value!r}")
    return number


def _scaled(value: object, what: str, scale: int, *, strings: bool = False) -> int:
    """A non-negative amount as an integer count of 1/scale units, rounded up."""
    number = _exact(value, what, strings=strings)
    if number < 0:
        raise InvalidArgument(f"{what} must not be negative, got {value!r}")
    if number.adjusted() > 30:
        raise InvalidArgument(f"{what} is too large: {value!r}")
    # Exact: enough digits for any input's own and the scale's, so the
    # product is never rounded before the ceiling rounds it up.
    with localcontext() as ctx:
        ctx.prec = max(60, len(number.as_tuple().digits) + 40)
        return math.ceil(number * scale)


def to_micro(value: object, what: str) -> int:
    """A non-negative cost in units as integer micro-units, rounded up (never under-charged)."""
    return _scaled(value, what, MICRO)


def to_nano(value: object, what: str) -> int:
    """A non-negative USD amount (number or numeric string) as nano-dollars, rounded up."""
    return _scaled(value, what, NANO, strings=True)


def usd(nano: int) -> Decimal:
    """Nano-dollars as exact US dollars."""
    return Decimal(nano) / NANO


# -- dimensions --------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """Continuous refill of ``amount`` units every ``per`` seconds.

    ``burst`` is the bucket's capacity in units (default ``amount``): how much
    can be taken at once after a quiet spell. All three must be finite and
    positive.
    """

    amount: float
    per: float = 1.0
    burst: float | None = None

    def __post_init__(self) -> None:
        _positive(self.amount, "Rate amount")
        _positive(self.per, "Rate per")
        if self.burst is not None:
            _positive(self.burst, "Rate burst")
        if self.capacity_micro < 1:
            raise InvalidArgument(f"Rate burst must hold at least one micro-unit: {self}")
        if self.capacity_micro > _MAX_CAPACITY_MICRO:
            raise InvalidArgument(f"Rate burst is too large to be stored exactly: {self}")

    @property
    def capacity(self) -> float:
        """Bucket capacity in units."""
        return float(self.amount if self.burst is None else self.burst)

    @property
    def capacity_micro(self) -> int:
        """Bucket capacity in micro-units, rounded down (never more than asked)."""
        burst = self.amount if self.burst is None else self.burst
        return math.floor(_exact(burst, "Rate burst") * MICRO)

    @property
    def rate_per_s(self) -> float:
        """Refill speed in units per second."""
        return float(self.amount) / float(self.per)

    def refill_fraction(self) -> tuple[int, int]:
        """Refill speed as (num, den) micro-units per microsecond, num * den < 2^50.

        Exact when the rate allows it; otherwise the nearest fraction below the
        true rate, so rounding can only make the bucket slower, never faster.
        """
        amount = Fraction(_exact(self.amount, "Rate amount"))
        per = Fraction(_exact(self.per, "Rate per"))
        exact = amount / per  # units/s == micro-units/us
        if exact.numerator * exact.denominator < _RATE_PRODUCT_LIMIT:
            return exact.numerator, exact.denominator
        # Largest den such that num * den stays under the limit, rounding num down.
        den = max(1, math.isqrt(max(1, _RATE_PRODUCT_LIMIT // max(1, math.ceil(exact)))))
        num = math.floor(exact * den)
        if num < 1:
            raise InvalidArgument(f"Rate is too slow to be represented: {self}")
        reduced = Fraction(num, den)
        return reduced.numerator, reduced.denominator


Period = Literal["day", "month"]


@dataclass(frozen=True)
class Budget:
    """A spending limit of ``usd`` US dollars per calendar ``per`` (day or month).

    A period runs from local midnight (or the first of the month) in the time
    zone ``tz`` to the next one, as decided by Redis time, so a day may be 23
    or 25 hours long when daylight saving changes. ``alerts`` are fractions of
    the limit; each fires once per period when the spend reaches it.
    """

    usd: Decimal | float | int | str
    per: Period = "day"
    tz: str = "UTC"
    alerts: tuple[float, ...] = (0.5, 0.8, 1.0)

    def __post_init__(self) -> None:
        limit = self.limit_nano
        if limit < 1 or limit > _MAX_BUDGET_NANO:
            raise InvalidArgument(
                f"Budget usd must be between one nano-dollar and {usd(_MAX_BUDGET_NANO)}"
            )
        if self.per not in ("day", "month"):
            raise InvalidArgument(f"Budget per must be 'day' or 'month', got {self.per!r}")
        self.zone  # noqa: B018 - validates tz
        if isinstance(self.alerts, str) or not isinstance(self.alerts, Iterable):
            raise InvalidArgumentType("Budget alerts must be a sequence of fractions")
        for threshold in self.alerts:
            _positive(threshold, "Budget alert threshold")

    @property
    def limit_usd(self) -> Decimal:
        """The limit in exact US dollars."""
        return _exact(self.usd, "Budget usd", strings=True)

    @property
    def limit_nano(self) -> int:
        """The limit in nano-dollars, rounded down (never more than asked)."""
        return math.floor(self.limit_usd * NANO)

    @property
    def zone(self) -> ZoneInfo:
        """The budget's time zone."""
        if not isinstance(self.tz, str) or not self.tz:
            raise InvalidArgumentType(f"Budget tz must be an IANA zone name, got {self.tz!r}")
        try:
            return ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidArgument(f"unknown time zone {self.tz!r}") from exc

    def thresholds(self) -> list[tuple[int, int]]:
        """Each alert as (parts per million of the limit, nano-dollars), ascending."""
        limit = self.limit_usd
        points = sorted({_exact(t, "Budget alert threshold") for t in self.alerts})
        return [(math.ceil(t * MICRO), math.ceil(t * limit * NANO)) for t in points]

    def periods_around(self, instant_us: int) -> tuple[list[int], list[str]]:
        """Starts (µs) of the periods before, holding and after ``instant_us``, plus one more."""
        return calendar_around(instant_us, self.zone, self.per)


def calendar_around(instant_us: int, zone: ZoneInfo, per: Period) -> tuple[list[int], list[str]]:
    """Four period starts in microseconds and the labels of the three periods between them.

    The middle period holds ``instant_us``; the others give the scripts room
    to place a Redis time that differs from this estimate by up to a period.
    """
    local = datetime.fromtimestamp(instant_us / MICRO, zone)
    if per == "day":
        day = local.date()
        dates = [day + timedelta(days=k) for k in (-1, 0, 1, 2)]
        starts = [datetime(d.year, d.month, d.day, tzinfo=zone) for d in dates]
        labels = [d.isoformat() for d in dates[:3]]
    else:
        months = [(local.year * 12 + local.month - 1) + k for k in (-1, 0, 1, 2)]
        starts = [datetime(m // 12, m % 12 + 1, 1, tzinfo=zone) for m in months]
        labels = [f"{m // 12:04d}-{m % 12 + 1:02d}" for m in months[:3]]
    return [round(s.timestamp() * MICRO) for s in starts], labels


@dataclass(frozen=True)
class _RateDim:
    name: str
    rate: Rate
    capacity_micro: int
    num: int
    den: int


@dataclass(frozen=True)
class _BudgetDim:
    name: str
    budget: Budget
    limit_nano: int
    thresholds: str


def validate_name(name: object, what: str = "name") -> str:
    if not isinstance(name, str):
        raise InvalidArgumentType(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidArgument(f"{what} must not be empty")
    return name


def escape_name(name: str) -> str:
    """A name made safe for a key: braces (hash-tag delimiters) and % escaped."""
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@dataclass(frozen=True)
class Ledger:
    """Where a budgeted scope records its settlements, and for how long.

    ``maxlen`` bounds the ledger stream by entries (approximately, as
    ``XADD MAXLEN ~``); ``max_age_s``, when given, bounds it by age instead.
    Daily spend counters are kept per calendar day of ``tz`` (default: the
    budget's zone).
    """

    maxlen: int = DEFAULT_LEDGER_MAXLEN
    max_age_s: float | None = None
    tz: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.maxlen, bool) or not isinstance(self.maxlen, int) or self.maxlen < 0:
            raise InvalidArgument(f"Ledger maxlen must be a non-negative int, got {self.maxlen!r}")
        if self.max_age_s is not None:
            _positive(self.max_age_s, "Ledger max_age_s")


@dataclass(frozen=True)
class ScopeSpec:
    """One limiter's configuration: its name, dimensions and keys.

    All keys share the hash tag ``{slot}`` (by default the scope's name), so a
    scope lives in one Redis Cluster slot; scopes given the same ``slot`` are
    checked together in one script call.
    """

    name: str
    slot: str
    rates: tuple[_RateDim, ...]
    budget: _BudgetDim | None
    lease_us: int
    on_redis_error: OnRedisError
    ledger: Ledger
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
        ledger: object = None,
    ) -> ScopeSpec:
        """Validate a limiter's arguments; raises InvalidArgument* on any bad one."""
        scope = validate_name(name)
        tag = scope if slot is None else validate_name(slot, "slot")
        if not dimensions:
            raise InvalidArgument("a limiter needs at least one dimension, e.g. requests=Rate(...)")
        if on_redis_error not in _ON_REDIS_ERROR:
            raise InvalidArgument(
                f"on_redis_error must be one of {_ON_REDIS_ERROR}, got {on_redis_error!r}"
            )
        lease_us = math.ceil(_positive(lease_s, "lease_s") * MICRO)
        if ledger is None:
            ledger = Ledger()
        elif not isinstance(ledger, Ledger):
            raise InvalidArgumentType(f"ledger must be a Ledger, not {type(ledger).__name__}")
        rates: list[_RateDim] = []
        budget: _BudgetDim | None = None
        for dim_name, spec in dimensions.items():
            if not _DIMENSION_NAME.match(dim_name) or dim_name in RESERVED_NAMES:
                raise InvalidArgument(f"invalid dimension name {dim_name!r}")
            if isinstance(spec, Rate):
                num, den = spec.refill_fraction()
                rates.append(_RateDim(dim_name, spec, spec.capacity_micro, num, den))
            elif isinstance(spec, Budget):
                if budget is not None:
                    raise InvalidArgument(
                        "a limiter holds one Budget; put a second one (say, monthly beside "
                        "daily) in its own limiter and combine them with LimiterGroup"
                    )
                thresholds = ",".join(f"{ppm}:{nano}" for ppm, nano in spec.thresholds())
                budget = _BudgetDim(dim_name, spec, spec.limit_nano, thresholds)
            else:
                raise InvalidArgumentType(
                    f"dimension {dim_name!r} needs a Rate or a Budget, not {type(spec).__name__}"
                )
        if ledger.tz is not None:
            day_zone = Budget(1, tz=ledger.tz).zone
        else:
            day_zone = budget.budget.zone if budget else ZoneInfo("UTC")
        return cls(
            scope,
            tag,
            tuple(rates),
            budget,
            lease_us,
            on_redis_error,
            ledger,
            day_zone,
        )

    def key(self, suffix: str) -> str:
        return f"{KEY_PREFIX}{{{escape_name(self.slot)}}}:{escape_name(self.name)}:{suffix}"

    @property
    def state_key(self) -> str:
        """Hash of the scope's rate buckets and budget."""
        return self.key("s")

    @property
    def ledger_key(self) -> str:
        """Stream of the scope's settled and reclaimed permits."""
        return self.key("ledger")

    @property
    def spend_key(self) -> str:
        """Hash of nano-dollars settled per ``<day>|<model>``."""
        return self.key("spend")

    @property
    def alerts_key(self) -> str:
        """Stream of the scope's budget alerts."""
        return self.key("alerts")

    def key_list(self) -> list[str]:
        return [self.state_key, self.ledger_key, self.spend_key, self.alerts_key]

    def block(self, amounts: Mapping[str, int], instant_us: int) -> list[int | str]:
        """This scope's part of a script's ARGV (see lua/quota.lua)."""
        args: list[int | str] = [self.name, len(self.rates)]
        for d in self.rates:
            args += [d.name, d.capacity_micro, d.num, d.den, amounts.get(d.name, 0)]
        b = self.budget
        if b is None:
            return [*args, 0]
        starts, labels = b.budget.periods_around(instant_us)
        day_starts, day_labels = calendar_around(instant_us, self.day_zone, "day")
        max_age_ms = 0 if self.ledger.max_age_s is None else math.ceil(self.ledger.max_age_s * 1000)
        return [
            *args, 1, b.name, b.limit_nano, amounts.get(b.name, 0), b.thresholds,
            *starts, *labels, *day_starts, *day_labels, self.ledger.maxlen, max_age_ms,
        ]  # fmt: skip


# -- results -------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """A budget threshold reached for the first time this period, reported once."""

    threshold: float
    """The fraction of the limit reached (e.g. 0.8)."""
    scope: str
    """The limiter (scope) whose budget it is."""
    spent: Decimal
    """USD spent this period when the threshold was crossed."""
    limit: Decimal
    """The budget's limit in USD."""
    period: str
    """The period's label: ``2026-11-28`` (day) or ``2026-11`` (month)."""


@dataclass(frozen=True)
class DimensionState:
    """A rate dimension's bucket as Redis sees it now."""

    available: float
    """Units in the bucket now; negative while callers are booked ahead."""
    capacity: float
    """Bucket capacity in units."""
    rate_per_s: float
    """Refill speed in units per second."""
    available_micro: int = field(repr=False)
    """``available`` in exact integer micro-units."""


@dataclass(frozen=True)
class BudgetState:
    """A budget as Redis sees it now, in exact US dollars."""

    spent: Decimal
    """Settled this period."""
    reserved: Decimal
    """Held by permits in flight (not yet settled, lease not yet reclaimed)."""
    limit: Decimal
    """The limit per period."""
    resets_at: datetime
    """When the next period starts, in the budget's time zone."""
    period: Period
    """``"day"`` or ``"month"``."""

    @property
    def available(self) -> Decimal:
        """What a new request may still reserve this period."""
        return self.limit - self.spent - self.reserved

    @property
    def capacity(self) -> Decimal:
        """The limit (for symmetry with :class:`DimensionState`)."""
        return self.limit


class QuotaState(dict[str, "DimensionState | BudgetState"]):
    """What ``state()`` returns: each dimension by name (``"scope.dim"`` in a group).

    ``rate(name)`` and ``budget(name)`` return the entry with its precise type.
    """

    def rate(self, name: str) -> DimensionState:
        """A rate dimension's state."""
        entry = self._entry(name)
        if not isinstance(entry, DimensionState):
            raise UnknownDimension(f"{name!r} is a budget, not a rate")
        return entry

    def budget(self, name: str) -> BudgetState:
        """A budget's state."""
        entry = self._entry(name)
        if not isinstance(entry, BudgetState):
            raise UnknownDimension(f"{name!r} is a rate, not a budget")
        return entry

    def _entry(self, name: str) -> DimensionState | BudgetState:
        try:
            return self[name]
        except KeyError:
            raise UnknownDimension(f"no dimension {name!r}; there are {sorted(self)}") from None


SettleStatus = Literal["settled", "unknown", "unbacked"]


@dataclass(frozen=True)
class Settlement:
    """What a settle or cancel did.

    ``status``: ``"settled"`` (applied now), ``"unknown"`` (already settled,
    cancelled or reclaimed after its lease, by this process or another:
    nothing changed) or ``"unbacked"`` (the permit was granted while Redis was
    unreachable under ``on_redis_error="allow"``: there is nothing to settle).
    ``overshoot`` maps each scope whose actual cost passed its reservation to
    the excess in USD; ``alerts`` are the thresholds this settle crossed.
    """

    status: SettleStatus
    overshoot: dict[str, Decimal] = field(default_factory=dict)
    alerts: tuple[Alert, ...] = ()

    @property
    def applied(self) -> bool:
        """True only for the one settle that changed the buckets."""
        return self.status == "settled"


@dataclass
class PermitData:
    """What a permit holds: its id, its reservation and its place in line."""

    id: str
    """Opaque id; ``limiter.settle(id, ...)`` settles the permit from any process."""
    reserved_micro: dict[str, int]
    """Reserved cost per rate dimension in micro-units, and per budget in nano-dollars."""
    wait_s: float
    """Seconds the caller was booked to wait before going ahead."""
    admitted_at_us: int
    """Redis time (microseconds since the epoch) at which the permit was admitted."""
    backed: bool
    """False for a permit granted unmetered while Redis was unreachable."""
    settlement: Settlement | None = None
    """The outcome of this permit's settle or cancel, once one was made here."""
    budget_names: frozenset[str] = frozenset()

    @property
    def reserved(self) -> dict[str, Decimal]:
        """Reserved cost per dimension, in units (USD for a budget)."""
        return {
            name: Decimal(amount) / (NANO if name in self.budget_names else MICRO)
            for name, amount in self.reserved_micro.items()
        }


@dataclass(frozen=True)
class ScriptCall:
    """Which script to run, with its KEYS and ARGV."""

    script: ScriptName
    keys: list[str]
    args: list[int | str | bytes]


@dataclass(frozen=True)
class ClientCall:
    """A plain client command (a read of the ledger or counters), by method name."""

    method: Literal["xrange", "hgetall"]
    args: tuple[object, ...]
    kwargs: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Booking:
    """The outcome of an acquire's script calls, before any waiting."""

    permit: PermitData | None
    error: AcquireTimeout | BudgetExceeded | None
    alerts: tuple[Alert, ...]


R = TypeVar("R")

# A generator that yields script calls (or plain client calls), receives
# their replies (or has the Redis error thrown in) and returns R.
Flow = Generator[ScriptCall | ClientCall, Any, R]

ScriptName = Literal["acquire", "settle", "state", "observe", "record"]

# Where each script's reply carries Redis time, by its first element (the status).
_NOW_INDEX: dict[tuple[ScriptName, int], int] = {
    ("acquire", 1): 2, ("acquire", 0): 2, ("acquire", -1): 1,
    ("settle", 1): 1, ("settle", 0): 1,
}  # fmt: skip


_UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)


def backend_error(exc: redis.exceptions.RedisError) -> BackendError:
    """Our error for a redis-py one (the caller chains it with ``raise ... from``)."""
    if isinstance(exc, _UNREACHABLE):
        return RedisUnavailable(f"Redis is unreachable: {exc}")
    return BackendError(f"Redis refused a limiter script: {exc}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- a call over several scopes ---------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """The scopes of one hash slot, checked by one script call, with their permits keys."""

    scopes: tuple[ScopeSpec, ...]
    permits_key: str
    leases_key: str

    def keys(self) -> list[str]:
        return [
            self.permits_key,
            self.leases_key,
            *(key for scope in self.scopes for key in scope.key_list()),
        ]

    def block(self, amounts: Mapping[str, int], instant_us: int) -> list[int | str]:
        args: list[int | str] = [len(self.scopes)]
        for scope in self.scopes:
            args += scope.block(amounts, instant_us)
        return args


# A cancel's ledger tail: model, tokens and tags as at acquire, cost 0.
_CANCELLED: list[int | str | bytes] = ["", b"", b"", "cancelled"]


class Plan:
    """How the scopes of a limiter (or of a :class:`LimiterGroup`) are checked.

    Scopes that share a slot form one part, checked and debited by one script
    call. Scopes in different slots take one call per part, made in a fixed
    order; when a later part refuses, the parts already admitted are cancelled,
    so nothing leaks.
    """

    def __init__(self, scopes: Sequence[ScopeSpec]) -> None:
        names = [s.name for s in scopes]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"each scope may appear once, got {names}")
        self.scopes = tuple(scopes)
        self.on_redis_error: OnRedisError = scopes[0].on_redis_error
        self.lease_us = min(s.lease_us for s in scopes)
        by_slot: dict[str, list[ScopeSpec]] = {}
        for scope in scopes:
            by_slot.setdefault(scope.slot, []).append(scope)
        self.parts: list[_Part] = []
        for slot, members in by_slot.items():
            if len(scopes) == 1:
                permits, leases = members[0].key("p"), members[0].key("l")
            else:
                # A group's permits have their own keys: a record lists the
                # group's scopes by position, which a lone limiter would misread.
                digest = hashlib.sha1("\0".join(names).encode()).hexdigest()[:16]
                base = f"{KEY_PREFIX}{{{escape_name(slot)}}}:group:{digest}"
                permits, leases = f"{base}:p", f"{base}:l"
            self.parts.append(_Part(tuple(members), permits, leases))
        self.budget_names = frozenset(s.budget.name for s in scopes if s.budget)
        self.rate_names = frozenset(d.name for s in scopes for d in s.rates)
        self._instant_us = 0
        self._instant_known = False

    # The scripts decide with Redis TIME; the client only has to send budget
    # periods around it. It estimates Redis time from the last reply and, when
    # a script says the estimate was off, sends them again around the time
    # that script reported.
    def _estimate(self, clock_us: int) -> int:
        return self._instant_us if self._instant_known else clock_us

    def _observe(self, now_us: int) -> None:
        self._instant_us, self._instant_known = now_us, True

    # -- amounts ---------------------------------------------------------------
    def amounts(self, costs: Mapping[str, object], *, acquire: bool) -> dict[str, int]:
        """Validated amounts per dimension: micro-units, or nano-dollars for budgets.

        For acquire, ``requests`` defaults to 1 and other dimensions to 0; for
        settle, a dimension not given keeps its reservation (-1).
        """
        known = self.rate_names | self.budget_names
        for name in costs:
            if name not in known:
                raise UnknownDimension(f"no dimension {name!r} here; there are {sorted(known)}")
        amounts: dict[str, int] = {}
        for name in sorted(known):
            if name not in costs:
                amounts[name] = (MICRO if name == "requests" else 0) if acquire else -1
            elif name in self.budget_names:
                amounts[name] = to_nano(costs[name], f"{'cost' if acquire else 'actual'} {name!r}")
            else:
                amounts[name] = to_micro(costs[name], f"{'cost' if acquire else 'actual'} {name!r}")
        for name, amount in amounts.items():
            bound = _MAX_BUDGET_NANO if name in self.budget_names else _MAX_CAPACITY_MICRO
            if amount > bound:
                raise CostExceedsCapacity(
                    f"{name}={costs[name]!r} is too large to be stored exactly"
                )
        if acquire:
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
        return amounts

    # -- acquire ---------------------------------------------------------------
    def acquire(
        self,
        costs: Mapping[str, object],
        timeout_s: object,
        *,
        model: object,
        tags: Mapping[str, object] | None,
        clock_us: int,
    ) -> Flow[Booking]:
        """Book one admission across every part; the shell sleeps ``permit.wait_s`` after."""
        amounts = self.amounts(costs, acquire=True)
        ledger_tail = acquire_record(self, costs, model, tags)
        if timeout_s is None:
            max_wait_us = -1
        else:
            wait = _exact(timeout_s, "timeout")
            if wait < 0:
                raise InvalidArgument(f"timeout must not be negative, got {timeout_s!r}")
            max_wait_us = math.floor(wait * MICRO)
        permit_id = secrets.token_hex(16)
        admitted: list[_Part] = []
        alerts: list[Alert] = []
        wait_us, admitted_at = 0, 0
        error: AcquireTimeout | BudgetExceeded | None = None
        for part in self.parts:
            try:
                reply = yield from self._call_with_periods(
                    "acquire",
                    part,
                    head=[permit_id, max_wait_us, self.lease_us],
                    amounts=amounts,
                    tail=ledger_tail,
                    clock_us=clock_us,
                )
            except RedisUnavailable as exc:
                error = yield from self._unavailable(exc, admitted, permit_id)
                if error is None:
                    return Booking(self._unbacked(permit_id, amounts), None, tuple(alerts))
                return Booking(None, error, tuple(alerts))
            code, now_us = int(reply[0]), int(reply[_NOW_INDEX["acquire", int(reply[0])]])
            if code == 1:
                alerts += self._alerts(part, reply[3])
                admitted.append(part)
                wait_us = max(wait_us, int(reply[1]))
                admitted_at = max(admitted_at, now_us + int(reply[1]))
                continue
            if code == 0:
                alerts += self._alerts(part, reply[3])
                error = self._timeout(int(reply[1]), timeout_s)
            else:  # -1: a budget refused
                alerts += self._alerts(part, reply[2])
                error = self._budget_refusal(part, reply)
            yield from self._cancel_parts(admitted, permit_id)
            return Booking(None, error, tuple(alerts))
        permit = PermitData(
            permit_id, amounts, wait_us / MICRO, admitted_at, True, budget_names=self.budget_names
        )
        return Booking(permit, None, tuple(alerts))

    def _call_with_periods(
        self,
        script: ScriptName,
        part: _Part,
        *,
        head: list[int | str | bytes],
        amounts: Mapping[str, int],
        tail: list[int | str | bytes],
        clock_us: int,
    ) -> Flow[list[Any]]:
        """One script call; sent again once when its budget periods missed Redis time."""
        instant = self._estimate(clock_us)
        for _ in range(2):
            reply = yield ScriptCall(
                script, part.keys(), [*head, *part.block(amounts, instant), *tail]
            )
            status = int(reply[0])
            if status == -2:
                instant = int(reply[1])  # our periods missed Redis time: send them around it
                self._observe(instant)
                continue
            at_front = script in ("state", "observe", "record")
            self._observe(int(reply[0] if at_front else reply[_NOW_INDEX[script, status]]))
            return list(reply)
        raise BackendError("Redis time keeps moving out of the budget periods sent")

    def _unavailable(
        self, exc: RedisUnavailable, admitted: list[_Part], permit_id: str
    ) -> Flow[AcquireTimeout | None]:
        if self.on_redis_error == "raise":
            yield from self._cancel_parts(admitted, permit_id, quiet=True)
            raise exc
        log.warning(
            "Redis unreachable, %s %s: %s",
            "admitting unmetered" if self.on_redis_error == "allow" else "denying",
            [s.name for s in self.scopes],
            exc.__cause__ or exc,
        )
        if self.on_redis_error == "allow":
            return None
        yield from self._cancel_parts(admitted, permit_id, quiet=True)
        error = AcquireTimeout("Redis is unreachable and on_redis_error='deny'", 1.0)
        error.__cause__ = exc
        return error

    def _unbacked(self, permit_id: str, amounts: dict[str, int]) -> PermitData:
        return PermitData(permit_id, amounts, 0.0, 0, False, budget_names=self.budget_names)

    def _cancel_parts(
        self, parts: list[_Part], permit_id: str, *, quiet: bool = False
    ) -> Flow[None]:
        zero = dict.fromkeys(self.rate_names | self.budget_names, 0)
        for part in parts:
            try:
                yield from self._call_with_periods(
                    "settle",
                    part,
                    head=[permit_id],
                    amounts=zero,
                    tail=_CANCELLED,
                    clock_us=self._instant_us,
                )
            except BackendError:
                if not quiet:
                    raise
                log.exception("could not return permit %s; its lease will reclaim it", permit_id)

    def _timeout(self, wait_us: int, timeout_s: object) -> AcquireTimeout:
        names = [s.name for s in self.scopes]
        if wait_us < 0:
            return AcquireTimeout(f"{names} are booked too far ahead to take this", math.inf)
        return AcquireTimeout(
            f"{names} would admit this in {wait_us / MICRO:.3f}s, later than the timeout of "
            f"{timeout_s}s",
            wait_us / MICRO,
        )

    @staticmethod
    def _budget_refusal(part: _Part, reply: Sequence[Any]) -> BudgetExceeded:
        scope = part.scopes[int(reply[3]) - 1]
        if scope.budget is None:  # pragma: no cover - the script names a budgeted scope
            raise BackendError(f"unexpected budget refusal {reply!r}")
        budget = scope.budget.budget
        spent, reserved, limit = usd(int(reply[4])), usd(int(reply[5])), usd(int(reply[6]))
        resets_at = datetime.fromtimestamp(int(reply[7]) / MICRO, budget.zone)
        return BudgetExceeded(
            f"the ${limit} per {budget.per} budget of {scope.name!r} cannot take this: "
            f"${spent} spent and ${reserved} reserved; it resets at {resets_at.isoformat()}",
            scope=scope.name,
            spent=spent,
            reserved=reserved,
            limit=limit,
            resets_at=resets_at,
        )

    @staticmethod
    def _alerts(part: _Part, raw: Sequence[Any]) -> list[Alert]:
        alerts = []
        for j, ppm, spent, limit, period in raw:
            scope = part.scopes[int(j) - 1]
            alerts.append(
                Alert(
                    threshold=int(ppm) / MICRO,
                    scope=scope.name,
                    spent=usd(int(spent)),
                    limit=usd(int(limit)),
                    period=_text(period),
                )
            )
        return alerts

    # -- settle ----------------------------------------------------------------
    def settle(
        self,
        permit_id: object,
        actual: Mapping[str, object],
        *,
        model: object,
        tags: Mapping[str, object] | None,
        usage: object,
        pricing: Callable[[], Pricing],
        clock_us: int,
        remaining: Mapping[str, object] | None = None,
    ) -> Flow[Settlement]:
        """Settle in every part: given dimensions at their actual cost, others as reserved.

        ``remaining`` (units per rate dimension, what the provider reports is
        left) then brings those buckets down to it in the same script call.
        """
        pid = validate_name(permit_id, "permit id")
        self.amounts(actual, acquire=False)  # validate before anything is priced
        left = self._remaining(remaining or {})
        values, ledger_tail = settle_inputs(
            self, actual, model=model, tags=tags, usage=usage, pricing=pricing
        )
        amounts = self.amounts(values, acquire=False)
        return (yield from self._finish(pid, amounts, ledger_tail, clock_us, left))

    def _remaining(self, remaining: Mapping[str, object]) -> dict[str, int]:
        """Provider figures per rate dimension, validated, in micro-units."""
        left: dict[str, int] = {}
        for name, value in remaining.items():
            if name not in self.rate_names:
                raise UnknownDimension(
                    f"no rate dimension {name!r}; there are {sorted(self.rate_names)}"
                )
            left[name] = to_micro(value, f"remaining {name!r}")
        return left

    def cancel(self, permit_id: object, *, clock_us: int) -> Flow[Settlement]:
        """Return everything a permit took, in every part."""
        pid = validate_name(permit_id, "permit id")
        zero = dict.fromkeys(self.rate_names | self.budget_names, 0)
        return (yield from self._finish(pid, zero, _CANCELLED, clock_us, {}))

    def _finish(
        self,
        pid: str,
        amounts: dict[str, int],
        ledger_tail: list[int | str | bytes],
        clock_us: int,
        remaining: Mapping[str, int],
    ) -> Flow[Settlement]:
        applied = False
        overshoot: dict[str, Decimal] = {}
        alerts: list[Alert] = []
        for part in self.parts:
            figures = " ".join(
                f"{j}:{d.name}:{remaining[d.name]}"
                for j, scope in enumerate(part.scopes, 1)
                for d in scope.rates
                if d.name in remaining
            )
            reply = yield from self._call_with_periods(
                "settle",
                part,
                head=[pid],
                amounts=amounts,
                tail=[*ledger_tail, figures],
                clock_us=clock_us,
            )
            applied = applied or int(reply[0]) == 1
            alerts += self._alerts(part, reply[2])
            for j, nano in reply[3]:
                overshoot[part.scopes[int(j) - 1].name] = usd(int(nano))
        if overshoot:
            log.warning("permit %s cost more than it reserved: %s", pid, overshoot)
        return Settlement("settled" if applied else "unknown", overshoot, tuple(alerts))

    # -- provider feedback -------------------------------------------------------
    def observe(
        self, remaining: Mapping[str, object], retry_after_s: object, clock_us: int
    ) -> Flow[int]:
        """Lower the shared buckets to what the provider reports; returns how many dropped."""
        amounts = {name: -1 for name in self.rate_names}
        amounts.update(self._remaining(remaining))
        retry_us = 0 if retry_after_s is None else _scaled(retry_after_s, "retry_after", MICRO)
        lowered = 0
        for part in self.parts:
            reply = yield from self._call_with_periods(
                "observe", part, head=[], amounts=amounts, tail=[retry_us], clock_us=clock_us
            )
            lowered += int(reply[1])
        return lowered

    def record_saving(
        self,
        saved_usd: object,
        *,
        model: object,
        tokens: Mapping[str, object] | None,
        tags: Mapping[str, object] | None,
        clock_us: int,
    ) -> Flow[int]:
        """Ledger a call a cached response answered, with the cost it saved."""
        saved = to_nano(saved_usd, "saved_usd")
        amounts = dict.fromkeys(self.budget_names, saved)
        counts = {k: _token_value(v) for k, v in (tokens or {}).items()}
        tail: list[int | str | bytes] = [
            validate_model(model),
            pack_tokens(counts),
            pack_tags(tags) or pack_tags({}),
        ]
        recorded = 0
        for part in self.parts:
            reply = yield from self._call_with_periods(
                "record",
                part,
                head=[secrets.token_hex(16)],
                amounts=amounts,
                tail=tail,
                clock_us=clock_us,
            )
            recorded += int(reply[1])
        return recorded

    # -- state -----------------------------------------------------------------
    def state(self, clock_us: int) -> Flow[tuple[QuotaState, list[Alert]]]:
        """Every dimension of every scope (a group reports ``"scope.dim"``)."""
        result = QuotaState()
        alerts: list[Alert] = []
        prefix = len(self.scopes) > 1
        for part in self.parts:
            reply = yield from self._call_with_periods(
                "state", part, head=[], amounts={}, tail=[], clock_us=clock_us
            )
            levels, budgets = iter(reply[1]), iter(reply[2])
            alerts += self._alerts(part, reply[3])
            for scope in part.scopes:
                label = f"{scope.name}." if prefix else ""
                for d in scope.rates:
                    level = int(next(levels))
                    result[label + d.name] = DimensionState(
                        available=level / MICRO,
                        capacity=d.capacity_micro / MICRO,
                        rate_per_s=d.rate.rate_per_s,
                        available_micro=level,
                    )
                if scope.budget:
                    spent, reserved, stop = (int(v) for v in next(budgets))
                    budget = scope.budget.budget
                    result[label + scope.budget.name] = BudgetState(
                        spent=usd(spent),
                        reserved=usd(reserved),
                        limit=usd(scope.budget.limit_nano),
                        resets_at=datetime.fromtimestamp(stop / MICRO, budget.zone),
                        period=budget.per,
                    )
        return result, alerts


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
    try:
        packed: bytes = msgpack.packb(dict(tags))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentType(f"tags must hold msgpack-encodable values: {exc}") from exc
    return packed


def validate_model(model: object) -> str:
    """A ledger model label: a string without newlines or '|' (it is part of a counter's field)."""
    if model is None:
        return ""
    text = validate_name(model, "model")
    if "\n" in text or "|" in text:
        raise InvalidArgument(f"model must not contain a newline or '|', got {model!r}")
    return text


def _token_value(value: object) -> int | str:
    """A token count as msgpack stores it: an int when whole, else its exact decimal text."""
    number = _exact(value, "token count")
    return int(number) if number == number.to_integral_value() else str(number)


def acquire_record(
    plan: Plan, costs: Mapping[str, object], model: object, tags: Mapping[str, object] | None
) -> list[int | str | bytes]:
    """What an acquire keeps for the ledger: model, reserved tokens and tags."""
    tokens = {k: _token_value(v) for k, v in costs.items() if k in plan.rate_names}
    return [validate_model(model), pack_tokens(tokens), pack_tags(tags) or pack_tags({})]


def settle_inputs(
    plan: Plan,
    actual: Mapping[str, object],
    *,
    model: object,
    tags: Mapping[str, object] | None,
    usage: object,
    pricing: Callable[[], Pricing],
) -> tuple[dict[str, object], list[int | str | bytes]]:
    """A settle's actual amounts, and its ledger model, tokens and tags.

    With a ``usage`` (an anthropic ``Usage`` or a mapping of token counts),
    the record holds its token counts by kind and, when no budget amount is
    given, the budgets are charged what ``pricing`` says that usage cost for
    ``model``.
    """
    label = validate_model(model)
    amounts = dict(actual)
    tokens = {k: _token_value(v) for k, v in actual.items() if k in plan.rate_names}
    if usage is not None:
        tokens.update(token_counts(usage))
        missing = plan.budget_names - set(actual)
        if missing:
            if not label:
                raise InvalidArgument("pricing a usage needs the model it ran on: model=...")
            cost = pricing().cost(label, usage)  # type: ignore[arg-type]  # checked inside
            amounts.update(dict.fromkeys(missing, cost))
    return amounts, [label, pack_tokens(tokens) if tokens else b"", pack_tags(tags), "settled"]


def clock_us() -> int:
    """This machine's clock in microseconds.

    Used only to choose which budget periods to send with a first call; the
    scripts place every call by Redis TIME and ask again when it differs.
    """
    return time.time_ns() // 1000  # client-clock-ok: picks periods to send, Redis TIME decides


class QuotaOwner:
    """The I/O-free half of a limiter or group, shared by the sync and asyncio shells."""

    _scope: ScopeSpec
    _plan: Plan
    _alert_handlers: dict[str, Callable[[Alert], object] | None]
    _pricing: Pricing | None

    def _configure(
        self,
        name: object,
        dimensions: Mapping[str, object],
        *,
        slot: object,
        lease_s: object,
        on_redis_error: object,
        ledger: object,
        on_alert: Callable[[Alert], object] | None,
        pricing: Pricing | None,
    ) -> None:
        self._scope = ScopeSpec.build(
            name,
            dimensions,
            slot=slot,
            lease_s=lease_s,
            on_redis_error=on_redis_error,
            ledger=ledger,
        )
        self._plan = Plan([self._scope])
        self._alert_handlers = {self._scope.name: on_alert}
        self._pricing = pricing

    def _configure_group(self, members: Sequence[QuotaOwner]) -> None:
        if not members:
            raise InvalidArgument("a LimiterGroup needs at least one Limiter")
        self._plan = Plan([member._scope for member in members])
        self._alert_handlers = {}
        for member in members:
            self._alert_handlers.update(member._alert_handlers)
        self._pricing = members[0]._pricing

    def _pricing_table(self) -> Pricing:
        if self._pricing is None:
            self._pricing = Pricing.default()
        return self._pricing

    @property
    def name(self) -> str:
        """The quota's name (its scope in the ledger and in alerts)."""
        return self._scope.name

    @property
    def rates(self) -> dict[str, Rate]:
        """Each rate dimension's rate."""
        return {dim.name: dim.rate for dim in self._scope.rates}
