"""What a scope's keys hold, parsed without knowing its configuration, and read as of now.

Every string the scripts store describes itself: a rates string carries each
bucket's capacity and refill rate beside its level (lua/lib/rates.lua), a
budget string its period, spend, reservations and limit (lua/lib/budget.lua),
a permit record what it reserved (lua/lib/permit.lua). These functions parse
them and compute what lua/state.lua would report at a given Redis time, with
no I/O; :mod:`ratelimit.deployment.reader` fetches the strings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from ratelimit.core.numbers import text
from ratelimit.errors import BackendError

#: A rates string lists each dimension as this many space-separated tokens.
RATE_TOKENS = 7


@dataclass(frozen=True)
class StoredBucket:
    """One dimension's bucket as its rates string holds it (lua/lib/bucket.lua).

    ``level``, ``cap``: micro-units; ``rem``: a fraction of a micro-unit in
    ``1/rem_den`` steps; ``ts``: Redis microseconds of the last write, or of
    the admission of the last caller booked ahead; 0 for a full bucket.
    ``num/den``: refill in micro-units per microsecond (units per second).
    ``seen``: when a process asking for exactly this setting last wrote.
    """

    dimension: str
    level: int
    rem: int
    rem_den: int
    ts: int
    seen: int
    cap: int
    num: int
    den: int

    @property
    def rate_per_s(self) -> Fraction:
        """Refill speed in units per second (micro-units per microsecond), exact."""
        return Fraction(self.num, self.den)

    def at(self, now_us: int) -> BucketNow:
        """The bucket at Redis time ``now_us``, exactly as lua/state.lua computes it."""
        cap, num, den = self.cap, self.num, self.den
        if self.ts == 0:
            return BucketNow(cap, 0, now_us)
        rem = self.rem if self.rem_den == den else 0
        level = self.level
        if self.ts > now_us:
            # Booked ahead: the bucket is known as of the last booked admission.
            if level >= cap:
                return BucketNow(cap, 0, self.ts)
            return BucketNow(level, rem, self.ts)
        level, rem = refill(level, rem, now_us - self.ts, cap=cap, num=num, den=den)
        return BucketNow(level, rem, now_us)

    def available_micro(self, now_us: int) -> int:
        """Micro-units in the bucket at ``now_us``: negative while callers are booked ahead.

        The level at the last booked admission, less the refill still owed
        before it; the owed part is computed in doubles, as the script does,
        so the figure is the one ``state()`` reports at that instant.
        """
        bucket = self.at(now_us)
        owed = math.ceil((bucket.at_us - now_us) / self.den * self.num)
        return bucket.level - owed

    def full_at_us(self, now_us: int) -> int:
        """Redis time at which the bucket is full again (``now_us`` when it is full)."""
        bucket = self.at(now_us)
        if bucket.level >= self.cap:
            return bucket.at_us
        ticks = (self.cap - bucket.level) * self.den - bucket.rem
        return bucket.at_us + -(-ticks // self.num)


@dataclass(frozen=True)
class BucketNow:
    """A bucket's level and remainder as of ``at_us`` (after ``now`` while booked ahead)."""

    level: int
    rem: int
    at_us: int


def refill(
    level: int, rem: int, elapsed_us: int, *, cap: int, num: int, den: int
) -> tuple[int, int]:
    """A bucket's (level, rem) after ``elapsed_us`` of refill at num/den, capped at ``cap``.

    Exact integers: the script's own arithmetic is exact in this range
    (lua/lib/bucket.lua splits its products to stay below 2^53).
    """
    if level >= cap:
        return cap, 0
    if elapsed_us <= 0:
        return level, rem
    gained, rem = divmod(elapsed_us * num + rem, den)
    level += gained
    if level >= cap:
        return cap, 0
    return level, rem


def parse_rates(raw: str | bytes) -> list[StoredBucket]:
    """The buckets of a rates string: per dimension ``<dim> <level> <rem> <rem_den> <ts>
    <seen> <cap>:<num>:<den>``."""
    tokens = text(raw).split()
    if not tokens or len(tokens) % RATE_TOKENS:
        raise BackendError(f"unreadable rates string {text(raw)[:200]!r}")
    buckets = []
    for at in range(0, len(tokens), RATE_TOKENS):
        name, level, rem, rem_den, ts, seen, setting = tokens[at : at + RATE_TOKENS]
        try:
            cap, num, den = (int(part) for part in setting.split(":"))
            bucket = StoredBucket(
                name, int(level), int(rem), int(rem_den), int(ts), int(seen), cap, num, den
            )
        except ValueError:
            raise BackendError(f"unreadable bucket {name!r} in {text(raw)[:200]!r}") from None
        if bucket.num < 1 or bucket.den < 1 or bucket.rem_den < 1 or bucket.cap < 1:
            raise BackendError(f"unreadable bucket {name!r} in {text(raw)[:200]!r}")
        buckets.append(bucket)
    return buckets


@dataclass(frozen=True)
class StoredBudget:
    """A budget string: the period it was last written in, and what it held then.

    Microseconds and nano-dollars; ``fired_ppm`` is the highest alert
    threshold reported that period; ``label`` the period (``2026-11-28`` or
    ``2026-11``); ``limit_nano`` the limit its last writer enforced.
    """

    period_start_us: int
    period_end_us: int
    spent_nano: int
    reserved_nano: int
    fired_ppm: int
    limit_nano: int
    label: str
    lost_at_us: int = 0
    """When Redis was last found to have lost this budget's spend (0: never):
    ``ratelimit restore`` rebuilds it from the ledger of record."""

    def holds(self, now_us: int) -> bool:
        """Whether ``now_us`` is in the stored period (else a new one has begun)."""
        return self.period_start_us <= now_us < self.period_end_us


def parse_budget(raw: str | bytes) -> StoredBudget:
    """A budget string (lua/lib/budget.lua):
    ``<start> <end> <spent> <reserved> <fired_ppm> <limit> <label> [<lost_us>]``."""
    fields = text(raw).split(" ")
    try:
        start, end, spent, reserved, fired, limit = (int(field) for field in fields[:6])
        lost = int(fields[7]) if len(fields) > 7 else 0
        return StoredBudget(start, end, spent, reserved, fired, limit, fields[6], lost)
    except (ValueError, IndexError):
        raise BackendError(f"unreadable budget string {text(raw)[:200]!r}") from None


@dataclass(frozen=True)
class PermitRecord:
    """What a permit in flight reserved (lua/lib/permit.lua), by position in its part.

    ``amounts`` maps ``(j, dimension)`` to micro-units, or nano-dollars for
    a budget (whose dimension is written ``$<name>`` in the record).
    """

    admitted_at_us: int
    amounts: Mapping[tuple[int, str], int]
    model: str


def parse_permit(raw: str | bytes) -> PermitRecord:
    """A permit record ``<admit_us>\\n<j>:<dim>:<amount> ...\\n<model>\\n...``."""
    record = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    try:
        admit, parts, model, _ = record.split(b"\n", 3)
        amounts: dict[tuple[int, str], int] = {}
        for part in parts.decode().split():
            j, dim, amount = part.split(":")
            amounts[int(j), dim] = int(amount)
        return PermitRecord(int(admit), amounts, model.decode("utf-8", "replace"))
    except ValueError:
        raise BackendError(f"unreadable permit record {record[:200]!r}") from None


@dataclass(frozen=True)
class InFlight:
    """Permits in flight of one scope: how many, how many past their lease, what they hold.

    ``reserved`` maps each dimension to micro-units, and the budget (its
    name without the ``$``) to nano-dollars; ``budget_dimension`` names the
    budget when a record did. ``summed`` is False when there were too many
    permits to read their records (``reserved`` is then empty).
    """

    permits: int = 0
    expired: int = 0
    reserved: Mapping[str, int] | None = None
    budget_dimension: str | None = None
    summed: bool = True

    def plus(self, other: InFlight) -> InFlight:
        """Both counts together."""
        reserved = dict(self.reserved or {})
        for dim, amount in (other.reserved or {}).items():
            reserved[dim] = reserved.get(dim, 0) + amount
        return InFlight(
            self.permits + other.permits,
            self.expired + other.expired,
            reserved,
            self.budget_dimension or other.budget_dimension,
            self.summed and other.summed,
        )


def in_flight(
    permits: Mapping[bytes, bytes],
    lease_ends: Mapping[bytes, float],
    now_us: int,
    position: int = 1,
) -> InFlight:
    """What the permits of a hash (id -> record) hold for the scope at ``position`` of their part.

    ``lease_ends`` maps permit ids to the end of their lease (µs, the
    leases set's scores); a permit whose lease ended is reclaimed, and
    charged in full, by the next script call on its scope.
    """
    reserved: dict[str, int] = {}
    budget: str | None = None
    count = expired = 0
    for permit_id, raw in permits.items():
        record = parse_permit(raw)
        mine = {dim: amount for (j, dim), amount in record.amounts.items() if j == position}
        if not mine:
            continue
        count += 1
        end = lease_ends.get(permit_id)
        if end is not None and end <= now_us:
            expired += 1
        for dim, amount in mine.items():
            name = dim.removeprefix("$")
            if name != dim:
                budget = name
            reserved[name] = reserved.get(name, 0) + amount
    return InFlight(count, expired, reserved, budget)
