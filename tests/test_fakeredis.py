"""fakeredis is a supported target: users test their own code with it.

These tests check the contract against fakeredis (with its Lua support);
correctness under load is proven against real servers elsewhere.
"""

from __future__ import annotations

import fakeredis
import fakeredis.aioredis
import pytest

import ratelimit.asyncio
from ratelimit import AcquireTimeout, Limiter, Rate


def test_sync_contract_on_fakeredis() -> None:
    limiter = Limiter(
        fakeredis.FakeRedis(), "q", requests=Rate(2, per=60), tokens=Rate(100, per=60)
    )
    permit = limiter.acquire(tokens=40)
    assert limiter.try_acquire(tokens=10) is not None
    assert limiter.try_acquire() is None
    with pytest.raises(AcquireTimeout):
        limiter.acquire(timeout=1)
    assert permit.settle(tokens=10).applied
    assert not permit.settle(tokens=10).applied
    assert limiter.state().rate("tokens").available == pytest.approx(80, abs=2)


def test_booked_wait_on_fakeredis() -> None:
    limiter = Limiter(fakeredis.FakeRedis(), "q", requests=Rate(20, per=1, burst=1))
    first = limiter.acquire()
    second = limiter.acquire(timeout=1)
    assert 0 < second.wait_s <= 0.05  # booked: the rest of 0.05 s after the first
    assert second.admitted_at_us > first.admitted_at_us


async def test_async_contract_on_fakeredis() -> None:
    client = fakeredis.aioredis.FakeRedis()
    limiter = ratelimit.asyncio.Limiter(client, "q", requests=Rate(1, per=60))
    permit = await limiter.acquire()
    assert await limiter.try_acquire() is None
    assert (await permit.cancel()).applied
    assert await limiter.try_acquire() is not None
