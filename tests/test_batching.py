"""Concurrent asyncio calls share pipelines: every caller still gets its own answer.

Many tasks on one event loop asking at once is the asyncio user's normal case
(``asyncio.gather`` over a batch of requests). Their script calls go out
together while one is on the wire, on at most one connection, and each caller
gets its own reply or error: no pool runs out, nothing is admitted twice or
left unmetered.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

import ratelimit.asyncio
from ratelimit import Budget, Rate, RedisUnavailable
from ratelimit.server import EmbeddedServer


async def test_a_thousand_concurrent_acquires_admit_exactly_the_quota(redis_url: str) -> None:
    limiter = ratelimit.asyncio.Limiter(redis_url, "gather", requests=Rate(5, per=60))
    results = await asyncio.gather(*(limiter.try_acquire() for _ in range(1000)))
    admitted = [p for p in results if p is not None]
    assert len(admitted) == 5
    assert all(p.backed for p in admitted)
    assert len({p.id for p in admitted}) == 5
    # One connection carried them all.
    client = limiter.client
    assert isinstance(client, redis.asyncio.Redis)
    pool = client.connection_pool
    assert len(pool._available_connections) + len(pool._in_use_connections) == 1


async def test_concurrent_budgeted_acquires_never_overspend(redis_url: str) -> None:
    limiter = ratelimit.asyncio.Limiter(redis_url, "team", usd=Budget("1"))
    results = await asyncio.gather(
        *(limiter.try_acquire(usd="0.3") for _ in range(200)), return_exceptions=True
    )
    admitted = [p for p in results if isinstance(p, ratelimit.asyncio.Permit)]
    assert len(admitted) == 3  # 3 x $0.30 fit in $1, a fourth does not
    settled = await asyncio.gather(*(p.settle(usd="0.25") for p in admitted))
    assert [s.status for s in settled] == ["settled"] * 3
    state = await limiter.state()
    assert state.budget("usd").spent == pytest.approx(0.75)


async def test_a_batch_reloads_scripts_the_server_lost(redis_url: str) -> None:
    limiter = ratelimit.asyncio.Limiter(redis_url, "flushed", requests=Rate(1000, per=3600))
    assert await limiter.try_acquire() is not None
    await limiter.client.script_flush()
    results = await asyncio.gather(*(limiter.try_acquire() for _ in range(50)))
    assert all(p is not None for p in results)
    state = await limiter.state()
    assert state.rate("requests").available == pytest.approx(1000 - 51, abs=0.5)


async def test_an_outage_reaches_every_caller_of_a_batch() -> None:
    server = EmbeddedServer().start()
    client = redis.asyncio.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    limiter = ratelimit.asyncio.Limiter(client, "outage", requests=Rate(1000, per=60))
    try:
        assert await limiter.try_acquire() is not None
        server.stop()
        results = await asyncio.gather(
            *(limiter.try_acquire() for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, RedisUnavailable) for r in results), results
    finally:
        server.stop()
        await client.aclose()


async def test_a_caller_cancelled_while_waiting_for_its_batch_is_left_out(redis_url: str) -> None:
    limiter = ratelimit.asyncio.Limiter(redis_url, "cancelled", requests=Rate(1000, per=60))
    tasks = [asyncio.create_task(limiter.try_acquire()) for _ in range(10)]
    await asyncio.sleep(0)  # the first is on the wire, the others queued
    for task in tasks[5:]:
        task.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    kept = [p for p in done if isinstance(p, ratelimit.asyncio.Permit)]
    assert len(kept) == 5
    state = await limiter.state()
    assert state.rate("requests").available == pytest.approx(1000 - 5, abs=0.5)
