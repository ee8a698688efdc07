"""Reading what the scripts reply: alerts, events, refusals, the state and the spend seen.

Every reply starts ``{status, now_us, notes, ...}`` (lua/lib/args.lua), once
:func:`full_reply` has expanded the compact answers of the common case;
notes, when there are any, hold alerts and events. Alerts become
:class:`Alert` objects for the caller; events are what this process must
tell its operator: rates that disagree between processes, a budget whose
spend Redis lost, alerts it could not publish.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ratelimit.core.keys import ALERT_CHANNEL
from ratelimit.core.numbers import MICRO, text, usd
from ratelimit.core.part import Part
from ratelimit.core.results import Alert, BudgetState, DimensionState, LimiterState
from ratelimit.errors import AcquireTimeout, BackendError, BudgetExceeded

log = logging.getLogger("ratelimit")

#: Warnings already logged by this process: each is said once.
_said: set[tuple[object, ...]] = set()


def full_reply(script: str, reply: Any) -> list[Any]:
    """A script's reply in the form every script shares, ``{status, now_us, notes, ...}``.

    Three scripts answer their common case (admitted, or settled, with
    nothing to report) in less for Redis to build and send and for the
    client to parse: ``acquire_rates`` with ``now_us`` alone, ``acquire``
    with one string ``"<now_us> <wait_us> <j> <label> <spent> ..."`` and
    ``settle`` with ``"<now_us> <j> <label> <spent> ..."`` (the spend seen
    per budget, lua/lib/budget.lua).
    """
    if isinstance(reply, list):
        return reply
    if script == "acquire_rates":
        return [1, reply, None, 0]
    fields = text(reply).split()
    if script == "acquire":
        return [1, int(fields[0]), None, int(fields[1]), triples(fields[2:])]
    return [1, int(fields[0]), None, [], triples(fields[1:])]


def triples(fields: list[str]) -> list[list[str]]:
    """The spend seen per budget, ``[j, label, spent]`` each, of a compact reply's fields."""
    return [fields[i : i + 3] for i in range(0, len(fields), 3)]


def _once(key: tuple[object, ...]) -> bool:
    if key in _said:
        return False
    _said.add(key)
    return True


def read_notes(part: Part, notes: Sequence[Any] | None) -> list[Alert]:
    """A reply's notes: its events reported, its alerts returned."""
    if not notes:
        return []
    raw_alerts, events = notes
    if events:
        report_events(part, events)
    return alerts_of(part, raw_alerts)


def alerts_of(part: Part, raw: Sequence[Any]) -> list[Alert]:
    """The alerts of a reply, as the caller receives them."""
    alerts = []
    for j, ppm, spent, limit, period in raw:
        scope = part.scopes[int(j) - 1]
        alerts.append(
            Alert(
                threshold=int(ppm) / MICRO,
                scope=scope.name,
                spent=usd(int(spent)),
                limit=usd(int(limit)),
                period=text(period),
            )
        )
    return alerts


def _rate_text(cap: int, num: int, den: int) -> str:
    return f"capacity {cap / MICRO:g}, {num / den:g}/s"


def report_events(part: Part, raw: Sequence[Any]) -> None:
    """Log what the scripts noticed: once per process for what persists."""
    for event in raw:
        kind, j = text(event[0]), int(event[1])
        scope = part.scopes[j - 1]
        if kind == "conflict":
            name, cap, num, den = text(event[2]), int(event[3]), int(event[4]), int(event[5])
            own = next(d for d in scope.rates if d.name == name)
            if not _once(("conflict", scope.name, name, cap, num, den)):
                continue
            mine = _rate_text(own.capacity_micro, own.num, own.den)
            if (cap, num, den) == (own.capacity_micro, own.num, own.den):
                log.warning(
                    "another process uses other rates for %s of %r; this one's (%s) are "
                    "stricter and apply to every process while it keeps using them",
                    name, scope.name, mine,
                )  # fmt: skip
            else:
                log.warning(
                    "%s of %r is configured differently by another process; the stricter "
                    "setting applies to every process (%s), not this one's (%s), until no "
                    "process has used it for a minute",
                    name, scope.name, _rate_text(cap, num, den), mine,
                )  # fmt: skip
        elif kind == "restored":
            found, restored = usd(int(event[2])), usd(int(event[3]))
            log.error(
                "the budget of %r lost its spend in Redis (it held $%s; $%s was already "
                "spent this period): restored a floor of $%s. Redis lost data (a restart "
                "without persistence, an eviction or a flush): rebuild the spend from the "
                "ledger of record with `ratelimit restore`, and see `ratelimit doctor`",
                scope.name, found, restored, restored,
            )  # fmt: skip
        elif kind == "publish_denied" and _once(("publish", scope.name)):
            log.warning(
                "alerts of %r could not be published on %s (%s); they still reach the "
                "alerts stream and on_alert. Grant the channel to publish them",
                scope.name, ALERT_CHANNEL, text(event[2]),
            )  # fmt: skip


def budget_refusal(part: Part, reply: Sequence[Any]) -> BudgetExceeded:
    """The error of an acquire a budget refused: ``{-1, now, notes, j, ...}``."""
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


def timeout_error(scope_names: Sequence[str], wait_us: int, timeout_s: object) -> AcquireTimeout:
    """The error of an acquire that would be admitted after its timeout (-1: never)."""
    names = list(scope_names)
    if wait_us < 0:
        return AcquireTimeout(f"{names} are booked too far ahead to take this", math.inf)
    return AcquireTimeout(
        f"{names} would admit this in {wait_us / MICRO:.3f}s, later than the timeout of "
        f"{timeout_s}s",
        wait_us / MICRO,
    )


def read_state(
    part: Part, reply: Sequence[Any], result: LimiterState, *, prefix: bool
) -> list[tuple[int, str, int]]:
    """Put ``state.lua``'s reply for ``part`` into ``result`` (``"scope.dim"`` when
    ``prefix``); returns the spend seen per budgeted scope: (its position in the
    part, from 1; its period's label; nano-dollars)."""
    rates, budgets = iter(reply[3]), iter(reply[4])
    seen = []
    for j, scope in enumerate(part.scopes, 1):
        label = f"{scope.name}." if prefix else ""
        for d in scope.rates:
            level, cap, num, den = (int(v) for v in next(rates))
            result[label + d.name] = DimensionState(
                available=level / MICRO,
                capacity=cap / MICRO,
                rate_per_s=num / den,
                available_micro=level,
            )
        if scope.budget:
            spent, reserved, stop = (int(v) for v in next(budgets))
            budget = scope.budget.budget
            resets_at = datetime.fromtimestamp(stop / MICRO, budget.zone)
            result[label + scope.budget.name] = BudgetState(
                spent=usd(spent),
                reserved=usd(reserved),
                limit=usd(scope.budget.limit_nano),
                resets_at=resets_at,
                period=budget.per,
            )
            seen.append((j, budget.periods_around(stop - 1)[1][1], spent))
    return seen
