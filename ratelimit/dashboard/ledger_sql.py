"""The spend chart and top lists from the ledger of record (``ratelimit dashboard --postgres``).

Four aggregate queries over ``ratelimit_ledger`` (see
:mod:`ratelimit.postgres.schema`), run in one ``READ ONLY`` transaction on a
connection of their own that is closed at the end: the dashboard can write
nothing, whatever rights its user has, and a restarted PostgreSQL costs
one failed refresh. Sums are ``numeric``, exact to the nano-dollar, and
reach Python as ``Decimal``. Needs the ``postgres`` extra (psycopg 3).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from ratelimit.dashboard.views import TOP_N, SpendTotals, first_chart_day, spend_view
from ratelimit.errors import LedgerStoreError

#: Seconds to wait for PostgreSQL to accept a connection, and at most for a query.
CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_MS = 30_000

_BY_DAY_MODEL = """
    SELECT day::text, model, sum(cost_usd)
    FROM ratelimit_ledger WHERE day >= %(first)s
    GROUP BY 1, 2
"""
_BY_SCOPE = """
    SELECT scope, sum(cost_usd) AS usd
    FROM ratelimit_ledger WHERE day >= %(first)s
    GROUP BY 1 ORDER BY usd DESC, scope LIMIT %(top)s
"""
# The top values of each tag key (the GIN index does not help a scan of the
# window, the (day) index does).
_BY_TAG = """
    SELECT key, value, usd FROM (
        SELECT t.key, t.value, sum(l.cost_usd) AS usd,
               row_number() OVER (PARTITION BY t.key ORDER BY sum(l.cost_usd) DESC, t.value) AS n
        FROM ratelimit_ledger l, jsonb_each_text(l.tags) t
        WHERE l.day >= %(first)s AND jsonb_typeof(l.tags) = 'object'
        GROUP BY t.key, t.value
    ) ranked
    WHERE n <= %(top)s
"""
_COUNT = "SELECT count(*), min(at) FROM ratelimit_ledger WHERE day >= %(first)s"


def read_postgres_totals(dsn: str, first_day: date, *, top: int = TOP_N) -> SpendTotals:
    """Spend since ``first_day`` summed by day and model, by scope, by tag value.

    Raises :class:`~ratelimit.errors.LedgerStoreError` when PostgreSQL cannot
    be reached or refuses a query (no ``ratelimit_ledger`` table: run
    ``ratelimit sync`` first).
    """
    import psycopg

    params: dict[str, Any] = {"first": first_day, "top": top}
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            # Every statement runs in one transaction that PostgreSQL itself
            # keeps from writing (BEGIN READ ONLY), rolled back at the end.
            conn.read_only = True
            try:
                conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
                days = conn.execute(_BY_DAY_MODEL, params).fetchall()
                scopes = conn.execute(_BY_SCOPE, params).fetchall()
                tags = conn.execute(_BY_TAG, params).fetchall()
                counted = conn.execute(_COUNT, params).fetchone()
            finally:
                conn.rollback()
    except psycopg.Error as exc:
        raise LedgerStoreError(f"cannot read the ledger from PostgreSQL: {exc}") from exc
    count, oldest = counted if counted is not None else (0, None)
    return SpendTotals(
        by_day_model={(str(day), str(model)): Decimal(usd) for day, model, usd in days},
        by_scope={str(scope): Decimal(usd) for scope, usd in scopes},
        by_tag={(str(key), str(value)): Decimal(usd) for key, value, usd in tags},
        entries=int(count),
        oldest=oldest if isinstance(oldest, datetime) else None,
    )


def read_postgres_spend(dsn: str, today: date) -> dict[str, Any]:
    """The ``/api/spend`` document from ``ratelimit_ledger``."""
    totals = read_postgres_totals(dsn, first_chart_day(today))
    return spend_view(totals, today, source="postgres")
