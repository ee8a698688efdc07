"""The ledger of record's tables in PostgreSQL, and the migrations that create them.

``ratelimit sync`` (and ``restore``) call :func:`migrate` first: it applies,
in one transaction under an advisory lock, every numbered migration the
database has not seen yet, and notes each in ``ratelimit_schema_version``.
So any number of syncs can start at once against an empty database, and
running one again changes nothing. A database migrated by a newer version
of this package is refused rather than written with an old layout.

Money is ``numeric(30,9)``: exact to the nano-dollar, the unit Redis counts
in, so a sum in SQL equals the Redis counters to the last digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import TupleRow

from ratelimit.errors import LedgerStoreError

#: A connection as :func:`connect` opens it (rows as tuples).
Connection = psycopg.Connection[TupleRow]

__all__ = [
    "LOCK_KEY",
    "MIGRATIONS",
    "Connection",
    "Migration",
    "connect",
    "migrate",
    "schema_version",
]

#: ``pg_advisory_xact_lock`` key of the migrations (an arbitrary constant:
#: "rl-ledgr" in ASCII): concurrent migrations wait for each other.
LOCK_KEY = int.from_bytes(b"rl-ledgr", "big")

#: Seconds to wait for PostgreSQL to accept a connection.
CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Migration:
    """One step of the schema: applied once, in order, in one transaction with the others."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "ratelimit_ledger and its indexes; ratelimit_streams",
        (
            """
            CREATE TABLE ratelimit_ledger (
                scope      text           NOT NULL,
                stream_id  text           NOT NULL,
                permit_id  text           NOT NULL,
                kind       text           NOT NULL
                    CHECK (kind IN ('settled', 'reclaimed', 'cancelled', 'cache_hit')),
                at         timestamptz    NOT NULL,
                day        date           NOT NULL,
                model      text           NOT NULL,
                cost_usd   numeric(30, 9) NOT NULL,
                saved_usd  numeric(30, 9) NOT NULL DEFAULT 0,
                tokens     jsonb          NOT NULL DEFAULT '{}',
                tags       jsonb          NOT NULL DEFAULT '{}',
                synced_at  timestamptz    NOT NULL DEFAULT clock_timestamp(),
                PRIMARY KEY (scope, stream_id)
            )
            """,
            "CREATE INDEX ratelimit_ledger_scope_day ON ratelimit_ledger (scope, day)",
            "CREATE INDEX ratelimit_ledger_day ON ratelimit_ledger (day)",
            "CREATE INDEX ratelimit_ledger_scope_at ON ratelimit_ledger (scope, at)",
            "CREATE INDEX ratelimit_ledger_tags ON ratelimit_ledger USING gin (tags)",
            """
            CREATE TABLE ratelimit_streams (
                stream_key  text        PRIMARY KEY,
                scope       text        NOT NULL,
                slot        text        NOT NULL,
                first_seen  timestamptz NOT NULL DEFAULT now()
            )
            """,
            "CREATE INDEX ratelimit_streams_scope ON ratelimit_streams (scope)",
        ),
    ),
)

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS ratelimit_schema_version (
    version     integer     PRIMARY KEY,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def connect(dsn: str) -> Connection:
    """An autocommit connection to ``dsn`` (transactions are explicit blocks)."""
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        raise LedgerStoreError(f"cannot connect to PostgreSQL: {exc}") from exc


def schema_version(conn: Connection) -> int:
    """The highest migration applied to the database, 0 for none."""
    found = conn.execute("SELECT to_regclass('ratelimit_schema_version')").fetchone()
    if found is None or found[0] is None:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM ratelimit_schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(
    conn: Connection,
    migrations: tuple[Migration, ...] = MIGRATIONS,
) -> list[int]:
    """Apply the migrations the database lacks, in one transaction; their versions.

    Concurrent callers queue on an advisory lock, so each migration runs
    once. Raises :class:`~ratelimit.errors.LedgerStoreError` when the
    database is at a version this package does not know (a newer one
    migrated it), or when PostgreSQL refuses a statement.
    """
    known = max((m.version for m in migrations), default=0)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            conn.execute(_VERSION_TABLE)
            current = schema_version(conn)
            if current > known:
                raise LedgerStoreError(
                    f"the ledger's schema is at version {current}, newer than this "
                    f"ratelimit knows ({known}): upgrade llm-quota-guard"
                )
            applied: list[int] = []
            for migration in migrations:
                if migration.version <= current:
                    continue
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO ratelimit_schema_version (version, description) VALUES (%s, %s)",
                    (migration.version, migration.description),
                )
                applied.append(migration.version)
            return applied
    except psycopg.Error as exc:
        raise LedgerStoreError(f"PostgreSQL refused the ledger's schema: {exc}") from exc
