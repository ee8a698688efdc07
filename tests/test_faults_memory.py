"""A server whose memory fills up: evicting policies, and ``noeviction``.

The issue measured, with ``maxmemory-policy volatile-lru`` and memory filled by
other keys: the quota's state was evicted, spend read 0, $1.90 was spent on a
$1 budget, nothing was logged, and ``spend()`` and the ledger disagreed. Now:

- the first use of a client logs a WARNING naming the eviction policy;
- under ``volatile-*`` the money's keys (budget, spend counters, ledger,
  alerts) have no TTL and are never evicted; rate buckets have TTLs and may
  restart full (documented);
- under ``allkeys-*`` a budget key may go: its spend is restored from what the
  client has seen (its floor), with an ERROR log, so the spend stays within
  the limit plus the reservations in flight when it went;
- under ``noeviction`` a full server refuses the first write of a script:
  ``RedisRefused``, even with ``on_redis_error="allow"``, and nothing changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from decimal import Decimal

import pytest
import redis
from topology import Server, fill_memory, maxmemory_server

from ratelimit import Budget, BudgetExceeded, Limiter, Rate, RedisRefused
from ratelimit.core.keys import ScopeKeys
from ratelimit.core.scope import OnRedisError

pytestmark = pytest.mark.slow

NAME = "memory"
KEYS = ScopeKeys(NAME, NAME)
MONEY_KEYS = (KEYS.budget, KEYS.spend, KEYS.ledger, KEYS.alerts)
#: Enough other keys evicted that anything evictable of ours would be: the
#: issue saw the quota's state go within the first ~750.
EVICTIONS = 2000
#: The most rounds of filling a test does (each writes until one eviction or OOM).
MAX_ROUNDS = 400


def limiter(client: redis.Redis, *, on_redis_error: OnRedisError = "raise") -> Limiter:
    return Limiter(
        client, NAME, requests=Rate(100, per=60), usd=Budget(1), on_redis_error=on_redis_error
    )


def evicted(server: Server) -> int:
    return int(server.info("stats")["evicted_keys"])


def fill_until(server: Server, done: Callable[[], bool], *, ttl_s: int | None) -> None:
    """Fill memory with other keys, round after round, until ``done()`` is true."""
    for round_ in range(MAX_ROUNDS):
        if done():
            return
        fill_memory(server, ttl_s=ttl_s, prefix=f"other:{round_}:")
    raise AssertionError(f"not done after {MAX_ROUNDS} rounds of filling")


def fill_to_out_of_memory(server: Server, client: redis.Redis) -> None:
    """Fill until even a small write is refused (OOM), with no request in flight.

    ``fill_memory`` stops at the first refusal of a pipelined batch, whose own
    query buffer counted in the memory used: once it is freed, small writes
    may fit again. Single small writes then bring it to the brink.
    """
    assert fill_memory(server, ttl_s=None, prefix="other:big:").out_of_memory
    for n in range(100_000):
        try:
            client.set(f"other:small:{n}", b"x" * 256)
        except redis.exceptions.OutOfMemoryError:
            break
    else:
        raise AssertionError("small writes never ran out of memory")
    # At the brink, a client's buffers shrinking (another connection's, such
    # as the one a limiter keeps) brings memory back under the limit: set the
    # limit a margin below what is used, so that every write stays refused.
    used = int(server.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 64 * 1024)


def spend_times(quota: Limiter, count: int) -> Decimal:
    """Acquire and settle $0.10, ``count`` times; what was spent."""
    for _ in range(count):
        quota.acquire(usd="0.1").settle(usd="0.1")
    return Decimal("0.1") * count


def spend_to_the_end(quota: Limiter, cost: str) -> Decimal:
    """Acquire and settle ``cost`` until the budget refuses; what was spent."""
    spent = Decimal(0)
    for _ in itertools.count():
        try:
            permit = quota.acquire(usd=cost)
        except BudgetExceeded:
            return spent
        permit.settle(usd=cost)
        spent += Decimal(cost)
    raise AssertionError("unreachable")


def counted(quota: Limiter) -> Decimal:
    return sum((sum(m.values(), Decimal(0)) for m in quota.spend().values()), Decimal(0))


def test_volatile_lru_never_evicts_the_money(caplog: pytest.LogCaptureFixture) -> None:
    with maxmemory_server("volatile-lru") as server:
        client = server.client()
        quota = limiter(client)
        spent = spend_times(quota, 5)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("eviction" in w and "volatile-lru" in w for w in warnings), warnings
        assert all(client.ttl(key) == -1 for key in MONEY_KEYS)  # exist, with no TTL

        base = evicted(server)
        fill_until(server, lambda: evicted(server) - base >= EVICTIONS, ttl_s=3600)

        assert all(client.exists(key) for key in MONEY_KEYS)
        assert quota.state().budget("usd").spent == spent
        entries = quota.ledger_entries()
        assert len(entries) == 5
        assert counted(quota) == sum((e.cost_usd for e in entries), Decimal(0)) == spent
        # The buckets (a TTL, so evictable) may have restarted full: documented.
        assert quota.state().rate("requests").available in (95.0, 100.0)
        # The budget still holds, to the nano-dollar.
        spent += spend_to_the_end(quota, "0.1")
        assert spent == Decimal(1)
        assert quota.state().budget("usd").spent == Decimal(1)
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        client.close()


def test_allkeys_lru_restores_an_evicted_budget_from_what_was_seen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with maxmemory_server("allkeys-lru") as server:
        client = server.client()
        quota = limiter(client)
        spent = spend_times(quota, 6)
        in_flight = quota.acquire(usd="0.1")  # its reservation goes with the budget key
        assert any("allkeys-lru" in r.getMessage() for r in caplog.records)

        fill_until(server, lambda: not client.exists(KEYS.budget), ttl_s=None)

        in_flight.settle(usd="0.1")  # the call was made: it cost its reservation
        spent += Decimal("0.1") + spend_to_the_end(quota, "0.1")
        # Never more than the limit plus what was in flight when the key went.
        assert spent <= Decimal(1) + Decimal("0.1"), spent
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) >= 1
        assert "lost its spend" in errors[0]
        assert "restored a floor of $0.6" in errors[0]
        raw = client.get(KEYS.budget)
        assert isinstance(raw, bytes)
        assert int(raw.split(b" ")[7]) > 0  # Redis remembers that it lost it
        client.close()


def test_noeviction_refuses_at_acquire_and_loses_nothing() -> None:
    with maxmemory_server("noeviction") as server:
        client = server.client()
        quota = limiter(client, on_redis_error="allow")
        quota.acquire(usd="0.1").settle(usd="0.1")
        held = quota.acquire(usd="0.2")
        ours = sorted(client.scan_iter(match="rl:v2:*"))
        before = {key: client.dump(key) for key in ours}

        fill_to_out_of_memory(server, client)
        for attempt in (quota.try_acquire, quota.acquire):
            with pytest.raises(RedisRefused, match="out of memory") as caught:
                attempt(usd="0.1")
            assert caught.value.__cause__ is not None
        with pytest.raises(RedisRefused):
            held.settle(usd="0.15")
        # Refused at the first write: every key of ours is as it was.
        assert sorted(client.scan_iter(match="rl:v2:*")) == ours
        assert {key: client.dump(key) for key in ours} == before
        state = quota.state()  # reading needs no memory
        assert (state.budget("usd").spent, state.budget("usd").reserved) == (
            Decimal("0.1"),
            Decimal("0.2"),
        )

        for key in client.scan_iter(match="other:*", count=1000):
            client.delete(key)
        memory = server.info("memory")
        assert memory["used_memory"] < memory["maxmemory"], memory["used_memory"]
        assert quota.try_acquire(usd="0.1") is not None
        assert held.settle(usd="0.15").applied  # the permit was kept, and counts once
        budget = quota.state().budget("usd")
        assert (budget.spent, budget.reserved) == (Decimal("0.25"), Decimal("0.1"))
        assert len(quota.ledger_entries()) == 2
        client.close()
