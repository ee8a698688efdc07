"""``ratelimit restore``: the spend Redis lost, rebuilt from the ledger of record.

The main test is the real incident: budgeted traffic with ``ratelimit sync``
following, a Redis without persistence killed and restarted mid-period,
traffic again, then ``restore``. The others pin down each rule: only what
Redis lacks is added (a second restore changes nothing, nothing is lowered),
entries PostgreSQL does not have yet are counted from the stream exactly
once, and a budget whose key is gone is rebuilt only from a given limit.
"""

from __future__ import annotations

import re
import shlex
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from ledger_helpers import counters, pg_counters, run_cli, spend, start_sync, stop_sync, synced
from ledger_helpers import wait_until as wait_for_condition
from topology import ServerFactory

from ratelimit import Budget, BudgetExceeded, Limiter, Rate, load_config
from ratelimit.cli.output import format_usd
from ratelimit.core.numbers import MICRO, NANO, text
from ratelimit.errors import RestoreRefused
from ratelimit.postgres import LedgerStream, sync_lag
from ratelimit.postgres.restore import restore_scope
from ratelimit.postgres.schema import connect
from ratelimit.postgres.sync import LedgerSync

README = Path(__file__).resolve().parent.parent / "README.md"
LIMIT_USD = 40
BUDGET = Budget(LIMIT_USD, per="day", tz="Europe/Paris")
STREAM = LedgerStream("team-a", "team-a")


def _limiter(client: redis.Redis, budget: Budget = BUDGET) -> Limiter:
    # A fresh Limiter is a process that has seen no spend yet: no floor of its own.
    return Limiter(client, "team-a", requests=Rate(1_000_000), usd=budget)


def _budget_fields(client: redis.Redis) -> list[str]:
    """The budget key's fields: start, end, spent, reserved, fired, limit, label."""
    raw: Any = client.get(STREAM.keys.budget)
    return [text(field) for field in raw.split()]


def _spent_nano(client: redis.Redis) -> int:
    return int(_budget_fields(client)[2])


def _pg_period_nano(dsn: str, client: redis.Redis, scope: str = "team-a") -> int:
    """PostgreSQL's spend in the budget period the budget key of ``scope`` holds."""
    start, stop = (int(f) for f in _budget_fields(client)[:2])
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(cost_usd), 0) FROM ratelimit_ledger WHERE scope = %s"
            " AND at >= to_timestamp(%s / 1e6) AND at < to_timestamp(%s / 1e6)",
            (scope, start, stop),
        ).fetchone()
    assert row is not None
    return int(row[0] * NANO)


@pytest.mark.slow
def test_restore_after_a_restart_without_persistence(
    start_server: ServerFactory, ledger_dsn: str
) -> None:
    server = start_server()  # persistence off: a restart loses everything
    client = server.client()
    sync = start_sync(ledger_dsn, server.url, "team-a", "--claim-idle", "1")
    try:
        before = spend(_limiter(client), 120, seed=1)
        wait_for_condition(lambda: synced(client, ledger_dsn, [STREAM]), "the sync")

        server.restart(graceful=False)
        client = server.client()
        assert client.dbsize() == 0
        after = spend(_limiter(client), 30, seed=2)  # the group is gone: sync makes it again
        wait_for_condition(lambda: synced(client, ledger_dsn, [STREAM], 150), "the sync after")
    finally:
        code, err = stop_sync(sync)
    assert code == 0, err
    assert "consumer group is gone" in err
    assert _spent_nano(client) == after * NANO  # Redis alone forgot `before`

    done = run_cli("restore", "--from", ledger_dsn, "--redis-url", server.url, "team-a")

    assert done.returncode == 0, done.stderr
    assert f"spent {format_usd(after)} -> {format_usd(before + after)} USD" in done.stdout
    assert counters(client, STREAM) == pg_counters(ledger_dsn, "team-a")
    assert _spent_nano(client) == _pg_period_nano(ledger_dsn, client) == (before + after) * NANO
    again = run_cli("restore", "--from", ledger_dsn, "--redis-url", server.url, "team-a")
    assert again.returncode == 0, again.stderr
    assert "nothing to restore" in again.stdout

    # The budget holds: $1 reservations are admitted until spent + reserved reach the limit.
    limiter = _limiter(client)
    room = int((LIMIT_USD - before - after) // 1)
    permits = [limiter.acquire(usd=1, model="m") for _ in range(room)]
    with pytest.raises(BudgetExceeded) as refused:
        limiter.acquire(usd=1, model="m")
    assert refused.value.spent == before + after
    assert refused.value.reserved == room
    for permit in permits:
        permit.cancel()


def test_a_missing_budget_key_needs_its_limit(r: redis.Redis, ledger_dsn: str) -> None:
    month = Budget(LIMIT_USD, per="month", tz="Europe/Paris")
    charged = spend(_limiter(r, month), 25)
    LedgerSync(r, ledger_dsn).drain()
    r.flushdb()

    with connect(ledger_dsn) as conn:
        with pytest.raises(RestoreRefused, match="give its limit and period") as refused:
            restore_scope(r, conn, STREAM)
        assert refused.value.scope == "team-a"
        assert r.dbsize() == 0  # refused: nothing written

        restored = restore_scope(r, conn, STREAM, month)

    assert restored.spent_before is None
    assert restored.spent_after == charged
    start, stop, spent, reserved, fired, limit, label, lost = _budget_fields(r)
    seconds, micros = r.time()
    assert len(label) == 7  # "YYYY-MM": the month in Europe/Paris holding Redis's now
    assert int(start) <= int(seconds) * MICRO + int(micros) < int(stop)
    assert (int(spent), int(reserved), int(fired), int(lost)) == (int(charged * NANO), 0, 0, 0)
    assert int(limit) == LIMIT_USD * NANO
    assert counters(r, STREAM) == pg_counters(ledger_dsn, "team-a")
    assert _limiter(r, month).state().budget("usd").spent == charged


def test_restore_clears_the_loss_a_limiter_noticed(r: redis.Redis, ledger_dsn: str) -> None:
    limiter = _limiter(r)  # one process, which remembers the spend it saw
    charged = spend(limiter, 10)
    LedgerSync(r, ledger_dsn).drain()
    r.delete(STREAM.keys.budget)  # an eviction
    limiter.acquire(usd="0.01", model="m").cancel()  # restores its floor, marks the loss
    assert int(_budget_fields(r)[7]) > 0

    with connect(ledger_dsn) as conn:
        restored = restore_scope(r, conn, STREAM)

    assert restored.lost_at is not None
    assert restored.changed
    assert restored.spent_after == charged
    assert _budget_fields(r)[7] == "0"
    with connect(ledger_dsn) as conn:
        assert not restore_scope(r, conn, STREAM).changed


def test_the_cli_refuses_a_scope_without_its_budget(
    redis_url: str, r: redis.Redis, ledger_dsn: str
) -> None:
    spend(_limiter(r), 5)
    _limiter(r).record_saving("0.25", model="claude-haiku-4-5")
    LedgerSync(r, ledger_dsn).drain()
    r.flushdb()

    refused = run_cli("restore", "--from", ledger_dsn, "--redis-url", redis_url, "--all")
    assert refused.returncode == 2
    assert "give its limit and period" in refused.stderr
    bad = run_cli("restore", "--from", ledger_dsn, "--redis-url", redis_url, "--all",
                  "--limit", "-3")  # fmt: skip
    assert bad.returncode == 2
    assert "Budget usd" in bad.stderr
    done = run_cli("restore", "--from", ledger_dsn, "--redis-url", redis_url, "--all",
                   "--limit", str(LIMIT_USD), "--tz", "Europe/Paris")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "savings +0.25 USD" in done.stdout
    assert counters(r, STREAM) == pg_counters(ledger_dsn, "team-a")


def test_the_configuration_gives_restore_each_scope_slot_and_budget(
    redis_url: str, r: redis.Redis, ledger_dsn: str, tmp_path: Path
) -> None:
    config = tmp_path / "ratelimit.toml"
    config.write_text(
        '[scope.team-b]\nslot = "acme"\n'
        '[scope.team-b.budget]\nusd = "25"\nper = "month"\ntz = "Asia/Tokyo"\n'
    )
    team_b = load_config(config).limiter("team-b", r)
    charged = spend(team_b, 12)
    LedgerSync(r, ledger_dsn).drain()
    r.flushdb()

    done = run_cli("--config", str(config), "restore", "--from", ledger_dsn,
                   "--redis-url", redis_url, "team-b")  # fmt: skip

    assert done.returncode == 0, done.stderr
    budget = load_config(config).limiter("team-b", r).state().budget("usd")
    assert (budget.spent, budget.limit, budget.period) == (charged, Decimal(25), "month")
    assert counters(r, LedgerStream("team-b", "acme")) == pg_counters(ledger_dsn, "team-b")


def test_sync_and_restore_work_as_the_readme_operator_user(
    redis_url: str, r: redis.Redis, ledger_dsn: str
) -> None:
    [rule] = re.findall(
        r"^ACL SETUSER ratelimit-ops .*$", README.read_text(encoding="utf-8"), flags=re.M
    )
    words = shlex.split(rule)
    [password] = [word[1:] for word in words if word.startswith(">")]
    parts = urlsplit(redis_url)
    url = urlunsplit(parts._replace(netloc=f"{words[2]}:{password}@{parts.netloc}"))
    r.execute_command(*words)  # type: ignore[no-untyped-call]  # untyped in redis-py
    try:
        charged = spend(_limiter(r), 8)
        synced = run_cli("sync", "--to", ledger_dsn, "--redis-url", url, "--all", "--once")
        assert synced.returncode == 0, synced.stderr
        r.flushdb()
        restored = run_cli("restore", "--from", ledger_dsn, "--redis-url", url, "--all",
                           "--limit", str(LIMIT_USD), "--tz", "Europe/Paris")  # fmt: skip
        assert restored.returncode == 0, restored.stderr
    finally:
        r.execute_command("ACL", "DELUSER", words[2])  # type: ignore[no-untyped-call]
    assert _limiter(r).state().budget("usd").spent == charged
    assert counters(r, STREAM) == pg_counters(ledger_dsn, "team-a")


def test_entries_not_yet_in_postgresql_are_counted_once_from_the_stream(
    r: redis.Redis, ledger_dsn: str
) -> None:
    old = spend(_limiter(r), 20, seed=3)
    LedgerSync(r, ledger_dsn).drain()
    r.flushdb()  # Redis lost it all, and then:
    new = spend(_limiter(r), 18, seed=4)  # not synced yet,
    r.xgroup_create(STREAM.key, "ratelimit-sync", id="0")
    r.xreadgroup("ratelimit-sync", "crashed", {STREAM.key: ">"}, count=5)  # 5 delivered, unacked
    assert sync_lag(r, [STREAM])[0].pending == 5

    with connect(ledger_dsn) as conn:
        restored = restore_scope(r, conn, STREAM)

    assert restored.tail_entries == 18
    assert restored.spent_before == new
    assert restored.spent_after == old + new
    LedgerSync(r, ledger_dsn, claim_idle_s=0).drain()  # now PostgreSQL has them all
    assert counters(r, STREAM) == pg_counters(ledger_dsn, "team-a")
    with connect(ledger_dsn) as conn:
        assert not restore_scope(r, conn, STREAM).changed


def test_restore_never_lowers_what_redis_holds(r: redis.Redis, ledger_dsn: str) -> None:
    limiter = _limiter(r)
    spend(limiter, 10)
    LedgerSync(r, ledger_dsn).drain()
    with psycopg.connect(ledger_dsn) as conn:
        conn.execute(
            "DELETE FROM ratelimit_ledger WHERE stream_id IN"
            " (SELECT stream_id FROM ratelimit_ledger ORDER BY stream_id LIMIT 4)"
        )
    held, spent = counters(r, STREAM), _spent_nano(r)

    with connect(ledger_dsn) as conn:
        restored = restore_scope(r, conn, STREAM)

    assert not restored.changed
    assert (counters(r, STREAM), _spent_nano(r)) == (held, spent)


def test_restores_during_traffic_count_every_settle_once(r: redis.Redis, ledger_dsn: str) -> None:
    """Each restore runs in one script: settles cannot interleave with half of one."""
    spend(_limiter(r), 30)
    LedgerSync(r, ledger_dsn).drain()
    r.flushdb()
    results: list[Any] = []
    traffic = threading.Thread(target=lambda: results.append(spend(_limiter(r), 150, seed=9)))
    traffic.start()
    with connect(ledger_dsn) as conn:
        for _ in range(50):
            LedgerSync(r, ledger_dsn, claim_idle_s=0).drain()
            restore_scope(r, conn, STREAM)
            if not traffic.is_alive():
                break
    traffic.join(timeout=60)
    LedgerSync(r, ledger_dsn, claim_idle_s=0).drain()
    with connect(ledger_dsn) as conn:
        restore_scope(r, conn, STREAM)

    assert results
    assert counters(r, STREAM) == pg_counters(ledger_dsn, "team-a")
    assert _spent_nano(r) == _pg_period_nano(ledger_dsn, r)
    assert Decimal(_spent_nano(r)) / NANO > results[0]
