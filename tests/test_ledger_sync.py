"""``ratelimit sync``: every ledger entry in PostgreSQL exactly once, on real servers.

Each test works on real Redis/Valkey servers and a real PostgreSQL database
(the run's own, emptied per test); without PostgreSQL they skip.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from datetime import UTC, date
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from ledger_db import fresh_database
from ledger_helpers import (
    counters,
    pg_count,
    pg_counters,
    pg_rows,
    run_cli,
    spend,
    start_sync,
    stop_sync,
    stream_ids,
    synced,
    wait_until,
)
from psycopg.conninfo import conninfo_to_dict
from topology import ServerFactory

from ratelimit import Budget, Limiter, Rate
from ratelimit.core.numbers import NANO, text
from ratelimit.postgres import LedgerStream, sync_lag
from ratelimit.postgres.schema import connect
from ratelimit.postgres.sync import LedgerSync, insert_entries

BUDGET = Budget(1000, per="day", tz="Europe/Paris")


def _limiter(client: redis.Redis, name: str, slot: str | None = None) -> Limiter:
    return Limiter(client, name, slot=slot, requests=Rate(1_000_000), usd=BUDGET)


def test_once_copies_every_entry_with_every_field(r: redis.Redis, ledger_dsn: str) -> None:
    team = _limiter(r, "team-a")
    slotted = _limiter(r, "team {b}%", slot="acme")
    spend(team, 60)
    spend(slotted, 25, seed=1)
    team.record_saving("0.123456789", model="claude-haiku-4-5", tags={"user": "ü-1"})
    streams = [LedgerStream("team-a", "team-a"), LedgerStream("team {b}%", "acme")]

    stats = LedgerSync(r, ledger_dsn).drain()  # every stream, found by SCAN

    assert stats.inserted == 86
    assert stats.duplicates == 0
    assert stats.acked == 86
    for limiter, stream in zip((team, slotted), streams, strict=True):
        entries = limiter.ledger_entries()
        rows = pg_rows(ledger_dsn, stream.scope)
        assert [row[1] for row in rows] == [entry.stream_id for entry in entries]
        for row, entry in zip(rows, entries, strict=True):
            assert row == (
                entry.scope, entry.stream_id, entry.permit_id, entry.kind,
                entry.time, date.fromisoformat(entry.day), entry.model,
                entry.cost_usd, entry.saved_usd, entry.tokens, json.loads(json.dumps(entry.tags)),
            )  # fmt: skip
            assert row[4].tzinfo is not None
            assert row[4].astimezone(UTC) == entry.time
        # The counters to the nano-dollar, per day and model, savings apart.
        assert pg_counters(ledger_dsn, stream.scope) == counters(r, stream)
    assert {row[3] for row in pg_rows(ledger_dsn)} == {"settled", "cancelled", "cache_hit"}
    assert all(lag.synced for lag in sync_lag(r, streams))

    again = LedgerSync(r, ledger_dsn).drain()
    assert again.inserted == again.duplicates == again.acked == 0
    assert pg_count(ledger_dsn) == 86


def test_tags_json_cannot_take_are_stored_as_text(r: redis.Redis, ledger_dsn: str) -> None:
    """One tag jsonb refused would stop every batch after it: odd values become text."""
    odd = {"nested": {1: "int key", "v": [float("nan"), b"raw", None]}, "nul": "a\x00b"}
    _limiter(r, "team-a").acquire(usd="0.01", model="m", tags=odd).settle(usd="0.01")

    stats = LedgerSync(r, ledger_dsn).drain()

    assert stats.inserted == 1
    (row,) = pg_rows(ledger_dsn)
    assert row[10] == {"nested": {"1": "int key", "v": ["nan", "raw", None]}, "nul": "a\ufffdb"}


def test_a_redelivered_entry_is_a_no_op(r: redis.Redis, ledger_dsn: str) -> None:
    """The crash between COMMIT and XACK: the rows are there, the entries still pending."""
    team = _limiter(r, "team-a")
    spend(team, 30)
    stream = LedgerStream("team-a", "team-a")
    dead = LedgerSync(r, ledger_dsn, [stream], consumer="dead-1")
    dead.refresh_streams()
    delivered: Any = r.xreadgroup(dead.group, "dead-1", {stream.key: ">"}, count=20)
    ((_, rows),) = delivered
    entries = [e for e in team.ledger_entries() if e.stream_id in {text(i) for i, _ in rows}]
    with connect(ledger_dsn) as conn, conn.transaction():
        assert insert_entries(conn, entries) == (20, 0)
    dead.close()
    assert sync_lag(r, [stream])[0].pending == 20

    stats = LedgerSync(r, ledger_dsn, [stream], claim_idle_s=0).drain()

    assert stats.claimed == 20
    assert stats.duplicates == 20
    assert stats.inserted == 10
    assert [row[1] for row in pg_rows(ledger_dsn)] == stream_ids(r, stream)
    assert sync_lag(r, [stream])[0].synced


def test_a_live_consumers_entries_are_not_claimed_before_their_idle_time(
    r: redis.Redis, ledger_dsn: str
) -> None:
    team = _limiter(r, "team-a")
    spend(team, 10)
    stream = LedgerStream("team-a", "team-a")
    other = LedgerSync(r, ledger_dsn, [stream], consumer="busy")
    other.refresh_streams()
    r.xreadgroup(other.group, "busy", {stream.key: ">"}, count=4)
    other.close()

    stats = LedgerSync(r, ledger_dsn, [stream], claim_idle_s=3600).drain()

    assert stats.claimed == 0
    assert stats.inserted == 6
    assert sync_lag(r, [stream])[0].pending == 4


def test_sync_lag_counts_undelivered_and_pending_entries(r: redis.Redis, ledger_dsn: str) -> None:
    team = _limiter(r, "team-a")
    spend(team, 12)
    stream = LedgerStream("team-a", "team-a")

    (before,) = sync_lag(r)
    assert before.stream == stream
    assert not before.group_exists
    assert before.undelivered == 12
    assert before.pending == 0
    assert before.oldest_unsynced_age_s is not None
    assert before.oldest_unsynced_age_s >= 0

    reader = LedgerSync(r, ledger_dsn, [stream], consumer="reader")
    reader.refresh_streams()
    r.xreadgroup(reader.group, "reader", {stream.key: ">"}, count=5)
    reader.close()
    (middle,) = sync_lag(r)
    assert middle.group_exists
    assert middle.consumers == 1
    assert (middle.pending, middle.undelivered) == (5, 7)
    assert not middle.synced

    LedgerSync(r, ledger_dsn, [stream], claim_idle_s=0).drain()
    (after,) = sync_lag(r)
    assert (after.pending, after.undelivered, after.oldest_unsynced_age_s) == (0, 0, None)
    assert after.synced


def test_cli_once_and_its_usage_errors(redis_url: str, r: redis.Redis, ledger_dsn: str) -> None:
    spend(_limiter(r, "team-a"), 15)

    done = run_cli("sync", "--to", ledger_dsn, "--redis-url", redis_url, "--all", "--once")

    assert done.returncode == 0, done.stderr
    assert "15 rows inserted, 0 already there" in done.stderr
    assert pg_count(ledger_dsn) == 15
    both = run_cli("sync", "--to", ledger_dsn, "--redis-url", redis_url, "--all", "team-a")
    assert both.returncode == 2
    assert "not both" in both.stderr
    neither = run_cli("sync", "--to", ledger_dsn, "--redis-url", redis_url)
    assert neither.returncode == 2
    assert "or --all" in neither.stderr
    down = run_cli(
        "sync", "--to", "host=127.0.0.1 port=1 user=x connect_timeout=2",
        "--redis-url", redis_url, "--all", "--once",
    )  # fmt: skip
    assert down.returncode == 2
    assert "cannot connect to PostgreSQL" in down.stderr


def test_the_package_and_the_cli_load_without_psycopg() -> None:
    probe = (
        "import sys\n"
        "sys.modules['psycopg'] = None  # as without the postgres extra\n"
        "import ratelimit.postgres\n"
        "from ratelimit.cli import main\n"
        "sys.exit(main(['sync', '--to', 'x', '--redis-url', 'redis://127.0.0.1:1', '--all']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "pip install 'llm-quota-guard[postgres]'" in done.stderr


@pytest.mark.slow
def test_exactly_once_when_the_sync_is_killed_at_random_points(
    start_server: ServerFactory, ledger_dsn: str
) -> None:
    server = start_server()
    client = server.client()
    team = _limiter(client, "team-a")
    stream = LedgerStream("team-a", "team-a")
    spend(team, 1500)  # a backlog
    rng = random.Random(11)
    more = threading.Thread(target=spend, args=(_limiter(server.client(), "team-a"), 300))
    more.start()  # and traffic while the syncs come and go
    mid_copy = 0
    for _ in range(6):
        process = start_sync(ledger_dsn, server.url, "--all", "--batch", "10", "--claim-idle", "0")
        target = pg_count(ledger_dsn) + rng.randint(1, 150)

        def far_enough(target: int = target, process: subprocess.Popen[str] = process) -> bool:
            # The kill lands while it copies: past a random row count (or at the end).
            count = pg_count(ledger_dsn)
            return count >= target or count == client.xlen(stream.key) or process.poll() is not None

        wait_until(far_enough, "the sync to copy some rows")
        mid_copy += pg_count(ledger_dsn) < client.xlen(stream.key)
        code, err = stop_sync(process, signal.SIGKILL)
        assert code == -signal.SIGKILL, err
    more.join(timeout=60)

    done = run_cli(
        "sync", "--to", ledger_dsn, "--redis-url", server.url, "--all", "--once",
        "--claim-idle", "0",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    ids = stream_ids(client, stream)
    assert len(ids) == 1800
    assert mid_copy >= 3  # most kills came with a backlog left to copy
    assert [row[1] for row in pg_rows(ledger_dsn)] == ids  # each entry once, none lost
    assert pg_counters(ledger_dsn, "team-a") == counters(client, stream)
    (lag,) = sync_lag(client)
    assert lag.synced
    assert lag.pending == 0


@pytest.mark.slow
def test_several_consumers_share_the_stream_and_each_entry_lands_once(
    redis_url: str, r: redis.Redis, ledger_dsn: str
) -> None:
    streams = [LedgerStream(f"team-{i}", f"team-{i}") for i in range(3)]
    for stream in streams:
        spend(_limiter(r, stream.scope), 1)
    syncs = [start_sync(ledger_dsn, redis_url, "--all", "--batch", "20") for _ in range(3)]
    try:
        # Every sync has joined the group on every stream before the traffic starts.
        wait_until(
            lambda: all([g["consumers"] for g in r.xinfo_groups(s.key)] == [3] for s in streams),
            "three consumers in each group",
        )
        workers = [
            threading.Thread(target=spend, args=(_limiter(r, s.scope), 150), kwargs={"seed": i})
            for i, s in enumerate(streams)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        wait_until(lambda: synced(r, ledger_dsn, streams), "the syncs to catch up")
    finally:
        stopped = [stop_sync(process) for process in syncs]
    assert [code for code, _ in stopped] == [0, 0, 0], stopped
    inserted = [int(err.rsplit(" rows inserted", 1)[0].rsplit(" ", 1)[1]) for _, err in stopped]
    assert sum(inserted) == pg_count(ledger_dsn) == 453  # each entry inserted by one of them
    assert sum(1 for n in inserted if n) >= 2  # and the work was shared
    for stream in streams:
        assert [row[1] for row in pg_rows(ledger_dsn, stream.scope)] == stream_ids(r, stream)
        assert pg_counters(ledger_dsn, stream.scope) == counters(r, stream)


@pytest.mark.slow
def test_a_follower_waits_out_postgresql_going_away(
    redis_url: str, r: redis.Redis, postgres_admin: str
) -> None:
    with fresh_database(postgres_admin) as dsn:
        name = conninfo_to_dict(dsn)["dbname"]

        def rows() -> int:
            try:
                return pg_count(dsn)
            except psycopg.errors.UndefinedTable:  # the sync has not migrated it yet
                return -1

        spend(_limiter(r, "team-a"), 20)
        process = start_sync(dsn, redis_url, "--all")
        try:
            wait_until(lambda: rows() == 20, "the first rows")
            with psycopg.connect(postgres_admin, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # its connection too
                spend(_limiter(r, "team-a"), 15)  # these cannot be committed now
                wait_until(lambda: not sync_lag(r)[0].synced, "entries waiting")
                admin.execute(f'CREATE DATABASE "{name}"')  # back, empty
            wait_until(lambda: rows() == 15 and sync_lag(r)[0].synced, "the rest")
        finally:
            code, err = stop_sync(process)
    assert code == 0, err
    assert "trying again" in err


def test_following_with_all_finds_scopes_created_later(
    redis_url: str, r: redis.Redis, ledger_dsn: str
) -> None:
    spend(_limiter(r, "early"), 5)
    process = start_sync(ledger_dsn, redis_url, "--all", "--rescan", "0.2")
    try:
        wait_until(lambda: pg_count(ledger_dsn) == 5, "the first scope")
        spend(_limiter(r, "late"), 7)
        wait_until(lambda: pg_count(ledger_dsn) == 12, "the scope created later")
    finally:
        code, err = stop_sync(process)
    assert code == 0, err
    with psycopg.connect(ledger_dsn) as conn:
        known = conn.execute("SELECT scope, slot FROM ratelimit_streams ORDER BY 1").fetchall()
    assert known == [("early", "early"), ("late", "late")]


def test_sums_per_scope_and_day_equal_the_counters_in_sql(r: redis.Redis, ledger_dsn: str) -> None:
    charged = spend(_limiter(r, "team-a"), 40, seed=5)
    LedgerSync(r, ledger_dsn).drain()
    with psycopg.connect(ledger_dsn) as conn:
        rows = conn.execute(
            "SELECT scope, day, sum(cost_usd) FROM ratelimit_ledger GROUP BY 1, 2"
        ).fetchall()
    ((scope, day, total),) = rows
    assert (scope, total) == ("team-a", charged)
    redis_day = sum(
        (Decimal(v) / NANO for k, v in counters(r, LedgerStream("team-a", "team-a")).items()
         if k.startswith(day.isoformat())),
        Decimal(0),
    )  # fmt: skip
    assert redis_day == total
