"""Processes that build one scope with different rates never flip-flop.

Each dimension gets the stricter of each setting in use (the smaller
capacity, the slower rate), every process that meets the other setting logs
one WARNING, and a laxer setting applies once nobody has used the stricter
one for a minute (lua/lib/rates.lua). Two limiters in one test stand for two
processes: they share nothing but Redis.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import cast

import pytest
import redis

from ratelimit import Budget, Limiter, Rate

_names = itertools.count()


def scope() -> str:
    """A name of its own: each process warns once per scope and setting."""
    return f"conflict-{time.monotonic_ns()}-{next(_names)}"


def age_the_stored_settings(r: redis.Redis, key: str) -> None:
    """As if no process had used the stored settings for more than their hold."""
    raw = r.get(key)
    assert isinstance(raw, bytes)
    tokens = raw.decode().split()
    for at in range(5, len(tokens), 7):  # <dim> <level> <rem> <rem_den> <ts> <seen> <setting>
        tokens[at] = "0"
    r.set(key, " ".join(tokens), keepttl=True)


def admitted(limiter: Limiter, tries: int) -> int:
    return sum(limiter.try_acquire() is not None for _ in range(tries))


def test_the_stricter_rate_applies_to_both_and_each_warns_once(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    name = scope()
    strict = Limiter(r, name, requests=Rate(10, per=1))
    lax = Limiter(r, name, requests=Rate(1000, per=1))
    caplog.set_level(logging.WARNING, logger="ratelimit")
    assert admitted(strict, 1) == 1  # the stricter process is in use
    # The laxer one gets the stricter capacity: 9 more, not 999 (a few refill meanwhile).
    assert admitted(lax, 50) <= 9 + 3
    assert lax.state().rate("requests").capacity == 10
    assert strict.state().rate("requests").capacity == 10
    warnings = [
        rec.getMessage() for rec in caplog.records if "configured differently" in rec.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "capacity 10, 10/s" in warnings[0]
    for _ in range(5):
        admitted(lax, 1)
        admitted(strict, 1)
    # The stricter side is told too, once: its rates hold for every process.
    stricter = [rec.getMessage() for rec in caplog.records if "are stricter" in rec.getMessage()]
    assert len(stricter) <= 1
    assert len([rec for rec in caplog.records if "configured differently" in rec.getMessage()]) == 1


def test_alternating_processes_stay_under_the_stricter_rate(r: redis.Redis) -> None:
    """Before: the admitted rate flipped with whichever process wrote last."""
    name = scope()
    strict = Limiter(r, name, requests=Rate(20, per=1))
    lax = Limiter(r, name, requests=Rate(2000, per=1))
    seconds, micros = r.time()
    start = seconds + micros / 1e6
    count = 0
    for _ in range(400):
        count += admitted(strict, 1) + admitted(lax, 1)
    seconds, micros = r.time()
    elapsed = seconds + micros / 1e6 - start
    assert count <= 20 + 20 * elapsed + 1


def test_a_laxer_rate_applies_once_the_stricter_is_no_longer_used(r: redis.Redis) -> None:
    name = scope()
    strict = Limiter(r, name, requests=Rate(2, per=60))
    assert admitted(strict, 1) == 1
    lax = Limiter(r, name, requests=Rate(100, per=60))
    assert admitted(lax, 10) == 1  # held to the stricter capacity of 2
    age_the_stored_settings(r, strict._scope.keys.rates)  # the strict process has gone
    state = lax.state().rate("requests")
    # Its own setting applies; the bucket keeps its level and refills at the laxer rate.
    assert state.capacity == 100
    assert state.rate_per_s == pytest.approx(100 / 60)
    assert state.available < 2


def test_a_process_without_a_dimension_keeps_the_others_bucket(r: redis.Redis) -> None:
    name = scope()
    both = Limiter(r, name, requests=Rate(100, per=60), tokens=Rate(1000, per=3600))
    assert both.try_acquire(tokens=900) is not None
    requests_only = Limiter(r, name, requests=Rate(100, per=60))
    for _ in range(5):
        assert requests_only.try_acquire() is not None
    # The tokens bucket the other process cannot see was written back as it was.
    assert both.state().rate("tokens").available == pytest.approx(100, abs=2)
    assert both.try_acquire(tokens=200) is None


def test_a_thousand_dead_permits_are_reclaimed_within_twenty_script_calls(
    r: redis.Redis,
) -> None:
    """A crashed pool's reservations do not hold a budget up for long."""
    # Leases long enough that none ends while the 1,000 are made (an acquire
    # reclaims what has ended as it goes), short enough to wait for.
    team = Limiter(r, scope(), usd=Budget(1000), lease_s=5)
    for _ in range(1000):
        assert team.try_acquire(usd="0.5") is not None
    leases_key = team._plan.parts[0].leases_key
    assert r.zcard(leases_key) == 1000
    latest = cast("list[tuple[bytes, float]]", r.zrange(leases_key, -1, -1, withscores=True))
    [(_, last_end)] = latest
    deadline = time.monotonic() + 30
    while True:  # until every lease has ended, by Redis time
        seconds, micros = r.time()
        if seconds * 1_000_000 + micros > last_end:
            break
        assert time.monotonic() < deadline, "the leases did not end by Redis time"
        time.sleep(0.05)
    r.config_resetstat()
    permit = team.acquire(usd="1")
    calls = int(r.info("commandstats")["cmdstat_evalsha"]["calls"])
    assert calls <= 20
    assert r.hlen(team._plan.parts[0].permits_key) == 1  # only the new permit
    state = team.state().budget("usd")
    assert state.spent == 500  # each dead reservation charged in full
    assert state.reserved == 1
    permit.cancel()
