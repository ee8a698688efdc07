"""The ledger of record: every ledger entry copied into PostgreSQL exactly once.

A Redis stream is the right place for the hot path's ledger, but not a book
of record: a restart without persistence, an eviction or the stream's own
retention drops entries. ``ratelimit sync`` copies each entry into the
PostgreSQL table ``ratelimit_ledger`` exactly once, and ``ratelimit restore``
rebuilds from it the spend Redis lost.

- :mod:`~ratelimit.postgres.streams`: the ledger streams of a deployment (SCAN
  or by name) and the sync's consumer group.
- :mod:`~ratelimit.postgres.lag`: how far the sync is behind, per scope
  (:func:`sync_lag`, for ``ratelimit doctor``), from Redis alone.
- :mod:`~ratelimit.postgres.schema`: the tables and their migrations.
- :mod:`~ratelimit.postgres.sync`: the consumer (:class:`LedgerSync`).
- :mod:`~ratelimit.postgres.restore`: the restore of one scope.

This package imports without the ``postgres`` extra, so ``sync_lag`` works
anywhere; ``schema``, ``sync`` and ``restore`` need ``psycopg`` (``pip install
'llm-quota-guard[postgres]'``).
"""

from ratelimit.postgres.lag import SyncLag, Unsynced, sync_lag, unsynced_from
from ratelimit.postgres.streams import SYNC_GROUP, LedgerStream, discover, named

__all__ = [
    "SYNC_GROUP",
    "LedgerStream",
    "SyncLag",
    "Unsynced",
    "discover",
    "named",
    "sync_lag",
    "unsynced_from",
]
