#!/usr/bin/env python3
"""How fast ``ratelimit sync`` copies the ledger into PostgreSQL, and how far behind it runs.

    python benchmarks/bench_sync.py [--redis-url URL] [--engine redis|valkey]
                                    [--to DSN] [--workers N] [--seconds S]
                                    [--backlog N] [--quick] [--json PATH]

Without ``--redis-url`` it starts its own private server (``EmbeddedServer``);
without ``--to`` it creates a database ``ratelimit_bench_<random>`` on the
local PostgreSQL (127.0.0.1:5432, user postgres) and drops it at the end. On
a given database it only writes rows of its own scopes (``bench-<id>-*``),
deleted at the end; on a given Redis only keys of those scopes.

Two phases, each with budgeted traffic (acquire with a reservation, settle at
a random nano-dollar cost) from N worker processes, each over two scopes:

1. **Backlog.** The workers write ``--backlog`` ledger entries with no sync
   running; then ``LedgerSync.drain()`` (``--once``) copies them. Figure:
   rows synced per second.
2. **Follow.** ``ratelimit sync`` runs as a process, following, while the
   workers settle as fast as they can for ``--seconds``. Figures: the traffic's
   entries per second, and each row's lag, from the settle (Redis time, the
   entry's ``at``) to its insert (PostgreSQL's ``synced_at``): p50, p99, max.
   Both clocks are this machine's.

Both phases check that PostgreSQL ends with exactly one row per entry.
``--quick`` shrinks the run to a few seconds (CI).
"""

from __future__ import annotations

import argparse
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import psycopg
import redis
from common import bench_parser, finish, fmt, parse_bench_args, print_conditions, session, table
from psycopg import sql
from psycopg.conninfo import make_conninfo
from workers import run_workers

from ratelimit import Budget, Limiter, Rate
from ratelimit.core.numbers import NANO
from ratelimit.postgres import LedgerStream, sync_lag
from ratelimit.postgres.schema import connect, migrate
from ratelimit.postgres.streams import DEFAULT_BATCH
from ratelimit.postgres.sync import LedgerSync

#: The local PostgreSQL the benchmark makes its database on, without ``--to``.
LOCAL_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
SCOPES = 2
#: How long the follower may take to catch up once the traffic stops, in seconds.
CATCH_UP_S = 120.0
MODEL = "claude-sonnet-4-5"


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    quick: bool
    workers: int
    seconds: float
    backlog: int

    @classmethod
    def build(cls, args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        return cls(
            quick=quick,
            workers=args.workers or (2 if quick else 8),
            seconds=args.seconds or (2.0 if quick else 20.0),
            backlog=args.backlog or (2_000 if quick else 50_000),
        )


@dataclass(frozen=True)
class Traffic:
    """One worker's budgeted calls, round robin over the scopes: acquire, then settle at a
    random cost, until a deadline or ``calls`` of them (picklable: it runs in a worker)."""

    url: str
    scopes: tuple[str, ...]
    duration_s: float
    calls: int | None = None

    def prepare(self) -> Callable[[float], int]:
        limiters = [
            Limiter(self.url, scope, requests=Rate(1_000_000_000), usd=Budget(1_000_000))
            for scope in self.scopes
        ]
        rng = random.Random()

        def run(deadline: float) -> int:
            done = 0
            while time.monotonic() < deadline and (self.calls is None or done < self.calls):
                limiter = limiters[done % len(limiters)]
                permit = limiter.acquire(usd="0.05", model=MODEL, tags={"team": "bench"})
                permit.settle(usd=Decimal(rng.randrange(1, 50_000_000)) / NANO)
                done += 1
            return done

        return run


def _traffic(
    url: str, scopes: list[str], workers: int, seconds: float, calls: int | None = None
) -> int:
    """Run the workers together: how many calls they made."""
    task = Traffic(url, tuple(scopes), seconds, calls)
    return sum(done.value for done in run_workers(task, workers))


@contextmanager
def database(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """The DSN to write to and where it came from: ``--to``, or a database made for the run."""
    if args.to:
        yield args.to, "given DSN"
        return
    name = f"ratelimit_bench_{secrets.token_hex(4)}"
    with psycopg.connect(LOCAL_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(LOCAL_ADMIN_DSN, dbname=name), f"private database {name}"
    finally:
        with psycopg.connect(LOCAL_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _count(dsn: str, scopes: list[str]) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ratelimit_ledger WHERE scope = ANY(%s)", (scopes,)
        ).fetchone()
    return int(row[0]) if row else 0


def _entries(client: redis.Redis, scopes: list[str]) -> int:
    return sum(int(client.xlen(LedgerStream(s, s).key)) for s in scopes)


def backlog_phase(
    client: redis.Redis, url: str, dsn: str, scopes: list[str], plan: Plan
) -> dict[str, Any]:
    """Write a backlog with no sync running, then time one drain of it."""
    per_worker = -(-plan.backlog // plan.workers)
    made = _traffic(url, scopes, plan.workers, 3600.0, per_worker)
    sync = LedgerSync(client, dsn, [LedgerStream(s, s) for s in scopes])
    try:
        sync.conn  # noqa: B018 - connect and migrate outside the measurement
        start = time.perf_counter()
        stats = sync.drain()
        elapsed = time.perf_counter() - start
    finally:
        sync.close()
    return {
        "entries": made,
        "rows": _count(dsn, scopes),
        "inserted": stats.inserted,
        "seconds": elapsed,
        "rows_per_s": stats.inserted / elapsed,
        "batch": DEFAULT_BATCH,
    }


def _lags(dsn: str, scopes: list[str]) -> list[float]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM synced_at - at) FROM ratelimit_ledger"
            " WHERE scope = ANY(%s) ORDER BY 1",
            (scopes,),
        ).fetchall()
    return [float(lag) * 1000 for (lag,) in rows]


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def follow_phase(
    client: redis.Redis, url: str, dsn: str, scopes: list[str], plan: Plan
) -> dict[str, Any]:
    """Traffic for ``plan.seconds`` with ``ratelimit sync`` following; each row's lag."""
    streams = [LedgerStream(s, s) for s in scopes]
    for stream in streams:  # the streams exist before the sync starts
        client.xgroup_create(stream.key, "ratelimit-sync", id="0", mkstream=True)
    follower = subprocess.Popen(
        [sys.executable, "-m", "ratelimit", "sync", "--to", dsn, "--redis-url", url, *scopes],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + CATCH_UP_S
        while not [g for g in client.xinfo_groups(streams[0].key) if g["consumers"]]:
            if time.monotonic() > deadline or follower.poll() is not None:
                raise RuntimeError("the follower did not start")
            time.sleep(0.05)
        start = time.monotonic()
        made = _traffic(url, scopes, plan.workers, plan.seconds)
        traffic_s = time.monotonic() - start
        caught_up = time.monotonic()
        while not all(lag.synced for lag in sync_lag(client, streams)):
            if time.monotonic() > caught_up + CATCH_UP_S:
                raise RuntimeError("the follower did not catch up")
            time.sleep(0.05)
        catch_up_s = time.monotonic() - caught_up
    finally:
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=CATCH_UP_S)
    if follower.returncode != 0:
        raise RuntimeError(f"the follower failed: {err}")
    lags = _lags(dsn, scopes)
    return {
        "entries": made,
        "rows": len(lags),
        "traffic_s": traffic_s,
        "entries_per_s": made / traffic_s,
        "catch_up_s": catch_up_s,
        "lag_p50_ms": _percentile(lags, 0.50),
        "lag_p99_ms": _percentile(lags, 0.99),
        "lag_max_ms": lags[-1],
    }


def print_report(
    conditions: dict[str, str], backlog: dict[str, Any], follow: dict[str, Any]
) -> None:
    print_conditions("llm-quota-guard ledger sync benchmark", conditions)
    print("[1] Backlog: one drain (sync --once) of entries written with no sync running")
    print(
        table(
            ["entries", "rows", "batch", "seconds", "rows/s"],
            [
                [
                    str(backlog["entries"]),
                    str(backlog["rows"]),
                    str(backlog["batch"]),
                    fmt(backlog["seconds"], ".2f"),
                    fmt(backlog["rows_per_s"]),
                ]
            ],
        )
    )
    print()
    print("[2] Follow: `ratelimit sync` following budgeted traffic; lag = insert - settle")
    print(
        table(
            [
                "entries",
                "rows",
                "entries/s",
                "lag p50 ms",
                "lag p99 ms",
                "lag max ms",
                "catch-up s",
            ],
            [
                [
                    str(follow["entries"]),
                    str(follow["rows"]),
                    fmt(follow["entries_per_s"]),
                    fmt(follow["lag_p50_ms"], ".1f"),
                    fmt(follow["lag_p99_ms"], ".1f"),
                    fmt(follow["lag_max_ms"], ".1f"),
                    fmt(follow["catch_up_s"], ".2f"),
                ]
            ],
        )
    )
    print()


def cleanup(dsn: str, run_id: str) -> None:
    """Delete the run's rows (a given database keeps everything else)."""
    with connect(dsn) as conn:
        pattern = f"{run_id}-%"
        conn.execute("DELETE FROM ratelimit_ledger WHERE scope LIKE %s", (pattern,))
        conn.execute("DELETE FROM ratelimit_streams WHERE scope LIKE %s", (pattern,))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--to", metavar="DSN", help="PostgreSQL database to write to")
    parser.add_argument("--workers", type=int, help="traffic processes (8; quick 2)")
    parser.add_argument("--seconds", type=float, help="follow phase length (20; quick 2)")
    parser.add_argument("--backlog", type=int, help="backlog entries (50,000; quick 2,000)")
    args = parse_bench_args(parser, argv)
    for name in ("workers", "seconds", "backlog"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.build(args)
    began = time.monotonic()
    with session(args) as run, database(args) as (dsn, origin):
        with connect(dsn) as conn:
            migrate(conn)
            version = conn.execute("SHOW server_version").fetchone()
        conditions = run.conditions(
            f"{'quick' if plan.quick else 'full'}: {plan.workers} workers, {SCOPES} scopes, "
            f"backlog {plan.backlog:,}, follow {plan.seconds:g} s"
        )
        conditions["postgres"] = (
            f"PostgreSQL {version[0] if version else '?'}, {origin}; psycopg {psycopg.__version__}"
            f" ({psycopg.pq.__impl__})"
        )
        try:
            backlog_scopes = [f"{run.run_id}-backlog-{i}" for i in range(SCOPES)]
            backlog = backlog_phase(run.client, run.url, dsn, backlog_scopes, plan)
            follow_scopes = [f"{run.run_id}-follow-{i}" for i in range(SCOPES)]
            follow = follow_phase(run.client, run.url, dsn, follow_scopes, plan)
            for phase, scopes in ((backlog, backlog_scopes), (follow, follow_scopes)):
                phase["exactly_once"] = phase["rows"] == _entries(run.client, scopes)
                if not phase["exactly_once"]:
                    raise RuntimeError(f"rows != entries: {phase}")
        finally:
            cleanup(dsn, run.run_id)
        print_report(conditions, backlog, follow)
        report = {"conditions": conditions, "plan": asdict(plan), "backlog": backlog}
        finish(began, {**report, "follow": follow}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
