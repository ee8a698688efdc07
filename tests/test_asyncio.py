"""ratelimit.asyncio.Limiter: the same contract as the sync client, awaitable."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import redis.asyncio

import ratelimit
import ratelimit.asyncio
from ratelimit import AcquireTimeout, InvalidArgument, Rate, UnknownDimension
from ratelimit.asyncio import Limiter


def test_namespaces_mirror_each_other() -> None:
    for name in ("Limiter", "Permit"):
        assert hasattr(ratelimit, name)
        assert hasattr(ratelimit.asyncio, name)
    sync_api = {n for n in dir(ratelimit.Limiter) if not n.startswith("_")}
    async_api = {n for n in dir(ratelimit.asyncio.Limiter) if not n.startswith("_")}
    assert sync_api == async_api
    sync_permit = {n for n in dir(ratelimit.Permit) if not n.startswith("_")}
    async_permit = {n for n in dir(ratelimit.asyncio.Permit) if not n.startswith("_")}
    assert sync_permit == async_permit


async def test_reserve_settle_and_state(ar: redis.asyncio.Redis) -> None:
    limiter = Limiter(ar, "q", requests=Rate(10, per=3600), tokens=Rate(1000, per=3600))
    permit = await limiter.acquire(tokens=500, timeout=1)
    assert (await permit.settle(tokens=200)).applied
    assert not (await permit.settle(tokens=0)).applied
    state = await limiter.state()
    assert state["requests"].available == pytest.approx(9, abs=0.01)
    assert state["tokens"].available == pytest.approx(800, abs=2)


async def test_try_acquire_and_timeout(ar: redis.asyncio.Redis) -> None:
    limiter = Limiter(ar, "q", requests=Rate(1, per=10))
    assert await limiter.try_acquire() is not None
    assert await limiter.try_acquire() is None
    with pytest.raises(AcquireTimeout) as caught:
        await limiter.acquire(timeout=1)
    assert 9 < caught.value.retry_after <= 10


async def test_waiters_are_booked_and_go_in_order(ar: redis.asyncio.Redis) -> None:
    limiter = Limiter(ar, "q", requests=Rate(20, per=1, burst=1))
    permits = await asyncio.gather(*(limiter.acquire(timeout=5) for _ in range(5)))
    admitted = sorted(p.admitted_at_us for p in permits)
    gaps = [b - a for a, b in itertools.pairwise(admitted)]
    assert all(gap >= 50_000 for gap in gaps)


async def test_cancelled_task_returns_its_booking(ar: redis.asyncio.Redis) -> None:
    limiter = Limiter(ar, "q", requests=Rate(1, per=10))
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire(timeout=30))
    for _ in range(100):
        if (await limiter.state()).rate("requests").available < -0.5:
            break
        await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (await limiter.state()).rate("requests").available == pytest.approx(0, abs=0.1)


async def test_context_manager_cancels_on_exception(ar: redis.asyncio.Redis) -> None:
    limiter = Limiter(ar, "q", tokens=Rate(100, per=3600))
    with pytest.raises(RuntimeError):
        async with await limiter.acquire(tokens=70):
            raise RuntimeError("the call never went out")
    assert (await limiter.state()).rate("tokens").available == pytest.approx(100, abs=0.1)


async def test_bad_input_writes_nothing(ar: redis.asyncio.Redis) -> None:
    limiter = Limiter(ar, "q", tokens=Rate(100, per=60))
    with pytest.raises(InvalidArgument):
        await limiter.acquire(tokens=-1)
    with pytest.raises(UnknownDimension):
        await limiter.try_acquire(bogus=1)
    assert await ar.dbsize() == 0


async def test_url_client_and_sync_interplay(redis_url: str) -> None:
    async_limiter = Limiter(redis_url, "shared", requests=Rate(3, per=3600))
    sync_limiter = ratelimit.Limiter(redis_url, "shared", requests=Rate(3, per=3600))
    await async_limiter.acquire()
    sync_limiter.acquire()
    await async_limiter.acquire()
    assert sync_limiter.try_acquire() is None
    assert await async_limiter.try_acquire() is None
