"""PostgreSQL for the ledger-of-record tests: find the server, make and drop databases.

The machine runs PostgreSQL 15 on 127.0.0.1:5432 and its unix socket with
trust authentication for the user ``postgres``; ``$RATELIMIT_TEST_POSTGRES``
names another server (a DSN to its maintenance database). Each test run
creates its own databases, ``ratelimit_test_<random>``, and drops them at the
end. Without a reachable server (or without psycopg), :func:`admin_dsn`
returns None and the reason, and the tests that need it skip with it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

#: Where to look, in order, unless $RATELIMIT_TEST_POSTGRES says.
CANDIDATES = (
    "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
    "host=/var/run/postgresql port=5432 user=postgres dbname=postgres",
)
CONNECT_TIMEOUT_S = 3


def admin_dsn() -> tuple[str | None, str]:
    """A DSN to a maintenance database that may CREATE DATABASE, or None and why not."""
    try:
        import psycopg
    except ImportError:
        return None, "psycopg is not installed (pip install 'llm-quota-guard[postgres]')"
    given = os.environ.get("RATELIMIT_TEST_POSTGRES")
    errors: list[str] = []
    for dsn in (given,) if given else CANDIDATES:
        try:
            psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S).close()
        except psycopg.Error as exc:
            errors.append(f"{dsn!r}: {str(exc).strip()}")
            continue
        return dsn, ""
    return None, "no PostgreSQL reachable for the ledger-of-record tests: " + "; ".join(errors)


@contextmanager
def fresh_database(admin: str, prefix: str = "ratelimit_test") -> Iterator[str]:
    """CREATE DATABASE ``<prefix>_<random>``; yield its DSN; DROP it (FORCE) at the end."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
