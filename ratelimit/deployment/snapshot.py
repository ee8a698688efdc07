"""A deployment's scopes as Redis holds them at one instant: the readings, with no I/O.

:func:`read_scope` turns what one scope's keys hold (parsed by
:mod:`ratelimit.deployment.stored`) into a :class:`ScopeReading` as of one
Redis time: each bucket's level now, the budget of the period holding now,
the permits in flight. When the scope is configured (a
:class:`~ratelimit.core.scope.ScopeSpec`, from a configuration file or from
:func:`configured_scopes`), its configured limits are shown beside what Redis
holds, and a configured scope with no keys reads as full and idle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

from ratelimit import ledger
from ratelimit.core.numbers import MICRO, text, usd
from ratelimit.core.scope import BudgetDim, RateDim, ScopeSpec
from ratelimit.core.settings import Budget, Rate
from ratelimit.deployment.stored import InFlight, StoredBucket, StoredBudget

BucketStatus = Literal["full", "refilling", "booked ahead", "in debt"]


def configured_scopes(
    limits: Mapping[str, Mapping[str, Rate | Budget]],
    slots: Mapping[str, str] | None = None,
) -> list[ScopeSpec]:
    """Scopes as their limiters are configured: ``{name: {"requests": Rate(...), ...}}``.

    The dimensions are a Limiter's keyword arguments; ``slots`` gives the
    slot of a scope built with ``slot=...``. Raises InvalidArgument* as a
    Limiter would.
    """
    slots = slots or {}
    return [ScopeSpec.build(name, dims, slot=slots.get(name)) for name, dims in limits.items()]


def instant(micros: int, zone: tzinfo = UTC) -> datetime:
    """Redis microseconds as an aware datetime in ``zone``."""
    return datetime.fromtimestamp(micros / MICRO, zone)


def decimal_text(value: Fraction, places: int = 9) -> str:
    """A fraction as a decimal string: exact when it terminates, else to ``places`` decimals."""
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    den = value.denominator
    for prime in (2, 5):
        while den % prime == 0:
            den //= prime
    if den == 1:
        return format(exact.normalize(), "f")
    return format(exact.quantize(Decimal(1).scaleb(-places)).normalize(), "f")


@dataclass(frozen=True)
class RateReading:
    """A rate dimension's bucket at the snapshot's time, and its configured setting.

    Micro-units; ``rate_per_s`` exact. ``stored`` is False for a bucket
    Redis holds nothing of (full at the configured capacity).
    """

    dimension: str
    available_micro: int
    capacity_micro: int
    rate_per_s: Fraction
    full_at_us: int
    booked_until_us: int | None
    stored: bool
    configured: RateDim | None = None

    @property
    def available(self) -> Decimal:
        """Units in the bucket now; negative while callers are booked ahead."""
        return Decimal(self.available_micro) / MICRO

    @property
    def capacity(self) -> Decimal:
        """Bucket capacity in units."""
        return Decimal(self.capacity_micro) / MICRO

    @property
    def status(self) -> BucketStatus:
        """Full, refilling, booked ahead (callers admitted later) or in debt (below zero)."""
        if self.booked_until_us is not None:
            return "booked ahead"
        if self.available_micro >= self.capacity_micro:
            return "full"
        return "in debt" if self.available_micro < 0 else "refilling"

    @property
    def differs(self) -> bool:
        """Whether Redis holds another capacity or rate than the configured one."""
        c = self.configured
        return c is not None and (
            c.capacity_micro != self.capacity_micro or Fraction(c.num, c.den) != self.rate_per_s
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: units as decimal strings, times in ISO 8601 (UTC)."""
        c = self.configured
        return {
            "dimension": self.dimension,
            "available": str(self.available),
            "capacity": str(self.capacity),
            "rate_per_second": decimal_text(self.rate_per_s),
            "rate_fraction": f"{self.rate_per_s.numerator}/{self.rate_per_s.denominator}",
            "status": self.status,
            "full_at": instant(self.full_at_us).isoformat(),
            "booked_until": (
                None if self.booked_until_us is None else instant(self.booked_until_us).isoformat()
            ),
            "stored": self.stored,
            "configured": None
            if c is None
            else {
                "capacity": str(Decimal(c.capacity_micro) / MICRO),
                "rate_per_second": decimal_text(Fraction(c.num, c.den)),
            },
        }


def rate_reading(bucket: StoredBucket, now_us: int, configured: RateDim | None) -> RateReading:
    """A stored bucket read at ``now_us``."""
    return RateReading(
        bucket.dimension,
        bucket.available_micro(now_us),
        bucket.cap,
        bucket.rate_per_s,
        bucket.full_at_us(now_us),
        bucket.ts if bucket.ts > now_us else None,
        stored=True,
        configured=configured,
    )


def full_reading(dim: RateDim, now_us: int) -> RateReading:
    """A configured bucket Redis holds nothing of: full."""
    return RateReading(
        dim.name,
        dim.capacity_micro,
        dim.capacity_micro,
        Fraction(dim.num, dim.den),
        now_us,
        None,
        stored=False,
        configured=dim,
    )


@dataclass(frozen=True)
class BudgetReading:
    """A budget in the period holding the snapshot's time, in nano-dollars.

    ``limit_nano`` is the configured limit when the scope is configured,
    else the one its last writer enforced (``stored_limit_nano``).
    ``period`` and ``resets_at_us`` are None when the stored period has
    ended and the scope is not configured: the next call starts a period
    whose bounds only its configuration knows (spent then reads 0).
    """

    dimension: str | None
    spent_nano: int
    reserved_nano: int
    limit_nano: int
    stored_limit_nano: int | None
    period: str | None
    resets_at_us: int | None
    zone: tzinfo | None
    configured: BudgetDim | None = None

    @property
    def spent(self) -> Decimal:
        """USD settled this period."""
        return usd(self.spent_nano)

    @property
    def reserved(self) -> Decimal:
        """USD held by permits in flight."""
        return usd(self.reserved_nano)

    @property
    def limit(self) -> Decimal:
        """The limit per period in USD."""
        return usd(self.limit_nano)

    @property
    def available(self) -> Decimal:
        """What a new request may still reserve this period."""
        return usd(self.limit_nano - self.spent_nano - self.reserved_nano)

    @property
    def resets_at(self) -> datetime | None:
        """When the next period starts (in the budget's zone when configured)."""
        if self.resets_at_us is None:
            return None
        return instant(self.resets_at_us, self.zone or UTC)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: USD as decimal strings, the reset time in ISO 8601."""
        resets = self.resets_at
        return {
            "dimension": self.dimension,
            "spent_usd": str(self.spent),
            "reserved_usd": str(self.reserved),
            "limit_usd": str(self.limit),
            "available_usd": str(self.available),
            "stored_limit_usd": (
                None if self.stored_limit_nano is None else str(usd(self.stored_limit_nano))
            ),
            "period": self.period,
            "resets_at": None if resets is None else resets.isoformat(),
        }


def budget_reading(
    stored: StoredBudget | None,
    now_us: int,
    configured: BudgetDim | None,
    spend: Mapping[bytes, bytes] | None = None,
    *,
    count_days: bool = False,
    dimension: str | None = None,
) -> BudgetReading | None:
    """The budget at ``now_us``, as lua/lib/budget.lua's ``load_budget`` finds it.

    A stored period that no longer holds ``now_us`` has nothing spent in the
    current one; with no budget string, a configured budget whose spend
    counters count its days (``count_days``) finds its spend there.
    """
    if configured is not None:
        starts, labels = configured.budget.periods_around(now_us)
        start, end, label = starts[1], starts[2], labels[1]
        spent = reserved = 0
        if stored is not None:
            reserved = stored.reserved_nano
            if stored.period_start_us == start:
                spent = stored.spent_nano
        elif count_days and spend:
            spent = counted_spend(spend, label)
        return BudgetReading(
            configured.name,
            spent,
            reserved,
            configured.limit_nano,
            None if stored is None else stored.limit_nano,
            label,
            end,
            configured.budget.zone,
            configured,
        )
    if stored is None:
        return None
    over = now_us >= stored.period_end_us
    return BudgetReading(
        dimension,
        0 if over else stored.spent_nano,
        stored.reserved_nano,
        stored.limit_nano,
        stored.limit_nano,
        None if over else stored.label,
        None if over else stored.period_end_us,
        None,
    )


def counted_spend(spend: Mapping[bytes, bytes], label: str) -> int:
    """Nano-dollars the spend counters hold for the period ``label`` (a day or a month).

    As lua/lib/budget.lua's ``counted_spend``: ``<day>|<model>`` fields of
    the period's days, what cache hits saved (``...|saved``) aside.
    """
    total = 0
    for key, value in spend.items():
        day, sep, rest = text(key).partition("|")
        if sep and day.startswith(label) and not rest.endswith("|saved"):
            total += int(value)
    return total


@dataclass(frozen=True)
class ScopeReading:
    """One scope at the snapshot's time: its buckets, its budget, its permits in flight.

    ``kinds`` are the suffixes of the keys found (``"r"``, ``"b"``, ``"p"``...);
    ``spend`` the daily counters (``{day: {model: USD}}``) when they were read;
    ``problems`` what could not be read, in words.
    """

    name: str
    slot: str
    rates: tuple[RateReading, ...]
    budget: BudgetReading | None
    in_flight: InFlight
    configured: bool
    kinds: frozenset[str]
    spend: Mapping[str, Mapping[str, Decimal]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def idle(self) -> bool:
        """Every bucket full and nothing in flight: nothing for Redis to hold but money."""
        return self.in_flight.permits == 0 and all(r.status == "full" for r in self.rates)

    def rate(self, dimension: str) -> RateReading:
        """A rate dimension's reading (KeyError when there is none)."""
        for reading in self.rates:
            if reading.dimension == dimension:
                return reading
        raise KeyError(dimension)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with stable keys (see the README's "Operating" section)."""
        flight = self.in_flight
        reserved = flight.reserved or {}
        budget_dim = flight.budget_dimension
        return {
            "name": self.name,
            "slot": self.slot,
            "configured": self.configured,
            "keys": sorted(self.kinds),
            "idle": self.idle,
            "rates": [reading.as_dict() for reading in self.rates],
            "budget": None if self.budget is None else self.budget.as_dict(),
            "in_flight": {
                "permits": flight.permits,
                "expired": flight.expired,
                "summed": flight.summed,
                "reserved": {
                    dim: str(usd(amount) if dim == budget_dim else Decimal(amount) / MICRO)
                    for dim, amount in sorted(reserved.items())
                },
            },
            "problems": list(self.problems),
        }


def read_scope(
    name: str,
    slot: str,
    now_us: int,
    *,
    buckets: Iterable[StoredBucket] = (),
    budget: StoredBudget | None = None,
    in_flight: InFlight | None = None,
    configured: ScopeSpec | None = None,
    spend: Mapping[bytes, bytes] | None = None,
    kinds: Iterable[str] = (),
    problems: Iterable[str] = (),
) -> ScopeReading:
    """A scope at ``now_us`` from what its keys hold (nothing given: full and idle).

    Stored buckets come first, in their stored order; configured
    dimensions Redis holds nothing of follow, full.
    """
    flight = in_flight or InFlight()
    rate_dims = {d.name: d for d in configured.rates} if configured else {}
    readings = [rate_reading(b, now_us, rate_dims.get(b.dimension)) for b in buckets]
    seen = {r.dimension for r in readings}
    readings += [full_reading(d, now_us) for d in rate_dims.values() if d.name not in seen]
    budget_dim = configured.budget if configured else None
    same_days = (
        configured is not None
        and budget_dim is not None
        and (str(configured.day_zone) == str(budget_dim.budget.zone))
    )
    budget_read = budget_reading(
        budget,
        now_us,
        budget_dim,
        spend,
        count_days=same_days,
        dimension=flight.budget_dimension,
    )
    return ScopeReading(
        name,
        slot,
        tuple(readings),
        budget_read,
        flight,
        configured is not None,
        frozenset(kinds),
        ledger.parse_spend(spend) if spend else {},
        tuple(problems),
    )


@dataclass(frozen=True)
class GroupReading:
    """Permits of a group of scopes whose members the digest did not reveal."""

    slot: str
    digest: str
    in_flight: InFlight


@dataclass(frozen=True)
class Snapshot:
    """Every scope found, read at one Redis time (``now_us``, microseconds).

    ``truncated`` says the scan stopped at its bound before the end.
    """

    now_us: int
    scopes: tuple[ScopeReading, ...]
    groups: tuple[GroupReading, ...] = ()
    truncated: bool = False

    @property
    def time(self) -> datetime:
        """Redis time of the snapshot, UTC."""
        return instant(self.now_us)

    def scope(self, name: str) -> ScopeReading:
        """A scope's reading by name (KeyError when it was not found)."""
        for reading in self.scopes:
            if reading.name == name:
                return reading
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with stable keys."""
        return {
            "time": self.time.isoformat(),
            "time_us": self.now_us,
            "truncated": self.truncated,
            "scopes": [scope.as_dict() for scope in self.scopes],
            "unmatched_groups": [
                {
                    "slot": group.slot,
                    "digest": group.digest,
                    "permits": group.in_flight.permits,
                    "expired": group.in_flight.expired,
                }
                for group in self.groups
            ],
        }
