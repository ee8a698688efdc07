"""``ratelimit dashboard`` over HTTP: a real uvicorn on a free port, real Redis and PostgreSQL.

The JSON endpoints must answer the figures the ledger holds, to the
nano-dollar; with a token every request needs it; only GET is served; and
nothing is written to Redis or PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from dashboard_helpers import (
    HTTP_TIMEOUT_S,
    budgeted_traffic,
    dashboard_args,
    get_json,
    money,
    request,
    served,
)

from ratelimit import Limiter
from ratelimit.cli.dashboard import build_server
from ratelimit.dashboard import ledger_sql
from ratelimit.dashboard.access import TOKEN_ENV
from ratelimit.errors import DashboardRefused, LedgerStoreError
from ratelimit.postgres.sync import LedgerSync


def _ledger_sums(limiters: dict[str, Limiter]) -> dict[str, Any]:
    """What the ledger streams hold, summed by scope, by day and model, and by user tag."""
    by_scope: dict[str, Decimal] = {}
    by_day_model: dict[tuple[str, str], Decimal] = {}
    by_user: dict[str, Decimal] = {}
    for name in ("team-a", "team-b"):
        for entry in limiters[name].ledger_entries():
            by_scope[name] = by_scope.get(name, Decimal(0)) + entry.cost_usd
            key = (entry.day, entry.model)
            by_day_model[key] = by_day_model.get(key, Decimal(0)) + entry.cost_usd
            if "user" in entry.tags:
                user = entry.tags["user"]
                by_user[user] = by_user.get(user, Decimal(0)) + entry.cost_usd
    return {"scope": by_scope, "day_model": by_day_model, "user": by_user}


def _ranked(amounts: dict[str, Decimal]) -> list[dict[str, str]]:
    order = sorted(amounts.items(), key=lambda item: (-item[1], item[0]))
    return [{"name": name, "usd": money(amount)} for name, amount in order]


def _check_day(spend: dict[str, Any], sums: dict[str, Any]) -> None:
    """Each day the ledger holds: its models and total, as the chart has them."""
    days = {day["day"]: day for day in spend["days"]}
    held: dict[str, dict[str, Decimal]] = {}
    for (day, model), amount in sums["day_model"].items():
        held.setdefault(day, {})[model] = amount
    for day, models in held.items():
        assert days[day]["models"] == {m: money(a) for m, a in models.items()}
        assert days[day]["total_usd"] == money(sum(models.values(), Decimal(0)))


def test_live_and_spend_answer_what_the_ledger_holds(r: redis.Redis, redis_url: str) -> None:
    limiters = budgeted_traffic(r)
    sums = _ledger_sums(limiters)
    with served(redis_url) as dashboard:
        live = get_json(dashboard.url + "api/live")
        spend = get_json(dashboard.url + "api/spend")

    budgets = {budget["scope"]: budget for budget in live["budgets"]}
    assert set(budgets) == {"team-a", "team-b"}
    team_a = budgets["team-a"]
    assert team_a["spent_usd"] == money(sums["scope"]["team-a"]) == "5.694567892"
    assert team_a["reserved_usd"] == "0.5"
    assert team_a["limit_usd"] == "10"
    assert team_a["available_usd"] == money(10 - sums["scope"]["team-a"] - Decimal("0.5"))
    assert 0 < team_a["resets_in_s"] <= 86400
    assert budgets["team-b"]["slot"] == "acme"
    assert budgets["team-b"]["spent_usd"] == "4.25"

    quotas = {(q["scope"], d["dimension"]): d for q in live["quotas"] for d in q["dimensions"]}
    chat = quotas["chat", "requests"]
    assert chat["capacity"] == "10"
    assert Decimal("2.9") < Decimal(chat["used"]) <= 3  # 3 taken, a little refilled since
    assert Decimal("0.29") < Decimal(chat["utilization"]) <= Decimal("0.3")
    (alert,) = live["alerts"]
    (history,) = limiters["team-a"].alert_history()
    assert alert["scope"] == "team-a"
    assert alert["threshold"] == "0.5"
    assert alert["spent_usd"] == money(history.spent)

    assert spend["source"] == "redis"
    assert spend["entries"] == 8
    _check_day(spend, sums)
    assert spend["total_usd"] == money(sum(sums["scope"].values(), Decimal(0)))
    assert spend["top_scopes"] == _ranked(sums["scope"])
    tags = {tag["tag"]: tag["values"] for tag in spend["top_tags"]}
    assert tags["user"] == _ranked(sums["user"])
    assert tags["team"][0] == {"name": "ops", "usd": "4.25"}
    assert len(spend["days"]) == 30
    assert spend["last_day"] == datetime.fromtimestamp(r.time()[0], UTC).date().isoformat()


def _every_key(client: redis.Redis) -> dict[bytes, tuple[bytes | None, int]]:
    """Every key's serialized value and TTL: what a read-only reader leaves as it found it."""
    return {key: (client.dump(key), client.pttl(key)) for key in client.scan_iter(count=1000)}


def test_only_get_is_served_and_nothing_is_written(r: redis.Redis, redis_url: str) -> None:
    limiters = budgeted_traffic(r)
    limiters["chat"].acquire(input_tokens=1, timeout=5).settle(input_tokens=1)
    before = _every_key(r)
    with served(redis_url) as dashboard:
        for path in ("", "api/live", "api/spend"):
            assert request(dashboard.url + path)[0] == 200
            assert request(dashboard.url + path, method="HEAD")[0] == 200
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                status, headers, _ = request(dashboard.url + path, method=method)
                assert status == 405, (method, path)
                assert "GET" in headers["allow"]
        assert request(dashboard.url + "api/nothing")[0] == 404
    after = _every_key(r)
    # Values as they were; TTLs only ran down.
    assert {k: v for k, (v, _) in after.items()} == {k: v for k, (v, _) in before.items()}


def test_the_page_is_self_contained_and_locked_to_its_origin(redis_url: str) -> None:
    with served(redis_url) as dashboard:
        status, headers, body = request(dashboard.url)
    assert status == 200
    page = body.decode("utf-8")
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "'unsafe-inline'" not in policy
    assert "<script>" in page  # inlined from static/, so one request brings everything
    assert " src=" not in page
    assert 'href="data:,"' in page  # the icon: no request for /favicon.ico
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"


def test_a_token_is_required_of_every_request(redis_url: str) -> None:
    token = "s3cret-token"
    with served(redis_url, "--token", token) as dashboard:
        for path in ("", "api/live", "api/spend"):
            status, headers, body = request(dashboard.url + path)
            assert status == 401, path
            assert headers["www-authenticate"] == "Bearer"
            assert b"needs its token" in body
            assert request(dashboard.url + path + "?token=wrong")[0] == 401
            assert request(dashboard.url + path, headers={"Authorization": "Bearer x"})[0] == 401
            assert request(dashboard.url + path + "?token=" + token)[0] == 200
            bearer = {"Authorization": f"Bearer {token}"}
            assert request(dashboard.url + path, headers=bearer)[0] == 200
        # The method is checked once the token is: a POST with it is still refused.
        assert request(dashboard.url + "api/live", method="POST", headers=bearer)[0] == 405
        assert request(dashboard.url + "api/live", method="POST")[0] == 401


def test_any_address_but_loopback_needs_a_token(redis_url: str) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.10", "dashboard.example"):
        with pytest.raises(DashboardRefused, match="without a token"):
            build_server(dashboard_args(redis_url, "--host", host), None)
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "ratelimit", "dashboard", "--host", "0.0.0.0", "--port", "0"],
        env={**env, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0" in result.stderr
    assert f"--token TOKEN or set ${TOKEN_ENV}" in result.stderr


@pytest.fixture
def dashboard_process(redis_url: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``ratelimit dashboard --port 0`` as a user starts it, $REDIS_URL naming the server."""
    env = {**os.environ, "REDIS_URL": redis_url, TOKEN_ENV: "from-the-environment"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ratelimit", "dashboard", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "serving http://" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert found.wait(HTTP_TIMEOUT_S), "".join(lines)
        serving = next(line for line in lines if "serving http://" in line)
        yield process, serving.split("serving ", 1)[1].split("?", 1)[0]
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(HTTP_TIMEOUT_S)


def test_the_command_serves_until_sigterm(
    r: redis.Redis, dashboard_process: tuple[subprocess.Popen[str], str]
) -> None:
    budgeted_traffic(r)
    process, url = dashboard_process
    assert url.startswith("http://127.0.0.1:")
    # The token came from $RATELIMIT_DASHBOARD_TOKEN.
    assert request(url + "api/live")[0] == 401
    live = get_json(url + "api/live", "from-the-environment")
    assert {b["scope"] for b in live["budgets"]} == {"team-a", "team-b"}
    process.send_signal(signal.SIGTERM)
    assert process.wait(HTTP_TIMEOUT_S) == 0


# -- with --postgres: the spend from the ledger of record ---------------------------


def _insert_row(dsn: str, day: date, cost: str, tags: dict[str, str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ratelimit_ledger (scope, stream_id, permit_id, kind, at, day, model, "
            "cost_usd, tags) "
            "VALUES ('team-a', %s, 'p', 'settled', %s, %s, 'claude-opus-4', %s, %s)",
            (f"{day}-0", datetime.combine(day, datetime.min.time(), UTC), day, cost,
             json.dumps(tags)),
        )  # fmt: skip


def test_spend_comes_from_postgres_with_postgres(
    r: redis.Redis, redis_url: str, ledger_dsn: str
) -> None:
    limiters = budgeted_traffic(r)
    sums = _ledger_sums(limiters)
    LedgerSync(r, ledger_dsn).drain()
    today = datetime.fromtimestamp(r.time()[0], UTC).date()
    # Rows only PostgreSQL has: one in the chart's window, one before it.
    _insert_row(ledger_dsn, today - timedelta(days=10), "12.345678901", {"user": "u-old"})
    _insert_row(ledger_dsn, today - timedelta(days=40), "99", {"user": "u-older"})
    with served(redis_url, "--postgres", ledger_dsn) as dashboard:
        spend = get_json(dashboard.url + "api/spend")

    assert spend["source"] == "postgres"
    assert spend["entries"] == 9
    _check_day(spend, sums)
    old = next(day for day in spend["days"] if day["day"] == str(today - timedelta(days=10)))
    assert old == {
        "day": str(today - timedelta(days=10)),
        "total_usd": "12.345678901",
        "models": {"claude-opus-4": "12.345678901"},
    }
    team_a = sums["scope"]["team-a"] + Decimal("12.345678901")
    assert spend["top_scopes"] == _ranked({**sums["scope"], "team-a": team_a})
    users = {tag["tag"]: tag["values"] for tag in spend["top_tags"]}["user"]
    assert users == _ranked({**sums["user"], "u-old": Decimal("12.345678901")})
    assert spend["total_usd"] == money(sum(sums["scope"].values(), Decimal("12.345678901")))


def test_postgres_is_read_in_a_read_only_transaction(
    ledger_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were a statement of the dashboard's to write, PostgreSQL itself would refuse it.
    monkeypatch.setattr(
        ledger_sql,
        "_COUNT",
        "INSERT INTO ratelimit_streams (stream_key, scope, slot) VALUES ('k', 's', 's') "
        "RETURNING 1, now()",
    )
    with pytest.raises(LedgerStoreError, match="read-only transaction"):
        ledger_sql.read_postgres_totals(ledger_dsn, date(2026, 11, 1))
    with psycopg.connect(ledger_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM ratelimit_streams").fetchone() == (0,)


def test_a_database_without_the_ledger_is_a_503_and_stays_empty(
    redis_url: str, empty_database: str
) -> None:
    with served(redis_url, "--postgres", empty_database) as dashboard:
        status, _, body = request(dashboard.url + "api/spend")
        assert request(dashboard.url + "api/live")[0] == 200  # Redis still answers
    assert status == 503
    assert "ratelimit_ledger" in json.loads(body)["error"]
    with psycopg.connect(empty_database) as conn:  # the dashboard migrated nothing
        assert conn.execute("SELECT to_regclass('ratelimit_ledger')").fetchone() == (None,)
