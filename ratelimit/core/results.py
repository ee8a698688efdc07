"""What operations return: alerts, states, settlements and permits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol

from ratelimit.core.numbers import MICRO, NANO
from ratelimit.core.settings import Period
from ratelimit.errors import AcquireTimeout, BudgetExceeded, UnknownDimension


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


class LimiterState(dict[str, "DimensionState | BudgetState"]):
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


class PermitData:
    """What a permit holds: its id, its reservation and its place in line.

    The id is made on first use: a caller that never settles never pays for it.
    """

    __slots__ = (
        "_id",
        "_make_id",
        "admitted_at_us",
        "backed",
        "budget_names",
        "reserved_micro",
        "settlement",
        "wait_s",
    )

    reserved_micro: dict[str, int]
    """Reserved cost per rate dimension in micro-units, and per budget in nano-dollars."""
    wait_s: float
    """Seconds the caller was booked to wait before going ahead."""
    admitted_at_us: int
    """Redis time (microseconds since the epoch) at which the permit was admitted."""
    backed: bool
    """False for a permit granted unmetered while Redis was unreachable."""
    settlement: Settlement | None
    """The outcome of this permit's settle or cancel, once one was made here."""
    budget_names: frozenset[str]

    def __init__(
        self,
        ident: str | Callable[[], str],
        reserved_micro: dict[str, int],
        *,
        wait_s: float,
        admitted_at_us: int,
        backed: bool,
        budget_names: frozenset[str] = frozenset(),
    ) -> None:
        self._id: str | None = ident if isinstance(ident, str) else None
        self._make_id: Callable[[], str] | None = None if isinstance(ident, str) else ident
        self.reserved_micro = reserved_micro
        self.wait_s = wait_s
        self.admitted_at_us = admitted_at_us
        self.backed = backed
        self.budget_names = budget_names
        self.settlement = None

    @property
    def id(self) -> str:
        """Opaque id; ``limiter.settle(id, ...)`` settles the permit from any process."""
        if self._id is None:
            self._id = self._make_id()  # type: ignore[misc]  # set when _id is not
        return self._id

    @property
    def reserved(self) -> dict[str, Decimal]:
        """Reserved cost per dimension, in units (USD for a budget)."""
        return {
            name: Decimal(amount) / (NANO if name in self.budget_names else MICRO)
            for name, amount in self.reserved_micro.items()
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id!r}, reserved_micro={self.reserved_micro!r}, "
            f"wait_s={self.wait_s!r}, admitted_at_us={self.admitted_at_us!r}, "
            f"backed={self.backed!r}, settlement={self.settlement!r})"
        )


class PermitFactory(Protocol):
    """Builds the permit an acquire returns (the shells' own Permit class)."""

    def __call__(
        self,
        ident: str | Callable[[], str],
        reserved_micro: dict[str, int],
        *,
        wait_s: float,
        admitted_at_us: int,
        backed: bool,
        budget_names: frozenset[str],
    ) -> PermitData: ...


@dataclass(frozen=True)
class Booking:
    """The outcome of an acquire's script calls, before any waiting."""

    permit: PermitData | None
    error: AcquireTimeout | BudgetExceeded | None
    alerts: tuple[Alert, ...]
