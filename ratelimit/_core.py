"""The pure core: validation, key layout, script arguments and reply parsing.

Nothing here does I/O. The sync :mod:`ratelimit.limiter` and the asyncio
:mod:`ratelimit.asyncio` shells build a :class:`ScriptCall` with these
functions, send it, and hand the reply back here to be read, so both clients
share every rule.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Literal

import redis.exceptions

from ratelimit.errors import (
    AcquireTimeout,
    BackendError,
    CostExceedsCapacity,
    InvalidArgument,
    InvalidArgumentType,
    RedisUnavailable,
    UnknownDimension,
)

log = logging.getLogger("ratelimit")

#: Every key starts with this prefix; bumped whenever a script's storage format changes.
KEY_PREFIX = "rl:v1:"

#: One unit (a request, a token) is stored as this many integer micro-units.
MICRO = 1_000_000

#: The Lua scripts compute in doubles: integers must stay below 2^53 to be exact.
#: Rates are reduced to num/den micro-units per microsecond with num * den below
#: this bound, which leaves the scripts' intermediate products room to spare.
_RATE_PRODUCT_LIMIT = 2**50
_MAX_CAPACITY_MICRO = 2**50

#: Dimension names are Python identifiers (they are keyword arguments); names
#: that would shadow an argument of acquire() are refused.
_DIMENSION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_NAMES = frozenset({"timeout"})

OnRedisError = Literal["raise", "allow", "deny"]
_ON_REDIS_ERROR: tuple[OnRedisError, ...] = ("raise", "allow", "deny")

DEFAULT_LEASE_S = 600.0


def _exact(value: object, what: str) -> Decimal:
    """A finite number as an exact Decimal; bools, strings and NaN/infinity are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | Fraction):
        raise InvalidArgumentType(f"{what} must be a number, not {type(value).__name__}")
    if isinstance(value, Fraction):
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


def to_micro(value: object, what: str) -> int:
    """A non-negative cost in units as integer micro-units, rounded up (never under-charged)."""
    number = _exact(value, what)
    if number < 0:
        raise InvalidArgument(f"{what} must not be negative, got {value!r}")
    try:
        return math.ceil(number * MICRO)
    except (InvalidOperation, OverflowError) as exc:  # pragma: no cover - absurd exponents
        raise InvalidArgument(f"{what} is too large: {value!r}") from exc


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


@dataclass(frozen=True)
class Dimension:
    """One configured bucket of a quota, in the integers the scripts use."""

    name: str
    rate: Rate
    key_index: int
    capacity_micro: int
    num: int
    den: int

    def bucket_args(self) -> list[int | str]:
        return [self.key_index, self.name, self.capacity_micro, self.num, self.den]


@dataclass(frozen=True)
class ScriptCall:
    """Which script to run, with its KEYS and ARGV."""

    script: Literal["acquire", "settle", "state"]
    keys: list[str]
    args: list[int | str]


@dataclass(frozen=True)
class Grant:
    """A parsed acquire reply (or the policy's answer while Redis is unreachable)."""

    admitted: bool
    wait_s: float
    now_us: int
    backed: bool = True
    outage: RedisUnavailable | None = field(default=None, compare=False)

    @property
    def admitted_at_us(self) -> int:
        """Redis time (microseconds) at which the caller may go ahead."""
        return self.now_us + round(self.wait_s * MICRO)


SettleStatus = Literal["settled", "unknown", "unbacked"]


@dataclass(frozen=True)
class Settlement:
    """What a settle or cancel did.

    ``status``: ``"settled"`` (applied now), ``"unknown"`` (already settled or
    cancelled, by this process or another, or its lease ended first: nothing
    changed, the reservation stays as it was) or ``"unbacked"``
    (the permit was granted while Redis was unreachable under
    ``on_redis_error="allow"``: there is nothing to settle).
    """

    status: SettleStatus

    @property
    def applied(self) -> bool:
        """True only for the one settle that changed the buckets."""
        return self.status == "settled"


@dataclass(frozen=True)
class DimensionState:
    """A dimension's bucket as seen by Redis at ``now_us``."""

    available: float
    """Units in the bucket now; negative while callers are booked ahead."""
    capacity: float
    """Bucket capacity in units."""
    rate_per_s: float
    """Refill speed in units per second."""
    available_micro: int = field(repr=False)
    """``available`` in exact integer micro-units."""


def escape_name(name: str) -> str:
    """A name made safe for a key: braces (hash-tag delimiters) and % escaped."""
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def validate_name(name: object, what: str = "name") -> str:
    if not isinstance(name, str):
        raise InvalidArgumentType(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidArgument(f"{what} must not be empty")
    return name


@dataclass(frozen=True)
class QuotaSpec:
    """A quota's configuration, and every script call made against it.

    All keys share the hash tag ``{slot}`` (by default the quota's name), so a
    quota lives in one Redis Cluster slot.
    """

    name: str
    dimensions: tuple[Dimension, ...]
    slot: str
    lease_us: int
    on_redis_error: OnRedisError

    @classmethod
    def build(
        cls,
        name: object,
        rates: Mapping[str, object],
        *,
        slot: object = None,
        lease_s: object = DEFAULT_LEASE_S,
        on_redis_error: object = "raise",
    ) -> QuotaSpec:
        """Validate a limiter's arguments; raises InvalidArgument* on any bad one."""
        quota = validate_name(name)
        tag = quota if slot is None else validate_name(slot, "slot")
        if not rates:
            raise InvalidArgument("a limiter needs at least one dimension, e.g. requests=Rate(...)")
        if on_redis_error not in _ON_REDIS_ERROR:
            raise InvalidArgument(
                f"on_redis_error must be one of {_ON_REDIS_ERROR}, got {on_redis_error!r}"
            )
        lease_us = math.ceil(_positive(lease_s, "lease_s") * MICRO)
        dims = []
        for dim_name, rate in rates.items():
            if not _DIMENSION_NAME.match(dim_name) or dim_name in _RESERVED_NAMES:
                raise InvalidArgument(f"invalid dimension name {dim_name!r}")
            if not isinstance(rate, Rate):
                raise InvalidArgumentType(
                    f"dimension {dim_name!r} needs a Rate, not {type(rate).__name__}"
                )
            num, den = rate.refill_fraction()
            dims.append(Dimension(dim_name, rate, 3, rate.capacity_micro, num, den))
        return cls(quota, tuple(dims), tag, lease_us, on_redis_error)

    # -- keys --------------------------------------------------------------
    def _key(self, suffix: str) -> str:
        return f"{KEY_PREFIX}{{{escape_name(self.slot)}}}:{escape_name(self.name)}:{suffix}"

    @property
    def state_key(self) -> str:
        """Hash of the quota's buckets."""
        return self._key("s")

    @property
    def permits_key(self) -> str:
        """Hash of outstanding permits (what each reserved)."""
        return self._key("p")

    @property
    def leases_key(self) -> str:
        """Sorted set of outstanding permits by lease end."""
        return self._key("l")

    def _keys(self) -> list[str]:
        return [self.permits_key, self.leases_key, self.state_key]

    # -- acquire -------------------------------------------------------------
    def costs_micro(self, costs: Mapping[str, object]) -> dict[str, int]:
        """Validated costs per dimension in micro-units; ``requests`` defaults to 1."""
        known = {d.name: d for d in self.dimensions}
        for name in costs:
            if name not in known:
                raise UnknownDimension(
                    f"{self.name!r} has no dimension {name!r}; it has {sorted(known)}"
                )
        micro: dict[str, int] = {}
        for dim in self.dimensions:
            default = 1 if dim.name == "requests" else 0
            cost = to_micro(costs.get(dim.name, default), f"cost of {dim.name!r}")
            if cost > dim.capacity_micro:
                raise CostExceedsCapacity(
                    f"a cost of {Decimal(cost) / MICRO} {dim.name} can never fit in "
                    f"{self.name!r}, whose bucket holds {Decimal(dim.capacity_micro) / MICRO}"
                )
            micro[dim.name] = cost
        return micro

    def acquire_call(
        self, costs: Mapping[str, object], timeout_s: object
    ) -> tuple[ScriptCall, dict[str, int], str]:
        """The script call for one admission, its costs in micro-units, and its permit id."""
        micro = self.costs_micro(costs)
        if timeout_s is None:
            max_wait_us = -1
        else:
            wait = _exact(timeout_s, "timeout")
            if wait < 0:
                raise InvalidArgument(f"timeout must not be negative, got {timeout_s!r}")
            max_wait_us = math.floor(wait * MICRO)
        permit_id = secrets.token_hex(16)
        args: list[int | str] = [permit_id, max_wait_us, self.lease_us, len(self.dimensions)]
        for dim in self.dimensions:
            args += [*dim.bucket_args(), micro[dim.name]]
        return ScriptCall("acquire", self._keys(), args), micro, permit_id

    def parse_acquire(self, reply: object) -> Grant:
        admitted, wait_us, now_us = _ints(reply, 3)
        return Grant(admitted == 1, wait_us / MICRO, now_us)

    def when_unavailable(self, exc: RedisUnavailable) -> Grant:
        """Admission while Redis is unreachable, by the ``on_redis_error`` policy."""
        if self.on_redis_error == "raise":
            raise exc
        log.warning(
            "Redis unreachable, %s %r: %s",
            "admitting unmetered" if self.on_redis_error == "allow" else "denying",
            self.name,
            exc.__cause__ or exc,
        )
        return Grant(self.on_redis_error == "allow", 0.0, 0, backed=False, outage=exc)

    def timeout_error(self, grant: Grant, timeout_s: object) -> AcquireTimeout:
        """The error for a denied grant (the caller would wait past its timeout)."""
        if not grant.backed:
            error = AcquireTimeout(
                f"Redis is unreachable and {self.name!r} has on_redis_error='deny'", 1.0
            )
            error.__cause__ = grant.outage
            return error
        if grant.wait_s < 0:
            return AcquireTimeout(
                f"{self.name!r} is booked too far ahead to take this request", math.inf
            )
        return AcquireTimeout(
            f"{self.name!r} would admit this request in {grant.wait_s:.3f}s, "
            f"later than the timeout of {timeout_s}s",
            grant.wait_s,
        )

    # -- settle --------------------------------------------------------------
    def settle_call(self, permit_id: object, actual: Mapping[str, object]) -> ScriptCall:
        """Settle a permit: each given dimension's actual cost; others keep their reservation."""
        pid = validate_name(permit_id, "permit id")
        micro = {name: -1 for name in (d.name for d in self.dimensions)}
        known = set(micro)
        for name, value in actual.items():
            if name not in known:
                raise UnknownDimension(
                    f"{self.name!r} has no dimension {name!r}; it has {sorted(known)}"
                )
            micro[name] = to_micro(value, f"actual {name!r}")
        args: list[int | str] = [pid, len(self.dimensions)]
        for dim in self.dimensions:
            args += [*dim.bucket_args(), micro[dim.name]]
        return ScriptCall("settle", self._keys(), args)

    def cancel_call(self, permit_id: str) -> ScriptCall:
        return self.settle_call(permit_id, {d.name: 0 for d in self.dimensions})

    @staticmethod
    def parse_settle(reply: object) -> Settlement:
        status, _now = _ints(reply, 2)
        return Settlement("settled" if status == 1 else "unknown")

    # -- state ---------------------------------------------------------------
    def state_call(self) -> ScriptCall:
        args: list[int | str] = [len(self.dimensions)]
        for dim in self.dimensions:
            args += [1, *dim.bucket_args()[1:]]
        return ScriptCall("state", [self.state_key], args)

    def parse_state(self, reply: object) -> dict[str, DimensionState]:
        values = _ints(reply, 1 + len(self.dimensions))
        return {
            dim.name: DimensionState(
                available=level / MICRO,
                capacity=dim.capacity_micro / MICRO,
                rate_per_s=dim.rate.rate_per_s,
                available_micro=level,
            )
            for dim, level in zip(self.dimensions, values[1:], strict=True)
        }


def _ints(reply: object, length: int) -> list[int]:
    if not isinstance(reply, Sequence) or len(reply) != length:
        raise BackendError(f"unexpected script reply {reply!r}")
    return [int(v) for v in reply]


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


@dataclass
class PermitData:
    """What a permit holds: its id, its reservation and its place in line."""

    id: str
    """Opaque id; ``limiter.settle(id, ...)`` settles the permit from any process."""
    reserved_micro: dict[str, int]
    """Reserved cost per dimension, in micro-units."""
    wait_s: float
    """Seconds the caller was booked to wait before going ahead."""
    admitted_at_us: int
    """Redis time (microseconds since the epoch) at which the permit was admitted."""
    backed: bool
    """False for a permit granted unmetered while Redis was unreachable."""
    settlement: Settlement | None = None
    """The outcome of this permit's settle or cancel, once one was made here."""

    @property
    def reserved(self) -> dict[str, Decimal]:
        """Reserved cost per dimension, in units."""
        return {name: Decimal(micro) / MICRO for name, micro in self.reserved_micro.items()}

    @classmethod
    def from_grant(cls, permit_id: str, reserved: dict[str, int], grant: Grant) -> PermitData:
        return cls(permit_id, reserved, grant.wait_s, grant.admitted_at_us, grant.backed)
