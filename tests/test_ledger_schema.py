"""The ledger of record's schema: created from an empty database, migrated once, exact money."""

from __future__ import annotations

import threading
from decimal import Decimal

import psycopg
import pytest

from ratelimit.errors import LedgerStoreError
from ratelimit.postgres.schema import MIGRATIONS, connect, migrate, schema_version

LATEST = MIGRATIONS[-1].version


def test_migrate_creates_the_documented_tables_in_an_empty_database(empty_database: str) -> None:
    with connect(empty_database) as conn:
        assert schema_version(conn) == 0
        assert migrate(conn) == [m.version for m in MIGRATIONS]
        assert schema_version(conn) == LATEST
        columns = {
            name: (kind, precision, scale)
            for name, kind, precision, scale in conn.execute(
                "SELECT column_name, data_type, numeric_precision, numeric_scale"
                " FROM information_schema.columns WHERE table_name = 'ratelimit_ledger'"
            ).fetchall()
        }
        indexes = {
            name: definition
            for name, definition in conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ratelimit_ledger'"
            ).fetchall()
        }
    assert columns["scope"][0] == columns["permit_id"][0] == columns["kind"][0] == "text"
    assert columns["model"][0] == columns["stream_id"][0] == "text"
    assert columns["at"][0] == "timestamp with time zone"
    assert columns["day"][0] == "date"
    assert columns["cost_usd"] == columns["saved_usd"] == ("numeric", 30, 9)
    assert columns["tokens"][0] == columns["tags"][0] == "jsonb"
    assert "(scope, stream_id)" in indexes["ratelimit_ledger_pkey"]
    assert "UNIQUE" in indexes["ratelimit_ledger_pkey"]
    assert "gin (tags)" in indexes["ratelimit_ledger_tags"]
    assert "(scope, day)" in indexes["ratelimit_ledger_scope_day"]


def test_migrating_again_changes_nothing(empty_database: str) -> None:
    with connect(empty_database) as conn:
        migrate(conn)
        conn.execute(
            "INSERT INTO ratelimit_ledger (scope, stream_id, permit_id, kind, at, day, model,"
            " cost_usd) VALUES ('a', '1-0', 'p', 'settled', now(), current_date, 'm', 1)"
        )
        assert migrate(conn) == []
        assert schema_version(conn) == LATEST
        row = conn.execute("SELECT count(*) FROM ratelimit_ledger").fetchone()
        versions = conn.execute("SELECT count(*) FROM ratelimit_schema_version").fetchone()
    assert row is not None
    assert row[0] == 1
    assert versions is not None
    assert versions[0] == len(MIGRATIONS)


def test_concurrent_migrations_apply_each_step_once(empty_database: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def migrate_once() -> None:
        try:
            with connect(empty_database) as conn:
                start.wait(timeout=30)
                results.append(migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate_once) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(results) == [[]] * 5 + [[m.version for m in MIGRATIONS]]


def test_a_schema_newer_than_the_package_is_refused(empty_database: str) -> None:
    with connect(empty_database) as conn:
        migrate(conn)
        conn.execute(
            "INSERT INTO ratelimit_schema_version (version, description) VALUES (%s, 'future')",
            (LATEST + 1,),
        )
        with pytest.raises(LedgerStoreError, match="newer than this ratelimit knows"):
            migrate(conn)


def test_money_columns_hold_nano_dollars_exactly(empty_database: str) -> None:
    amounts = [Decimal("0.000000001"), Decimal("4503599.627370496"), Decimal("0.1")] * 1000
    with connect(empty_database) as conn:
        migrate(conn)
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO ratelimit_ledger (scope, stream_id, permit_id, kind, at, day, model,"
                " cost_usd) VALUES ('a', %s, 'p', 'settled', now(), current_date, 'm', %s)",
                [(f"{i}-0", amount) for i, amount in enumerate(amounts)],
            )
        row = conn.execute("SELECT sum(cost_usd) FROM ratelimit_ledger").fetchone()
    assert row is not None
    assert row[0] == sum(amounts, Decimal(0))


def test_an_unreachable_database_is_a_ledger_store_error() -> None:
    with pytest.raises(LedgerStoreError, match="cannot connect") as caught:
        connect("host=127.0.0.1 port=1 user=postgres dbname=none connect_timeout=2")
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
