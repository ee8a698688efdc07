"""The public configuration types: a :class:`Rate`, a :class:`Budget` and a
ledger's :class:`Retention`, and the calendar that places a budget's periods."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ratelimit.core.numbers import (
    MAX_BUDGET_NANO,
    MAX_CAPACITY_MICRO,
    MICRO,
    NANO,
    RATE_PRODUCT_LIMIT,
    exact,
    positive,
    usd,
)
from ratelimit.errors import InvalidArgument, InvalidArgumentType

DEFAULT_LEDGER_MAXLEN = 1_000_000


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
        positive(self.amount, "Rate amount")
        positive(self.per, "Rate per")
        if self.burst is not None:
            positive(self.burst, "Rate burst")
        if self.capacity_micro < 1:
            raise InvalidArgument(f"Rate burst must hold at least one micro-unit: {self}")
        if self.capacity_micro > MAX_CAPACITY_MICRO:
            raise InvalidArgument(f"Rate burst is too large to be stored exactly: {self}")

    @property
    def capacity(self) -> float:
        """Bucket capacity in units."""
        return float(self.amount if self.burst is None else self.burst)

    @property
    def capacity_micro(self) -> int:
        """Bucket capacity in micro-units, rounded down (never more than asked)."""
        burst = self.amount if self.burst is None else self.burst
        return math.floor(exact(burst, "Rate burst") * MICRO)

    @property
    def rate_per_s(self) -> float:
        """Refill speed in units per second."""
        return float(self.amount) / float(self.per)

    def refill_fraction(self) -> tuple[int, int]:
        """Refill speed as (num, den) micro-units per microsecond, num * den < 2^50.

        Exact when the rate allows it; otherwise the nearest fraction below the
        true rate, so rounding can only make the bucket slower, never faster.
        """
        amount = Fraction(exact(self.amount, "Rate amount"))
        per = Fraction(exact(self.per, "Rate per"))
        rate = amount / per  # units/s == micro-units/us
        if rate.numerator * rate.denominator < RATE_PRODUCT_LIMIT:
            return rate.numerator, rate.denominator
        # Largest den such that num * den stays under the limit, rounding num down.
        den = max(1, math.isqrt(max(1, RATE_PRODUCT_LIMIT // max(1, math.ceil(rate)))))
        num = math.floor(rate * den)
        if num < 1:
            raise InvalidArgument(f"Rate is too slow to be represented: {self}")
        reduced = Fraction(num, den)
        return reduced.numerator, reduced.denominator


Period = Literal["day", "month"]


def zone(tz: object, what: str = "tz") -> ZoneInfo:
    """An IANA time zone by name."""
    if not isinstance(tz, str) or not tz:
        raise InvalidArgumentType(f"{what} must be an IANA zone name, got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument(f"unknown time zone {tz!r}") from exc


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
        if limit < 1 or limit > MAX_BUDGET_NANO:
            raise InvalidArgument(
                f"Budget usd must be between one nano-dollar and {usd(MAX_BUDGET_NANO)}"
            )
        if self.per not in ("day", "month"):
            raise InvalidArgument(f"Budget per must be 'day' or 'month', got {self.per!r}")
        self.zone  # noqa: B018 - validates tz
        if isinstance(self.alerts, str) or not isinstance(self.alerts, Iterable):
            raise InvalidArgumentType("Budget alerts must be a sequence of fractions")
        for threshold in self.alerts:
            positive(threshold, "Budget alert threshold")

    @property
    def limit_usd(self) -> Decimal:
        """The limit in exact US dollars."""
        return exact(self.usd, "Budget usd", strings=True)

    @property
    def limit_nano(self) -> int:
        """The limit in nano-dollars, rounded down (never more than asked)."""
        return math.floor(self.limit_usd * NANO)

    @property
    def zone(self) -> ZoneInfo:
        """The budget's time zone."""
        return zone(self.tz, "Budget tz")

    def thresholds(self) -> list[tuple[int, int]]:
        """Each alert as (parts per million of the limit, nano-dollars), ascending."""
        limit = self.limit_usd
        points = sorted({exact(t, "Budget alert threshold") for t in self.alerts})
        return [(math.ceil(t * MICRO), math.ceil(t * limit * NANO)) for t in points]

    def periods_around(self, instant_us: int) -> tuple[list[int], list[str]]:
        """Starts (µs) of the periods before, holding and after ``instant_us``, plus one more."""
        return calendar_around(instant_us, self.zone, self.per)


def calendar_around(instant_us: int, tz: ZoneInfo, per: Period) -> tuple[list[int], list[str]]:
    """Four period starts in microseconds and the labels of the three periods between them.

    The middle period holds ``instant_us``; the others give the scripts room
    to place a Redis time that differs from this estimate by up to a period.
    """
    local = datetime.fromtimestamp(instant_us / MICRO, tz)
    if per == "day":
        day = local.date()
        dates = [day + timedelta(days=k) for k in (-1, 0, 1, 2)]
        starts = [datetime(d.year, d.month, d.day, tzinfo=tz) for d in dates]
        labels = [d.isoformat() for d in dates[:3]]
    else:
        months = [(local.year * 12 + local.month - 1) + k for k in (-1, 0, 1, 2)]
        starts = [datetime(m // 12, m % 12 + 1, 1, tzinfo=tz) for m in months]
        labels = [f"{m // 12:04d}-{m % 12 + 1:02d}" for m in months[:3]]
    return [round(s.timestamp() * MICRO) for s in starts], labels


#: The period each (zone, kind) last answered: most calls fall in it again.
_last_period: dict[tuple[str, Period], tuple[int, int, str]] = {}


def period_holding(instant_us: int, tz: ZoneInfo, per: Period) -> tuple[int, int, str]:
    """The period holding ``instant_us``: its start and end (µs) and its label."""
    key = (tz.key, per)
    last = _last_period.get(key)
    if last is not None and last[0] <= instant_us < last[1]:
        return last
    starts, labels = calendar_around(instant_us, tz, per)
    found = _last_period[key] = (starts[1], starts[2], labels[1])
    return found


@dataclass(frozen=True)
class Retention:
    """How long a budgeted scope's ledger keeps its entries, and its days' zone.

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
            raise InvalidArgument(
                f"Retention maxlen must be a non-negative int, got {self.maxlen!r}"
            )
        if self.max_age_s is not None:
            positive(self.max_age_s, "Retention max_age_s")
        if self.tz is not None:
            zone(self.tz, "Retention tz")
