"""Reading the ledger back: entries, daily spend counters, CSV and JSON Lines export.

Every settled (and every reclaimed) permit of a budgeted scope is one entry
of the scope's Redis stream, written by the same script call that moved the
money, together with the day's spend counter; so, within the stream's
retention, a day's entries always sum to that day's counter.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Any, NamedTuple

import msgpack  # type: ignore[import-untyped]

from ratelimit.core.calls import ClientCall, Flow
from ratelimit.core.keys import ScopeKeys
from ratelimit.core.numbers import MICRO, text, usd
from ratelimit.core.results import Alert
from ratelimit.errors import BackendError

__all__ = [
    "FiredAlert",
    "LedgerEntry",
    "parse_alert",
    "parse_entry",
    "parse_fired_alert",
    "parse_fired_published_alert",
    "parse_published_alert",
    "parse_spend",
    "to_csv",
    "to_jsonl",
    "total",
]


@dataclass(frozen=True)
class LedgerEntry:
    """One settled or reclaimed permit, as the ledger stream holds it."""

    stream_id: str
    """The entry's stream ID (Redis milliseconds and a sequence number)."""
    time: datetime
    """Redis time of the settle, UTC."""
    scope: str
    """The limiter (scope) whose budget was charged."""
    permit_id: str
    kind: str
    """``"settled"``, ``"cancelled"`` (cost 0), ``"reclaimed"`` (its lease ended
    unsettled: charged in full) or ``"cache_hit"`` (cost 0, see ``saved_usd``)."""
    day: str
    """The calendar day of the spend counter it was added to (``2026-11-28``)."""
    model: str
    cost_usd: Decimal
    tokens: dict[str, int | str] = field(default_factory=dict)
    """Tokens by kind (the permit's dimensions, or the usage's kinds)."""
    tags: dict[str, Any] = field(default_factory=dict)
    """The caller's tags."""
    saved_usd: Decimal = Decimal(0)
    """For a ``"cache_hit"`` entry: what the call would have cost."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (cost as a decimal string, time in ISO 8601)."""
        return {
            "stream_id": self.stream_id,
            "time": self.time.isoformat(),
            "scope": self.scope,
            "permit_id": self.permit_id,
            "kind": self.kind,
            "day": self.day,
            "model": self.model,
            "cost_usd": format(self.cost_usd, "f"),
            "tokens": self.tokens,
            "tags": self.tags,
            "saved_usd": format(self.saved_usd, "f"),
        }


def _fields(fields: object) -> dict[str, Any]:
    if not isinstance(fields, Mapping):
        raise BackendError(f"unreadable stream entry {fields!r}")
    return {text(k): v for k, v in fields.items()}


def _from_us(micros: object) -> datetime:
    """A UTC datetime from Redis microseconds."""
    return datetime.fromtimestamp(int(text(micros)) / MICRO, UTC)


def parse_entry(stream_id: object, fields: object) -> LedgerEntry:
    """A ledger entry from an ``XRANGE`` row."""
    try:
        # Tags are the caller's: a nested map may have non-string keys, and the
        # entry must still be readable.
        record = msgpack.unpackb(_fields(fields)["rec"], raw=False, strict_map_key=False)
        return LedgerEntry(
            stream_id=text(stream_id),
            time=_from_us(record["t"]),
            scope=str(record["scope"]),
            permit_id=str(record["id"]),
            kind=str(record["kind"]),
            day=str(record["day"]),
            model=str(record["model"]),
            cost_usd=usd(int(record["cost_nano"])),
            tokens=dict(record["tokens"]),
            tags=dict(record["tags"]),
            saved_usd=usd(int(record["saved_nano"])),
        )
    except (KeyError, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BackendError(f"unreadable ledger entry {stream_id!r}: {exc}") from exc


def parse_spend(raw: Mapping[Any, Any], day: str | None = None) -> dict[str, dict[str, Decimal]]:
    """Spend counters as ``{day: {model: USD}}``, optionally for one day only."""
    spend: dict[str, dict[str, Decimal]] = {}
    for key, value in raw.items():
        entry_day, _, model = text(key).partition("|")
        if model.endswith("|saved"):
            continue  # what cache hits saved: see saved()
        if day is None or entry_day == day:
            spend.setdefault(entry_day, {})[model] = usd(int(value))
    return spend


def parse_saved(raw: Mapping[Any, Any], day: str | None = None) -> dict[str, dict[str, Decimal]]:
    """What cache hits saved, as ``{day: {model: USD}}``, optionally for one day only."""
    saved: dict[str, dict[str, Decimal]] = {}
    for key, value in raw.items():
        entry_day, _, rest = text(key).partition("|")
        model, _, marker = rest.rpartition("|")
        if marker == "saved" and (day is None or entry_day == day):
            saved.setdefault(entry_day, {})[model] = usd(int(value))
    return saved


class FiredAlert(NamedTuple):
    """An alert with the Redis time its threshold was crossed."""

    fired: datetime
    """Redis time of the settle that crossed the threshold, UTC."""
    alert: Alert


def _alert(scope: str, ppm: str, spent: str, limit: str, period: str) -> Alert:
    return Alert(int(ppm) / MICRO, scope, usd(int(spent)), usd(int(limit)), period)


def parse_alert(fields: object) -> Alert:
    """An alert from a row of a scope's alerts stream."""
    values = {k: text(v) for k, v in _fields(fields).items()}
    return _alert(
        values["scope"], values["threshold_ppm"], values["spent"], values["limit"], values["period"]
    )


def parse_fired_alert(stream_id: object, fields: object) -> FiredAlert:
    """An alert from an ``XRANGE`` row of a scope's alerts stream, with when it fired.

    The time is the row's ``t`` field (Redis microseconds); a row without one
    is dated by its stream ID (Redis milliseconds).
    """
    micros = _fields(fields).get("t")
    if micros is None:
        fired = datetime.fromtimestamp(int(text(stream_id).partition("-")[0]) / 1000, UTC)
    else:
        fired = _from_us(micros)
    return FiredAlert(fired, parse_alert(fields))


def _published(message: bytes | str) -> tuple[Alert, str]:
    """A published alert's fields (tab-separated), the last one its time in microseconds."""
    scope, ppm, spent, limit, period, micros = text(message).split("\t")
    return _alert(scope, ppm, spent, limit, period), micros


def parse_published_alert(message: bytes | str) -> Alert:
    """An alert from a message on :data:`ratelimit.ALERT_CHANNEL` (tab-separated fields)."""
    return _published(message)[0]


def parse_fired_published_alert(message: bytes | str) -> FiredAlert:
    """An alert from a message on :data:`ratelimit.ALERT_CHANNEL`, with when it fired.

    Raises ``ValueError`` for a message that is not an alert.
    """
    alert, micros = _published(message)
    return FiredAlert(_from_us(micros), alert)


def stream_bounds(
    since: datetime | None, until: datetime | None, after: str | None = None
) -> tuple[str, str]:
    """``XRANGE`` bounds for entries settled in [since, until] (stream IDs are milliseconds).

    With ``after`` (a stream ID), the range starts past that entry: how a
    reader resumes where its last page ended.
    """
    start = "-" if since is None else str(int(since.timestamp() * 1000))
    end = "+" if until is None else str(int(until.timestamp() * 1000))
    if after is not None:
        millis, _, sequence = after.partition("-")
        # The smallest ID after ``after``: an exclusive start that every server takes.
        resume = (int(millis), int(sequence or 0) + 1)
        if since is None or resume > (int(start), 0):
            start = f"{resume[0]}-{resume[1]}"
    return start, end


_COLUMNS = (
    "stream_id", "time", "scope", "permit_id", "kind", "day", "model", "cost_usd", "saved_usd",
)  # fmt: skip


def to_csv(entries: Iterable[LedgerEntry], out: IO[str]) -> None:
    """Write entries as CSV: one row each, tokens and tags as JSON columns."""
    writer = csv.writer(out)
    writer.writerow([*_COLUMNS, "tokens", "tags"])
    for entry in entries:
        row = entry.as_dict()
        writer.writerow(
            [*(row[c] for c in _COLUMNS), json.dumps(row["tokens"]), json.dumps(row["tags"])]
        )


def to_jsonl(entries: Iterable[LedgerEntry], out: IO[str]) -> None:
    """Write entries as JSON Lines."""
    for entry in entries:
        out.write(json.dumps(entry.as_dict(), sort_keys=True) + "\n")


def total(entries: Sequence[LedgerEntry]) -> Decimal:
    """The exact sum of the entries' costs in USD."""
    return sum((e.cost_usd for e in entries), Decimal(0))


# -- reads, as flows the sync and asyncio limiters drive -------------------------


def read_entries(
    keys: ScopeKeys,
    since: datetime | None,
    until: datetime | None,
    count: int | None,
    after: str | None = None,
) -> Flow[list[LedgerEntry]]:
    """A scope's ledger entries settled between ``since`` and ``until``, oldest first.

    At most ``count`` of them, starting past the stream ID ``after`` when
    given: a long ledger is read page by page, each page starting after the
    last entry of the one before (``after=page[-1].stream_id``).
    """
    start, end = stream_bounds(since, until, after)
    rows = yield ClientCall("xrange", (keys.ledger, start, end), {"count": count})
    return [parse_entry(stream_id, fields) for stream_id, fields in rows or []]


def read_spend(keys: ScopeKeys, day: str | None) -> Flow[dict[str, dict[str, Decimal]]]:
    """A scope's spend counters."""
    return parse_spend((yield ClientCall("hgetall", (keys.spend,))) or {}, day)


def read_saved(keys: ScopeKeys, day: str | None) -> Flow[dict[str, dict[str, Decimal]]]:
    """What cache hits saved a scope."""
    return parse_saved((yield ClientCall("hgetall", (keys.spend,))) or {}, day)


def read_spend_and_saved(
    keys: ScopeKeys, day: str | None
) -> Flow[tuple[dict[str, dict[str, Decimal]], dict[str, dict[str, Decimal]]]]:
    """A scope's spend and what cache hits saved it, from one read of its counters."""
    raw = (yield ClientCall("hgetall", (keys.spend,))) or {}
    return parse_spend(raw, day), parse_saved(raw, day)


def read_alerts(keys: ScopeKeys, count: int | None) -> Flow[list[Alert]]:
    """A scope's alert history, oldest first."""
    rows = yield ClientCall("xrange", (keys.alerts,), {"count": count})
    return [parse_alert(fields) for _, fields in rows or []]


def read_fired_alerts(keys: ScopeKeys, last: int | None = None) -> Flow[list[FiredAlert]]:
    """A scope's alerts with when each fired, oldest first: all, or the ``last`` few."""
    if last is None:
        rows = yield ClientCall("xrange", (keys.alerts,))
    else:
        rows = (yield ClientCall("xrevrange", (keys.alerts,), {"count": last})) or []
        rows = rows[::-1]
    return [parse_fired_alert(stream_id, fields) for stream_id, fields in rows or []]
