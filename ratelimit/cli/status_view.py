"""How ``ratelimit status`` draws a snapshot: rich tables of rates, budgets and permits.

Imported only when a table is drawn, so the rest of the command line (and
``--json``) works without the ``cli`` extra that brings ``rich``.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ratelimit.cli.output import align_points, format_usd, number, per_second
from ratelimit.core.numbers import MICRO, usd
from ratelimit.deployment import RateReading, ScopeReading, Snapshot

_STATUS_STYLE = {
    "full": "green",
    "refilling": "yellow",
    "booked ahead": "red",
    "in debt": "red",
}


def units(amount: Decimal, capacity: Decimal) -> str:
    """An amount of a dimension: whole units for large buckets, two decimals for small."""
    whole = capacity >= 100 or amount == amount.to_integral_value()
    return number(float(amount), 0 if whole else 2)


def seconds(micros: int) -> str:
    """A duration for a person: ``0.4 s``, ``12 s``, ``3 min``, ``2.5 h``."""
    s = micros / MICRO
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _status(rate: RateReading, now_us: int) -> Text:
    status = rate.status
    words: str = status
    if status == "booked ahead" and rate.booked_until_us is not None:
        words = f"booked {seconds(rate.booked_until_us - now_us)} ahead"
    return Text(words, style=_STATUS_STYLE[status])


def _full_in(rate: RateReading, now_us: int) -> str:
    return "" if rate.status == "full" else seconds(rate.full_at_us - now_us)


def _configured(rate: RateReading) -> Text:
    c = rate.configured
    if c is None:
        return Text("-", style="dim")
    if not rate.differs:
        return Text("same", style="dim")
    capacity = Decimal(c.capacity_micro) / MICRO
    return Text(
        f"{units(capacity, capacity)} at {per_second(c.num / c.den)}/s", style="bold magenta"
    )


def rates_table(snapshot: Snapshot) -> Table:
    """One row per scope and rate dimension."""
    configured = any(scope.configured for scope in snapshot.scopes)
    table = Table(title="Rates", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("scope", no_wrap=True)
    table.add_column("dimension", no_wrap=True)
    table.add_column("available", justify="right", no_wrap=True)
    table.add_column("capacity", justify="right", no_wrap=True)
    table.add_column("rate/s", justify="right", no_wrap=True)
    table.add_column("state")
    table.add_column("full in", justify="right", no_wrap=True)
    if configured:
        table.add_column("configured")
    for scope in snapshot.scopes:
        for i, rate in enumerate(scope.rates):
            cells: list[RenderableType] = [
                _scope_cell(scope) if i == 0 else "",
                rate.dimension,
                units(rate.available, rate.capacity),
                units(rate.capacity, rate.capacity),
                per_second(float(rate.rate_per_s)),
                _status(rate, snapshot.now_us),
                _full_in(rate, snapshot.now_us),
            ]
            if configured:
                cells.append(_configured(rate))
            table.add_row(*cells)
    return table


def _scope_cell(scope: ScopeReading) -> Text:
    """The scope's name, and below it its slot when it has one of its own."""
    cell = Text(scope.name, style="bold")
    if scope.slot != scope.name:
        cell.append(f"\n{{{scope.slot}}}", style="dim")
    return cell


def budgets_table(snapshot: Snapshot) -> Table:
    """One row per scope with a budget: spent, reserved and limit (USD), and the reset."""
    table = Table(title="Budgets (USD)", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("scope", "spent", "reserved", "limit", "available", "period", "resets at"):
        money = name in ("spent", "reserved", "limit", "available")
        table.add_column(name, justify="right" if money else "left", no_wrap=name != "resets at")
    rows: list[list[str]] = []
    budgets = [(scope, scope.budget) for scope in snapshot.scopes if scope.budget is not None]
    for _, budget in budgets:
        resets = budget.resets_at
        limit = format_usd(budget.limit)
        if budget.stored_limit_nano not in (None, budget.limit_nano):
            limit += f" (Redis: {format_usd(usd(budget.stored_limit_nano or 0))})"
        rows.append(
            [
                format_usd(budget.spent),
                format_usd(budget.reserved),
                limit,
                format_usd(budget.available),
                budget.period or "ended",
                "-" if resets is None else resets.strftime("%Y-%m-%d %H:%M %Z"),
            ]
        )
    align_points(rows, (0, 1, 3))
    for (scope, budget), row in zip(budgets, rows, strict=True):
        spent_all = budget.available <= 0
        table.add_row(
            _scope_cell(scope), *row[:3], Text(row[3], style="red" if spent_all else ""), *row[4:]
        )
    return table


def _reserved(scope: ScopeReading) -> str:
    flight = scope.in_flight
    if not flight.summed:
        return "(too many to sum)"
    parts = []
    for dim, amount in sorted((flight.reserved or {}).items()):
        if dim == flight.budget_dimension:
            parts.append(f"{dim}=${format_usd(usd(amount))}")
        else:
            amount_units = Decimal(amount) / MICRO
            parts.append(f"{dim}={units(amount_units, amount_units)}")
    return " ".join(parts)


def permits_table(snapshot: Snapshot) -> Table:
    """One row per scope with permits in flight: how many, past their lease, what they hold."""
    table = Table(title="Permits in flight", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("scope", no_wrap=True)
    table.add_column("permits", justify="right")
    table.add_column("lease ended", justify="right")
    table.add_column("reserved")
    for scope in snapshot.scopes:
        flight = scope.in_flight
        if flight.permits:
            table.add_row(
                _scope_cell(scope), f"{flight.permits:,}", f"{flight.expired:,}", _reserved(scope)
            )
    for group in snapshot.groups:
        table.add_row(
            Text(f"group {group.digest} {{{group.slot}}}", style="dim"),
            f"{group.in_flight.permits:,}",
            f"{group.in_flight.expired:,}",
            "(scopes not found)",
        )
    return table


def notes(snapshot: Snapshot, missing: Mapping[str, str]) -> list[Text]:
    """What a reader should know besides the tables: idle scopes, truncation, problems."""
    lines = []
    idle = [s.name for s in snapshot.scopes if s.configured and not s.kinds]
    if idle:
        lines.append(Text(f"full / idle (no keys in Redis): {', '.join(idle)}", style="green"))
    for name, why in missing.items():
        lines.append(Text(f"{name}: {why}", style="yellow"))
    if snapshot.truncated:
        lines.append(Text("the scan stopped at its bound: some scopes are not shown", style="red"))
    for scope in snapshot.scopes:
        for problem in scope.problems:
            lines.append(Text(f"{scope.name}: {problem}", style="red"))
        if scope.in_flight.expired:
            lines.append(
                Text(
                    f"{scope.name}: {scope.in_flight.expired} permit(s) past their lease, "
                    "charged in full by the scope's next call",
                    style="yellow",
                )
            )
    return lines


def render(snapshot: Snapshot, server: str, missing: Mapping[str, str] | None = None) -> Group:
    """The whole view: a heading, the tables that have rows, and the notes."""
    when = snapshot.time.strftime("%Y-%m-%d %H:%M:%S UTC")
    count = len(snapshot.scopes)
    heading = Text.assemble(
        ("ratelimit status", "bold"),
        f"  {server}  Redis time {when}  {count} scope{'' if count == 1 else 's'}",
    )
    parts: list[RenderableType] = [heading]
    if not snapshot.scopes:
        parts.append(Text("no scopes found (no keys under rl:v2:)", style="yellow"))
    for table in (rates_table(snapshot), budgets_table(snapshot), permits_table(snapshot)):
        if table.row_count:
            parts.append(table)
    parts += notes(snapshot, missing or {})
    return Group(*parts)


def render_error(server: str, error: Exception) -> Text:
    """What the live view shows while the server cannot be read."""
    return Text.assemble(
        ("ratelimit status", "bold"), f"  {server}\n", (f"cannot read: {error}", "red")
    )
