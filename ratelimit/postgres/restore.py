"""``ratelimit restore``: rebuild the spend Redis lost from the ledger of record.

After a restart without persistence, an eviction or a flush, Redis holds
less than was spent: its daily counters (``:spend``) and its budget's
``spent`` for the period restart low. PostgreSQL still holds every entry
``ratelimit sync`` committed. For one scope, :func:`restore_scope`:

1. finds where the entries not known to be in PostgreSQL begin in the ledger
   stream (:func:`~ratelimit.postgres.lag.unsynced_from`: every earlier entry
   was acknowledged, so committed);
2. sums, in PostgreSQL, the entries before that point per day and model, and
   the period's spend;
3. runs ``lua/restore.lua``, which adds the stream's entries from that point
   on, raises each counter by what it lacks and the budget's spend to the
   period's sum, atomically: no settle can interleave with half a restore.

Each entry is counted once, either in PostgreSQL or in the stream, whatever
the syncs do meanwhile; what Redis still has is never added again, so a
second restore changes nothing. When the budget key is gone (or is of an
earlier period), its limit and period must be given (a :class:`Budget`):
without them the scope is refused and nothing in it changes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import redis

from ratelimit import scripts
from ratelimit.core.numbers import MICRO, text, usd
from ratelimit.core.settings import Budget, period_holding
from ratelimit.deployment.stored import parse_budget
from ratelimit.errors import BackendError, LedgerStoreError, RestoreRefused
from ratelimit.postgres.lag import unsynced_from
from ratelimit.postgres.schema import Connection
from ratelimit.postgres.streams import SYNC_GROUP, LedgerStream, id_order

__all__ = ["TAIL_MAX", "Restored", "recorded_streams", "restore_scope"]

#: The most unsynced stream entries one restore reads inside its script (it
#: blocks Redis meanwhile); with more, sync first.
TAIL_MAX = 100_000
#: Tries when a period ends between the sums and the script.
ATTEMPTS = 3

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Entries before the first unsynced stream ID (all of them when %(all)s).
_BEFORE = """
AND (%(all)s OR (split_part(stream_id, '-', 1)::bigint, split_part(stream_id, '-', 2)::bigint)
                < (%(millis)s, %(sequence)s))
"""

_COUNTERS = (
    """
SELECT day, model, kind = 'cache_hit',
       (sum(CASE WHEN kind = 'cache_hit' THEN saved_usd ELSE cost_usd END) * 1000000000)::bigint
FROM ratelimit_ledger
WHERE scope = %(scope)s
"""
    + _BEFORE
    + "GROUP BY 1, 2, 3"
)

_PERIOD = (
    """
SELECT (coalesce(sum(cost_usd), 0) * 1000000000)::bigint
FROM ratelimit_ledger
WHERE scope = %(scope)s AND at >= %(start)s AND at < %(stop)s
"""
    + _BEFORE
)


@dataclass(frozen=True)
class Restored:
    """What a restore did to one scope."""

    stream: LedgerStream
    period: str
    """The budget period whose spend was restored (``2026-11-28`` or ``2026-11``)."""
    spent_before: Decimal | None
    """The period's spend Redis held; None when its budget key was missing or of an
    earlier period (the restore wrote a new one)."""
    spent_after: Decimal
    added: dict[str, Decimal]
    """USD added to each spend counter (``<day>|<model>``, ``<day>|<model>|saved``)."""
    tail_entries: int
    """Stream entries not yet in PostgreSQL that the restore counted from the stream."""
    lost_at: datetime | None = None
    """When Redis had been found to have lost this budget's spend (the budget
    key's ``lost_us``, which ``ratelimit doctor`` reports); the restore clears it."""

    @property
    def changed(self) -> bool:
        """Whether anything in Redis changed."""
        return bool(self.added) or self.spent_before != self.spent_after or self.lost_at is not None


def _instant(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _period(
    raw: bytes | str | None, now_us: int, budget: Budget | None
) -> tuple[int, int, str] | None:
    """The budget period holding ``now_us``: the key's own when it is current, else the
    configured one; None when neither is known."""
    if raw is not None:
        with contextlib.suppress(BackendError):  # unreadable: as if missing
            stored = parse_budget(raw)
            if stored.holds(now_us):
                return stored.period_start_us, stored.period_end_us, stored.label
    if budget is None:
        return None
    return period_holding(now_us, budget.zone, budget.per)


def _sums(
    conn: Connection, scope: str, first_unsynced: str | None, start: int, stop: int
) -> tuple[dict[str, int], int]:
    """PostgreSQL's sums of the entries before ``first_unsynced``: per counter field,
    and in the period [start, stop)."""
    millis, sequence = id_order(first_unsynced) if first_unsynced else (0, 0)
    params = {
        "scope": scope,
        "all": first_unsynced is None,
        "millis": millis,
        "sequence": sequence,
        "start": _instant(start),
        "stop": _instant(stop),
    }
    try:
        counters: dict[str, int] = {}
        for day, model, saved, nano in conn.execute(_COUNTERS, params).fetchall():
            counters[f"{day.isoformat()}|{model}{'|saved' if saved else ''}"] = int(nano)
        row = conn.execute(_PERIOD, params).fetchone()
    except psycopg.Error as exc:
        raise LedgerStoreError(f"PostgreSQL refused the restore's sums: {exc}") from exc
    return counters, int(row[0]) if row else 0


def _budget_unknown(scope: str) -> RestoreRefused:
    return RestoreRefused(
        f"the budget of {scope!r} is gone from Redis (or is of an earlier period): give "
        "its limit and period (--limit USD --per day|month --tz ZONE) to rebuild it; "
        "nothing was changed",
        scope=scope,
    )


def restore_scope(
    client: redis.Redis,
    conn: Connection,
    stream: LedgerStream,
    budget: Budget | None = None,
    *,
    group: str = SYNC_GROUP,
    tail_max: int = TAIL_MAX,
) -> Restored:
    """Raise one scope's spend counters and budget spend to what the ledger of record holds.

    ``budget`` gives the limit, period and zone to write the budget key with
    when Redis has none for the current period; without it such a scope
    raises :class:`~ratelimit.errors.RestoreRefused`, as does a stream with
    more than ``tail_max`` unsynced entries. Nothing is written then.
    """
    script = client.register_script(scripts.source("restore"))
    limit = "" if budget is None else str(budget.limit_nano)
    for _ in range(ATTEMPTS):
        unsynced = unsynced_from(client, stream, group)
        seconds, micros = client.time()
        now_us = int(seconds) * MICRO + int(micros)
        period = _period(client.get(stream.keys.budget), now_us, budget)
        if period is None:
            raise _budget_unknown(stream.scope)
        start, stop, label = period
        counters, period_nano = _sums(conn, stream.scope, unsynced.first_id, start, stop)
        args: list[str | int] = [unsynced.first_id or "", tail_max, start, stop, label]
        args += [period_nano, limit, len(counters)]
        for field, nano in counters.items():
            args += [field, nano]
        keys = [stream.keys.budget, stream.key, stream.keys.spend]
        reply = script(keys=keys, args=args)
        status = int(reply[0])
        if status == 1:
            added = reply[6]
            before = int(reply[3])
            return Restored(
                stream=stream,
                period=label,
                spent_before=None if before < 0 else usd(before),
                spent_after=usd(int(reply[4])),
                added={text(added[i]): usd(int(added[i + 1])) for i in range(0, len(added), 2)},
                tail_entries=int(reply[5]),
                lost_at=_instant(int(reply[7])) if int(reply[7]) else None,
            )
        if status == -3:
            raise _budget_unknown(stream.scope)
        if status == -4:
            raise RestoreRefused(
                f"the ledger stream of {stream.scope!r} holds more than {tail_max:,} entries "
                "not yet in PostgreSQL: run `ratelimit sync --once` first; nothing was changed",
                scope=stream.scope,
            )
        # -2: the period ended between the sums and the script: sum the new one.
    raise RestoreRefused(
        f"the budget period of {stream.scope!r} kept changing during the restore; "
        "nothing was changed, try again",
        scope=stream.scope,
    )


def recorded_streams(conn: Connection, scopes: list[str] | None = None) -> list[LedgerStream]:
    """The ledger streams ``ratelimit sync`` has copied (all, or those of ``scopes``)."""
    try:
        rows = conn.execute(
            "SELECT scope, slot FROM ratelimit_streams"
            " WHERE %(all)s OR scope = ANY(%(scopes)s) ORDER BY scope, slot",
            {"all": scopes is None, "scopes": scopes or []},
        ).fetchall()
    except psycopg.Error as exc:
        raise LedgerStoreError(f"PostgreSQL refused a read: {exc}") from exc
    return [LedgerStream(str(scope), str(slot)) for scope, slot in rows]
