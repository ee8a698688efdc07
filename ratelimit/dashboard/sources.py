"""What the dashboard reads from Redis: the live state, alerts and the ledger streams.

Only read commands: one snapshot of every scope (:func:`ratelimit.deployment.read`:
a SCAN, two pipelined reads, Redis TIME as the clock), each budgeted scope's
alerts stream (``XREVRANGE``), and, without ``--postgres``, every ledger
stream's entries of the chart's window (``XRANGE``, page by page, at most
:data:`MAX_ENTRIES` in all). The documents are shaped by
:mod:`ratelimit.dashboard.views`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis

from ratelimit import deployment, ledger
from ratelimit.backend import SyncClient, backend_error
from ratelimit.cli.readers import read_ledger
from ratelimit.core.keys import ScopeKeys
from ratelimit.core.scope import ScopeSpec
from ratelimit.dashboard.views import (
    ALERTS_SHOWN,
    first_chart_day,
    live_view,
    spend_view,
    totals_from_entries,
)
from ratelimit.ledger import FiredAlert, LedgerEntry
from ratelimit.limiter import drive
from ratelimit.postgres.streams import discover

#: The spend chart reads at most this many ledger entries from Redis, all
#: streams together; past it the document says it is truncated.
MAX_ENTRIES = 500_000


def redis_today(client: SyncClient) -> date:
    """Today's date (UTC) by the Redis server's clock: the spend chart's last day."""
    try:
        seconds, _ = client.time()
    except redis.exceptions.RedisError as exc:
        raise backend_error(exc) from exc
    return datetime.fromtimestamp(int(seconds), UTC).date()


def read_live(client: SyncClient, configured: Sequence[ScopeSpec] = ()) -> dict[str, Any]:
    """The ``/api/live`` document: every scope at one Redis time, and the newest alerts.

    Raises :class:`~ratelimit.errors.BackendError` when Redis cannot be read.
    """
    snapshot = deployment.read(client, configured=configured)
    alerts: list[FiredAlert] = []
    for scope in snapshot.scopes:
        if "alerts" in scope.kinds:
            keys = ScopeKeys(scope.name, scope.slot)
            alerts += drive(client, ledger.read_fired_alerts(keys, last=ALERTS_SHOWN))
    return live_view(snapshot, alerts)


def _window_entries(
    client: SyncClient, first_day: date, limit: int, bound: list[bool]
) -> Iterator[LedgerEntry]:
    """Every ledger stream's entries from the day before ``first_day`` (UTC) on.

    A day before, since an entry's day is its budget's zone's, which may be
    ahead of UTC; the caller keeps the entries by their day. Stops after
    ``limit`` entries, and then sets ``bound[0]``.
    """
    since = datetime.combine(first_day - timedelta(days=1), datetime.min.time(), UTC)
    read = 0
    try:
        for stream in discover(client):
            for entry in read_ledger(client, stream.keys, since):
                if read >= limit:
                    bound[0] = True
                    return
                read += 1
                yield entry
    except redis.exceptions.RedisError as exc:
        raise backend_error(exc) from exc


def read_redis_spend(
    client: SyncClient, today: date, *, max_entries: int = MAX_ENTRIES
) -> dict[str, Any]:
    """The ``/api/spend`` document from what the ledger streams still hold.

    Raises :class:`~ratelimit.errors.BackendError` when Redis cannot be read.
    """
    first_day = first_chart_day(today)
    bound = [False]
    totals = totals_from_entries(_window_entries(client, first_day, max_entries, bound), first_day)
    if bound[0]:
        totals = replace(totals, truncated=True)
    return spend_view(totals, today, source="redis")
