"""Take docs/dashboard.png: the dashboard over a month of realistic traffic, in headless chromium.

    python examples/dashboard_screenshot.py [--output docs/dashboard.png]

It starts a private Redis (or Valkey), sends a day of budgeted traffic
through real limiters (three teams, three models, ``user`` and ``team``
tags, alerts crossed, permits in flight), copies the ledger into a
PostgreSQL database of its own with ``LedgerSync`` and adds 29 earlier days
of rows there (Redis can only write entries at its own time), serves
``ratelimit dashboard --postgres`` on a free port and photographs the page
with the same selenium setup as ``tests/test_dashboard_browser.py``. The
database is dropped at the end. Needs the dev extras, chromium and
chromium-driver, and PostgreSQL (``--postgres-admin``, a DSN that may
CREATE DATABASE).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import make_conninfo
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ratelimit import Budget, Limiter, LimiterGroup, Rate
from ratelimit.cli.dashboard import build_server
from ratelimit.cli.parser import build_parser
from ratelimit.postgres.schema import connect, migrate
from ratelimit.postgres.sync import LedgerSync
from ratelimit.server import EmbeddedServer

MODELS = {"claude-sonnet-4-6": 3, "claude-haiku-4-5": 1, "claude-opus-4-8": 15}
USERS = [f"u-{n}" for n in (7, 12, 17, 23, 31, 42, 56)]
TEAMS = ("search", "support", "research")


def traffic(client: redis.Redis, rng: random.Random) -> None:
    """A day's calls of three teams, and a wrapped client's family quota in use."""
    teams = {
        "search": Limiter(client, "team-search", usd=Budget("15", alerts=(0.5, 0.8))),
        "support": Limiter(client, "team-support", slot="acme", usd=Budget("300", per="month")),
        "research": Limiter(client, "team-research", usd=Budget("40")),
    }
    family = Limiter(
        client,
        "anthropic:claude-sonnet-4",
        slot="anthropic",
        requests=Rate(4000, per=60),
        input_tokens=Rate(2_000_000, per=60),
        output_tokens=Rate(400_000, per=60),
    )
    budget = Limiter(client, "anthropic:budget", slot="anthropic", usd=Budget("50"))
    for _ in range(160):
        team = rng.choice(TEAMS)
        model = rng.choices(list(MODELS), weights=(6, 3, 1))[0]
        cost = Decimal(rng.randrange(2_000_000, 90_000_000) * MODELS[model]) / 10**9
        tags = {"user": rng.choice(USERS), "team": team}
        teams[team].acquire(usd="2", model=model, tags=tags, timeout=5).settle(usd=cost)
    group = LimiterGroup(family, budget)
    for _ in range(40):
        cost = Decimal(rng.randrange(5_000_000, 60_000_000)) / 10**9
        tags = {"user": rng.choice(USERS), "team": "search"}
        permit = group.acquire(
            usd="0.5",
            input_tokens=rng.randrange(2_000, 60_000),
            output_tokens=4_096,
            model="claude-sonnet-4-6",
            tags=tags,
            timeout=5,
        )
        permit.settle(usd=cost, input_tokens=rng.randrange(1_000, 2_000), output_tokens=900)
    for _ in range(3):  # in flight while the picture is taken
        group.acquire(
            usd="0.4", input_tokens=400_000, output_tokens=30_000, model="claude-sonnet-4-6"
        )
    teams["research"].acquire(usd="1.5", model="claude-opus-4-8")


def history(dsn: str, today: date, rng: random.Random) -> None:
    """29 earlier days of ledger rows, with weekday and weekend traffic."""
    scopes = {"search": "team-search", "support": "team-support", "research": "team-research"}
    rows = []
    for back in range(1, 30):
        day = today - timedelta(days=back)
        weekend = day.weekday() >= 5
        for n in range(rng.randrange(15, 30) if weekend else rng.randrange(60, 110)):
            team = rng.choice(TEAMS)
            model = rng.choices(list(MODELS), weights=(6, 3, 1))[0]
            cost = Decimal(rng.randrange(2_000_000, 90_000_000) * MODELS[model]) / 10**9
            at = datetime.combine(day, datetime.min.time(), UTC) + timedelta(seconds=n * 600)
            tags = json.dumps({"user": rng.choice(USERS), "team": team})
            rows.append((scopes[team], f"h{back}-{n}", f"p{back}-{n}", at, day, model, cost, tags))
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ratelimit_ledger (scope, stream_id, permit_id, kind, at, day, model, "
            "cost_usd, tags) VALUES (%s, %s, %s, 'settled', %s, %s, %s, %s, %s)",
            rows,
        )


def screenshot(url: str, output: Path) -> None:
    """The page, once both documents are drawn, at its full height."""
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        body = driver.find_element(By.TAG_NAME, "body")
        drawn = ("data-spend-loaded", "data-live-time")
        WebDriverWait(driver, 60).until(lambda _: all(body.get_attribute(a) for a in drawn))
        # The whole page in one picture: a viewport as tall as the page.
        driver.execute_script("document.documentElement.style.overflow = 'hidden'")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        metrics = {"width": 1300, "height": int(height), "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        output.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(output))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument(
        "--postgres-admin", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    )
    args = parser.parse_args()
    rng = random.Random(11)
    name = f"ratelimit_screenshot_{secrets.token_hex(4)}"
    with psycopg.connect(args.postgres_admin, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(args.postgres_admin, dbname=name)
    try:
        with EmbeddedServer() as server:
            client = redis.Redis.from_url(server.url)
            traffic(client, rng)
            with connect(dsn) as conn:
                migrate(conn)
            LedgerSync(client, dsn).drain()
            history(dsn, datetime.fromtimestamp(client.time()[0], UTC).date(), rng)
            command = ["dashboard", "--redis-url", server.url, "--port", "0", "--postgres", dsn]
            dashboard, dashboard_client = build_server(build_parser().parse_args(command), None)
            with dashboard:
                screenshot(dashboard.url, args.output)
            dashboard_client.close()
            client.close()
    finally:
        with psycopg.connect(args.postgres_admin, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
