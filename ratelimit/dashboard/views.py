"""What the dashboard's JSON endpoints answer, shaped from readings with no I/O.

The readers (:mod:`ratelimit.dashboard.sources` for Redis,
:mod:`ratelimit.dashboard.ledger_sql` for PostgreSQL) hand over what they
read: a :class:`~ratelimit.deployment.Snapshot`, fired alerts, and the spend
summed by day and model, by scope and by tag value (:class:`SpendTotals`).
The functions here turn them into JSON-ready documents. Money is always a
decimal string, exact to the nano-dollar, so the page shows what the ledger
holds to the last digit; the page formats it. Fractions that only draw a bar
(utilization) are decimal strings too, rounded to four places.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from ratelimit.deployment import BudgetReading, RateReading, Snapshot
from ratelimit.ledger import FiredAlert, LedgerEntry

#: The spend chart covers this many days, today included.
CHART_DAYS = 30
#: The top lists name this many scopes, and this many values of each tag.
TOP_N = 10
#: At most this many alerts are listed, newest first.
ALERTS_SHOWN = 50

_FRACTION_PLACES = Decimal("0.0001")


def money(amount: Decimal) -> str:
    """USD as a plain decimal string without trailing zeros: ``"0.0091"``, ``"12"``."""
    if amount == 0:
        return "0"
    return format(amount.normalize(), "f")


def fraction(numerator: Decimal | int, denominator: Decimal | int) -> str:
    """``numerator / denominator`` to four decimals, as a string (``"0"`` over nothing)."""
    if denominator == 0:
        return "0"
    value = Decimal(numerator) / Decimal(denominator)
    return str(value.quantize(_FRACTION_PLACES, rounding=ROUND_HALF_EVEN))


def tag_value(value: object) -> str:
    """A tag's value as the top list names it: strings as they are, anything else as JSON.

    PostgreSQL's ``jsonb_each_text`` gives the same text, so both sources agree.
    """
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class SpendTotals:
    """Spend over the chart's window, summed three ways (USD, exact).

    ``by_day_model`` maps ``(day, model)``, ``by_scope`` a scope's name,
    ``by_tag`` ``(tag, value)`` to what was spent. ``entries`` counts the
    ledger entries summed, ``oldest`` is the time of the oldest one, and
    ``truncated`` says the reader stopped at its bound before the end.
    """

    by_day_model: Mapping[tuple[str, str], Decimal] = field(default_factory=dict)
    by_scope: Mapping[str, Decimal] = field(default_factory=dict)
    by_tag: Mapping[tuple[str, str], Decimal] = field(default_factory=dict)
    entries: int = 0
    oldest: datetime | None = None
    truncated: bool = False


def first_chart_day(today: date, days: int = CHART_DAYS) -> date:
    """The first day the chart shows, when it ends ``today``."""
    return today - timedelta(days=days - 1)


def totals_from_entries(
    entries: Iterable[LedgerEntry], first_day: date, *, truncated: bool = False
) -> SpendTotals:
    """Ledger entries of ``first_day`` and later (their counter's day), summed three ways."""
    by_day_model: dict[tuple[str, str], Decimal] = {}
    by_scope: dict[str, Decimal] = {}
    by_tag: dict[tuple[str, str], Decimal] = {}
    count = 0
    oldest: datetime | None = None
    start = first_day.isoformat()
    for entry in entries:
        if entry.day < start:
            continue
        count += 1
        oldest = entry.time if oldest is None else min(oldest, entry.time)
        cost = entry.cost_usd
        key = (entry.day, entry.model)
        by_day_model[key] = by_day_model.get(key, Decimal(0)) + cost
        by_scope[entry.scope] = by_scope.get(entry.scope, Decimal(0)) + cost
        for tag, value in entry.tags.items():
            pair = (str(tag), tag_value(value))
            by_tag[pair] = by_tag.get(pair, Decimal(0)) + cost
    return SpendTotals(by_day_model, by_scope, by_tag, count, oldest, truncated)


def _ranked(amounts: Mapping[str, Decimal], top: int) -> list[dict[str, str]]:
    """The ``top`` largest amounts, largest first (ties by name), as ``{name, usd}``."""
    order = sorted(amounts.items(), key=lambda item: (-item[1], item[0]))
    return [{"name": name, "usd": money(amount)} for name, amount in order[:top]]


def spend_view(
    totals: SpendTotals,
    today: date,
    *,
    source: str,
    days: int = CHART_DAYS,
    top: int = TOP_N,
) -> dict[str, Any]:
    """The ``/api/spend`` document: the daily chart's stacks, the top scopes and tag values.

    The chart's days run from ``days - 1`` days before ``today`` to
    ``today``, or to a later day the totals hold (a budget's zone ahead of
    UTC). Each day carries its total and one amount per model (models
    ordered by what they spent, most first, so the stacks keep their order).
    """
    first = first_chart_day(today, days)
    held = [date.fromisoformat(day) for day, _ in totals.by_day_model]
    last = max([today, *held])
    axis = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    per_model: dict[str, Decimal] = {}
    for (day, model), amount in totals.by_day_model.items():
        if day >= axis[0]:
            per_model[model] = per_model.get(model, Decimal(0)) + amount
    models = [name for name, _ in sorted(per_model.items(), key=lambda i: (-i[1], i[0]))]
    chart = []
    for day in axis:
        amounts = {m: totals.by_day_model.get((day, m), Decimal(0)) for m in models}
        chart.append(
            {
                "day": day,
                "total_usd": money(sum(amounts.values(), Decimal(0))),
                "models": {m: money(a) for m, a in amounts.items() if a},
            }
        )
    tags: dict[str, dict[str, Decimal]] = {}
    for (tag, value), amount in totals.by_tag.items():
        tags.setdefault(tag, {})[value] = amount
    tag_order = sorted(tags, key=lambda t: (-sum(tags[t].values(), Decimal(0)), t))
    return {
        "source": source,
        "first_day": axis[0],
        "last_day": axis[-1],
        "models": models,
        "days": chart,
        "total_usd": money(sum(per_model.values(), Decimal(0))),
        "top_scopes": _ranked(totals.by_scope, top),
        "top_tags": [{"tag": tag, "values": _ranked(tags[tag], top)} for tag in tag_order],
        "entries": totals.entries,
        "oldest_entry": None if totals.oldest is None else totals.oldest.isoformat(),
        "truncated": totals.truncated,
    }


def budget_view(name: str, slot: str, budget: BudgetReading, now_us: int) -> dict[str, Any]:
    """One budget's gauge: spent, reserved and limit (USD strings), and the time to reset."""
    resets = budget.resets_at
    in_s = None if budget.resets_at_us is None else max(0, budget.resets_at_us - now_us) // 10**6
    return {
        "scope": name,
        "slot": slot,
        "spent_usd": money(budget.spent),
        "reserved_usd": money(budget.reserved),
        "limit_usd": money(budget.limit),
        "available_usd": money(budget.available),
        "used": fraction(budget.spent_nano + budget.reserved_nano, budget.limit_nano),
        "period": budget.period,
        "resets_at": None if resets is None else resets.isoformat(),
        "resets_in_s": in_s,
    }


def rate_view(rate: RateReading) -> dict[str, Any]:
    """One dimension's utilization: what is used of the bucket (above 1 when booked ahead)."""
    used = rate.capacity_micro - rate.available_micro
    return {
        "dimension": rate.dimension,
        "available": money(rate.available),
        "capacity": money(rate.capacity),
        "used": money(Decimal(used) / 10**6),
        "utilization": fraction(used, rate.capacity_micro),
        "status": rate.status,
    }


def alert_view(fired: FiredAlert) -> dict[str, Any]:
    """One fired alert: when, which scope, the threshold, spent and limit then."""
    alert = fired.alert
    return {
        "fired_at": fired.fired.astimezone(UTC).isoformat(),
        "scope": alert.scope,
        "threshold": str(Decimal(repr(alert.threshold))),
        "spent_usd": money(alert.spent),
        "limit_usd": money(alert.limit),
        "period": alert.period,
    }


def live_view(
    snapshot: Snapshot, alerts: Sequence[FiredAlert], *, shown: int = ALERTS_SHOWN
) -> dict[str, Any]:
    """The ``/api/live`` document: budgets, each quota's utilization, the newest alerts."""
    budgets = [
        budget_view(scope.name, scope.slot, scope.budget, snapshot.now_us)
        for scope in sorted(snapshot.scopes, key=lambda s: (s.name, s.slot))
        if scope.budget is not None
    ]
    quotas = [
        {
            "scope": scope.name,
            "slot": scope.slot,
            "in_flight": scope.in_flight.permits,
            "dimensions": [rate_view(rate) for rate in scope.rates],
        }
        for scope in sorted(snapshot.scopes, key=lambda s: (s.name, s.slot))
        if scope.rates
    ]
    newest = sorted(alerts, key=lambda fired: fired.fired, reverse=True)[:shown]
    return {
        "time": snapshot.time.isoformat(),
        "time_us": snapshot.now_us,
        "truncated": snapshot.truncated,
        "budgets": budgets,
        "quotas": quotas,
        "alerts": [alert_view(fired) for fired in newest],
    }
