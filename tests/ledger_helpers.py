"""What the ledger-of-record tests share: budgeted traffic, the sync as a process, and sums.

Sums are read both ways, exactly: from Redis (the ``:spend`` counters, per
day and model) and from PostgreSQL (``ratelimit_ledger``), as nano-dollar
integers so an equality is to the last nano-dollar.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import psycopg
import redis

from ratelimit import Limiter
from ratelimit.core.numbers import NANO, text
from ratelimit.postgres.streams import LedgerStream

MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5")
DEADLINE_S = 60.0


def spend(limiter: Limiter, calls: int, *, seed: int = 0, cancel_every: int = 7) -> Decimal:
    """``calls`` budgeted calls: most settled at an odd cost, some cancelled; USD charged."""
    rng = random.Random(seed)
    charged = Decimal(0)
    for i in range(calls):
        model = MODELS[i % len(MODELS)]
        tags = {"team": rng.choice(["search", "chat", "ops"]), "user": f"u-{i % 5}", "n": i}
        permit = limiter.acquire(usd="0.05", model=model, tags=tags, timeout=5)
        if i % cancel_every == cancel_every - 1:
            permit.cancel()
            continue
        cost = Decimal(rng.randrange(1, 50_000_000)) / NANO  # nano-dollar precision
        permit.settle(usd=cost)
        charged += cost
    return charged


def counters(client: redis.Redis, stream: LedgerStream) -> dict[str, int]:
    """The scope's spend counters, field -> nano-dollars (zero fields left out)."""
    raw = client.hgetall(stream.keys.spend)
    return {text(k): int(v) for k, v in raw.items() if int(v)}


def pg_counters(dsn: str, scope: str) -> dict[str, int]:
    """What the counters should hold by the ledger of record: field -> nano-dollars."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """
            SELECT day, model, kind = 'cache_hit',
                   sum(CASE WHEN kind = 'cache_hit' THEN saved_usd ELSE cost_usd END)
            FROM ratelimit_ledger WHERE scope = %s GROUP BY 1, 2, 3
            """,
            (scope,),
        ).fetchall()
    found: dict[str, int] = {}
    for day, model, saved, total in rows:
        nano = int(total * NANO)
        if nano:
            found[f"{day.isoformat()}|{model}{'|saved' if saved else ''}"] = nano
    return found


def pg_rows(dsn: str, scope: str | None = None) -> list[tuple[Any, ...]]:
    """Every ledger row (of one scope), by stream ID."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT scope, stream_id, permit_id, kind, at, day, model, cost_usd, saved_usd,"
            " tokens, tags FROM ratelimit_ledger WHERE %(all)s OR scope = %(scope)s"
            " ORDER BY scope, stream_id",
            {"all": scope is None, "scope": scope},
        ).fetchall()


def pg_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM ratelimit_ledger").fetchone()
    return int(row[0]) if row else 0


def stream_ids(client: redis.Redis, stream: LedgerStream) -> list[str]:
    return [text(sid) for sid, _ in client.xrange(stream.key) or []]


def ratelimit_command(*args: str) -> list[str]:
    """The ``ratelimit`` command line, run by this interpreter."""
    return [sys.executable, "-m", "ratelimit", *args]


def run_cli(*args: str, timeout_s: float = DEADLINE_S) -> subprocess.CompletedProcess[str]:
    """Run ``ratelimit <args>`` to its end; its exit status and output."""
    return subprocess.run(
        ratelimit_command(*args), capture_output=True, text=True, timeout=timeout_s, check=False
    )


def start_sync(dsn: str, url: str, *args: str) -> subprocess.Popen[str]:
    """``ratelimit sync --to dsn --redis-url url <args>`` following, as a process."""
    return subprocess.Popen(
        ratelimit_command("sync", "--to", dsn, "--redis-url", url, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_sync(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal a sync process and reap it: (exit status, stderr)."""
    process.send_signal(sig)
    _, err = process.communicate(timeout=DEADLINE_S)
    return process.returncode, err


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    """Poll ``check`` until true, for ``timeout_s`` at most (then fail, saying ``what``)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def synced(
    client: redis.Redis, dsn: str, streams: Sequence[LedgerStream], rows: int | None = None
) -> bool:
    """Whether the sync is done: no entry left to copy, and PostgreSQL holds ``rows`` rows
    (default: as many as the streams hold entries)."""
    from ratelimit.postgres import sync_lag

    if rows is None:
        rows = sum(int(client.xlen(s.key)) for s in streams)
    return pg_count(dsn) == rows and all(lag.synced for lag in sync_lag(client, streams))
