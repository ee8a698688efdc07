"""Failover: a primary that loses its place refuses instead of admitting, and the
limiter finds the new one; the bounds measured by benchmarks/bench_failover.py.

The issue measured, with ``SENTINEL FAILOVER`` and long-lived workers: the old
primary kept taking writes for ~10 s while new processes found the new one,
2,000 admitted against a bound of 1,100. What holds now:

- a primary without enough replicas (``min-replicas-to-write``) or a replica
  refuses the write: ``RedisRefused`` after the limiter's retries, never
  admitted unmetered, nothing written;
- a call refused in a failover reconnects before it tries again, so a pool
  that still held a connection to the demoted primary finds the new one;
- across real failovers (a replica promoted by hand, Sentinel on a switch
  and on a SIGKILL, a cluster losing a primary), four worker processes are
  each admitted, refused, or told ``RedisRefused``/``RedisUnavailable``,
  nothing else, nothing unmetered; and where the old primary cannot admit
  beside the new one (it is dead, or ``min-replicas-to-write`` makes it
  refuse once its replicas have left), no window of time admits more than
  one burst beyond ``burst + rate * window``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from bench_helpers import BENCHMARKS
from topology import ServerFactory

import ratelimit.asyncio
import ratelimit.backend
from ratelimit import Budget, Limiter, Rate, RedisRefused

MIN_REPLICAS = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")


@pytest.fixture
def short_failover_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failover's retries give up after 0.3 s instead of 10 (the refusal is the point)."""
    monkeypatch.setattr(ratelimit.backend, "FAILOVER_WAIT_S", 0.3)


def quota(client: str | redis.Redis) -> Limiter:
    return Limiter(
        client, "failover", requests=Rate(10, per=1), usd=Budget(1), on_redis_error="allow"
    )


@pytest.mark.usefixtures("short_failover_wait")
def test_a_primary_without_its_replicas_refuses_instead_of_admitting(
    start_server: ServerFactory,
) -> None:
    stale = start_server(*MIN_REPLICAS)  # a primary whose replicas went to the new one
    limiter = quota(stale.url)
    for call in (limiter.try_acquire, limiter.acquire):
        with pytest.raises(RedisRefused) as caught:
            call(usd="0.5")
        assert "NOREPLICAS" in str(caught.value.__cause__)
    assert stale.admin.dbsize() == 0  # refused at the first write


@pytest.mark.usefixtures("short_failover_wait")
async def test_a_replica_refuses_instead_of_admitting(start_server: ServerFactory) -> None:
    primary = start_server()
    replica = start_server()
    replica.replicaof(primary)
    with pytest.raises(RedisRefused) as caught:
        quota(replica.url).try_acquire(usd="0.5")
    assert isinstance(caught.value.__cause__, redis.exceptions.ReadOnlyError)
    async_limiter = ratelimit.asyncio.Limiter(
        replica.url, "failover", requests=Rate(10), usd=Budget(1), on_redis_error="allow"
    )
    with pytest.raises(RedisRefused):
        await async_limiter.try_acquire(usd="0.5")
    await async_limiter.client.aclose()
    assert primary.admin.dbsize() == replica.admin.dbsize() == 0


class Directory:
    """Where the primary is: what a Sentinel (or a DNS name, a virtual IP) answers."""

    port = 0


class LookedUp(redis.Connection):
    """A connection that asks where the primary is each time it connects, as a
    Sentinel-managed one does."""

    def connect(self) -> None:
        self.port = Directory.port
        super().connect()  # type: ignore[no-untyped-call]


class AsyncLookedUp(redis.asyncio.Connection):
    """Asyncio twin of :class:`LookedUp`."""

    async def connect(self) -> None:
        self.port = Directory.port
        await super().connect()  # type: ignore[no-untyped-call]


def test_a_retry_in_a_failover_reconnects_and_finds_the_new_primary(
    start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool holds a connection to the old primary, which refuses: the retry
    reconnects, and so reaches the new primary."""
    old = start_server(*MIN_REPLICAS)
    new = start_server()
    monkeypatch.setattr(Directory, "port", old.port)
    pool = redis.ConnectionPool(connection_class=LookedUp, host="127.0.0.1", socket_timeout=5)
    client = redis.Redis(connection_pool=pool)
    limiter = quota(client)
    assert client.ping()  # a connection to the old primary, idle in the pool
    monkeypatch.setattr(Directory, "port", new.port)  # the switch

    permit = limiter.try_acquire(usd="0.5")
    assert permit is not None
    assert permit.backed
    assert old.admin.dbsize() == 0
    assert new.admin.dbsize() > 0
    client.close()


async def test_an_asyncio_retry_in_a_failover_reconnects(
    start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = start_server(*MIN_REPLICAS)
    new = start_server()
    monkeypatch.setattr(Directory, "port", old.port)
    pool = redis.asyncio.ConnectionPool(
        connection_class=AsyncLookedUp, host="127.0.0.1", socket_timeout=5
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    limiter = ratelimit.asyncio.Limiter(client, "failover", usd=Budget(1), on_redis_error="allow")
    assert await client.ping()
    monkeypatch.setattr(Directory, "port", new.port)
    permit = await limiter.try_acquire(usd="0.5")
    assert permit is not None
    assert permit.backed
    assert old.admin.dbsize() == 0
    assert new.admin.dbsize() > 0
    await client.aclose()


# -- the measure -----------------------------------------------------------------------------


def bench_failover(monkeypatch: pytest.MonkeyPatch) -> Any:
    """benchmarks/bench_failover.py as a module (it imports its neighbours by name)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("bench_failover")


def test_over_admission_is_the_worst_window(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = bench_failover(monkeypatch)
    rate = Rate(200, per=1, burst=20)  # one admission every 5 ms, 20 at once
    steady = [i * 5000 for i in range(200)]
    assert bench.over_admitted(steady, rate) == 0
    assert bench.over_admitted([0] * 20 + steady[1:], rate) == 0  # a burst, then the rate
    assert bench.over_admitted([0] * 21, rate) == 1
    # Two primaries at the full rate for the same second: 400 where 20 + 199 fit.
    assert bench.over_admitted(sorted(steady + steady), rate) == 400 - (20 + 199)
    # ... or for its second half only: 200 in 0.495 s, where 20 + 99 fit.
    assert bench.over_admitted(sorted(steady + steady[100:]), rate) == 200 - (20 + 99)
    # After a quiet second the bucket is full again: a burst is no excess.
    assert bench.over_admitted([0, *([1_000_000] * 20)], rate) == 0
    assert bench.longest_gap_s([0, 5000, 1_005_000]) == 1.0


@pytest.mark.slow
def test_failovers_admit_within_their_bounds(tmp_path: Path) -> None:
    saved = tmp_path / "failover.json"
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_failover.py"), "--quick", "--json", str(saved)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "over-admitted" in run.stdout
    cases = {case["case"]: case for case in json.loads(saved.read_text())["cases"]}
    assert set(cases) == {
        "replica-kill",
        "sentinel-failover",
        "sentinel-failover-min-replicas",
        "sentinel-kill",
        "sentinel-kill-min-replicas",
        "cluster-kill",
    }
    for name, case in cases.items():
        # Every call was admitted, refused by the bucket, or raised RedisRefused or
        # RedisUnavailable (on_redis_error="raise"): nothing else, nothing unmetered.
        assert case["other_errors"] == [], (name, case["other_errors"])
        assert case["unmetered"] == 0, name
        assert case["admitted"] > 0, name
        if name != "sentinel-failover":
            # The two primaries never admit at the same time; the new one may miss
            # what the old took last, and a bucket holds at most a burst of it.
            assert case["over_admitted"] <= case["burst"], (name, case)
    for name in ("sentinel-failover", "sentinel-failover-min-replicas"):
        # The old primary stays reachable: nothing for on_redis_error to decide.
        assert cases[name]["unavailable"] == 0, cases[name]
