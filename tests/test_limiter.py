"""The public contract of the sync Limiter, against a real server."""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import Any

import pytest
import redis

from ratelimit import (
    AcquireTimeout,
    Budget,
    CostExceedsCapacity,
    InvalidArgument,
    InvalidArgumentType,
    Limiter,
    LimiterError,
    Rate,
    UnknownDimension,
)
from ratelimit.core.base import clock_us
from ratelimit.core.calls import ScriptCall
from ratelimit.core.replies import full_reply


def micro(limiter: Limiter, dimension: str) -> int:
    """A rate dimension's level in micro-units."""
    return limiter.state().rate(dimension).available_micro


def sonnet(r: redis.Redis, name: str = "anthropic/sonnet") -> Limiter:
    return Limiter(
        r,
        name,
        requests=Rate(4000, per=60),
        input_tokens=Rate(2_000_000, per=60),
        output_tokens=Rate(400_000, per=60),
    )


def test_quickstart_reserve_then_settle(r: redis.Redis) -> None:
    limiter = sonnet(r)
    permit = limiter.acquire(input_tokens=1200, output_tokens=1024, timeout=30)
    assert permit.wait_s == 0
    assert permit.reserved == {
        "requests": Decimal(1),
        "input_tokens": Decimal(1200),
        "output_tokens": Decimal(1024),
    }
    before = limiter.state()
    assert before.rate("input_tokens").available == pytest.approx(2_000_000 - 1200, abs=2000)
    assert permit.settle(input_tokens=1100, output_tokens=310).applied
    after = limiter.state()
    # 100 input and 714 output tokens came back (plus a few milliseconds of refill).
    assert after.rate("output_tokens").available - before.rate("output_tokens").available >= 714
    assert after.rate("requests").capacity == 4000
    assert after.rate("requests").rate_per_s == pytest.approx(4000 / 60)


def test_second_settle_changes_nothing_also_from_another_client(
    r: redis.Redis, redis_url: str
) -> None:
    limiter = Limiter(r, "q", tokens=Rate(100, per=3600))
    permit = limiter.acquire(tokens=50)
    assert permit.settle(tokens=10).status == "settled"
    level = micro(limiter, "tokens")
    other = Limiter(redis.Redis.from_url(redis_url), "q", tokens=Rate(100, per=3600))
    assert other.settle(permit.id, tokens=0).status == "unknown"
    assert permit.settle(tokens=0).status == "unknown"
    assert permit.cancel().status == "unknown"
    assert micro(limiter, "tokens") - level < 10**5  # refill, no refund


def test_settle_above_reservation_goes_into_debt(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", tokens=Rate(100, per=3600))
    permit = limiter.acquire(tokens=90)
    permit.settle(tokens=150)
    assert limiter.state().rate("tokens").available == pytest.approx(-50, abs=0.1)
    with pytest.raises(AcquireTimeout) as caught:
        limiter.acquire(tokens=1, timeout=1)
    # 51 tokens at 100/h: about 1836 s.
    assert caught.value.retry_after == pytest.approx(51 * 36, rel=0.01)


def test_requests_cost_one_unless_told(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", requests=Rate(10, per=3600), tokens=Rate(10, per=3600))
    limiter.try_acquire()
    limiter.try_acquire(requests=3)
    state = limiter.state()
    assert state.rate("requests").available == pytest.approx(6, abs=0.01)
    assert state.rate("tokens").available == 10


def test_try_acquire_never_waits_and_consumes_nothing_when_refused(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", requests=Rate(2, per=3600))
    assert limiter.try_acquire() is not None
    assert limiter.try_acquire() is not None
    started = time.monotonic()
    assert limiter.try_acquire() is None
    assert time.monotonic() - started < 0.5
    assert limiter.state().rate("requests").available == pytest.approx(0, abs=0.01)


def test_acquire_waits_its_booked_turn(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", requests=Rate(10, per=1, burst=1))
    first = limiter.acquire()
    started = time.monotonic()
    second = limiter.acquire(timeout=5)
    waited = time.monotonic() - started
    assert 0 < second.wait_s <= 0.1  # booked: the rest of 0.1 s after the first
    assert waited >= second.wait_s
    assert second.admitted_at_us - first.admitted_at_us >= 100_000


def test_acquire_timeout_raises_at_once_and_consumes_nothing(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", requests=Rate(1, per=10))
    limiter.acquire()
    level = micro(limiter, "requests")
    started = time.monotonic()
    with pytest.raises(AcquireTimeout) as caught:
        limiter.acquire(timeout=2)
    assert time.monotonic() - started < 0.5
    assert 9 < caught.value.retry_after <= 10
    assert isinstance(caught.value, LimiterError)
    assert micro(limiter, "requests") - level < 100_000


def test_cancel_returns_a_booking_still_in_line(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", requests=Rate(1, per=10))
    limiter.acquire()
    booked = limiter._book({}, 30, None, None).permit  # booked 10 s ahead, not slept
    assert booked is not None
    assert limiter.state().rate("requests").available < -0.9
    assert limiter.cancel(booked.id).applied
    assert limiter.state().rate("requests").available == pytest.approx(0, abs=0.1)


def test_permit_context_manager_cancels_on_exception(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", tokens=Rate(100, per=3600))
    with pytest.raises(RuntimeError), limiter.acquire(tokens=60):
        raise RuntimeError("the call never went out")
    assert limiter.state().rate("tokens").available == pytest.approx(100, abs=0.1)
    with limiter.acquire(tokens=60) as permit:
        permit.settle(tokens=20)
    assert limiter.state().rate("tokens").available == pytest.approx(80, abs=0.1)


def test_recreating_a_quota_applies_new_rates(r: redis.Redis) -> None:
    Limiter(r, "q", requests=Rate(100, per=60)).acquire(requests=50)
    smaller = Limiter(r, "q", requests=Rate(10, per=60))
    state = smaller.state().rate("requests")
    assert state.capacity == 10
    assert state.available == 10  # 50 left, capped at the new capacity
    assert smaller.try_acquire(requests=10) is not None
    assert smaller.try_acquire() is None


def test_idle_quota_expires(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", requests=Rate(1000, per=1), tokens=Rate(1000, per=1))
    limiter.acquire(requests=5, tokens=10).settle()
    ttl_ms = r.pttl(limiter._scope.keys.rates)
    assert 0 < ttl_ms <= 20
    time.sleep(0.05)
    assert r.exists(limiter._scope.keys.rates) == 0  # EXISTS also reaps a lazily expired key


def test_all_keys_of_a_quota_share_one_hash_tag(r: redis.Redis) -> None:
    limiter = Limiter(r, "weird {name}", requests=Rate(1, per=3600))
    limiter.acquire().settle()
    keys = [k.decode() for k in r.keys("*") if isinstance(k, bytes)]
    assert len(keys) == 2  # the buckets and the settled permit's marker
    tags = {k[k.index("{") + 1 : k.index("}")] for k in keys}
    assert tags == {"weird %7Bname%7D"}


def test_noscript_recovers_after_script_flush(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", requests=Rate(10, per=60))
    limiter.acquire()
    r.script_flush()
    assert limiter.acquire().settle().applied
    assert limiter.state().rate("requests").available == pytest.approx(8, abs=0.5)


def replayed(limiter: Limiter, **costs: Any) -> tuple[list[Any], list[Any]]:
    """One acquire's script call sent twice, as after a reply lost to a timeout."""
    call = next(limiter._plan.acquire(costs, None, model=None, tags=None, clock_us=clock_us()))
    assert isinstance(call, ScriptCall)
    script = limiter._scripts[call.script]
    first, again = (script(keys=call.keys, args=call.args) for _ in range(2))
    return list(full_reply(call.script, first)), list(full_reply(call.script, again))


def test_a_retried_rate_only_acquire_books_again_and_never_over_admits(r: redis.Redis) -> None:
    """Redis keeps nothing of a permit without a budget, so it cannot tell a
    replay from a new call: the lost booking stays spent until it refills."""
    limiter = Limiter(r, "q", requests=Rate(10, per=3600))
    first, again = replayed(limiter)
    assert first[0] == again[0] == 1
    assert limiter.state().rate("requests").available == pytest.approx(8, abs=0.01)


def test_a_retried_budgeted_acquire_with_the_same_id_books_once(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", requests=Rate(10, per=3600), usd=Budget(1))
    first, again = replayed(limiter, usd="0.25")
    assert first[0] == again[0] == 1
    state = limiter.state()
    assert state.rate("requests").available == pytest.approx(9, abs=0.01)
    assert state.budget("usd").reserved == Decimal("0.25")


def test_a_rate_only_permit_settles_within_its_lease(r: redis.Redis) -> None:
    """Its settle window is its lease: later, a settle changes nothing."""
    limiter = Limiter(r, "q", tokens=Rate(100, per=3600), lease_s=0.05)
    permit = limiter.acquire(tokens=40)
    time.sleep(0.1)
    assert permit.settle(tokens=0).status == "unknown"
    assert limiter.state().rate("tokens").available == pytest.approx(60, abs=0.1)


def test_a_reclaimed_permit_cannot_be_settled(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", tokens=Rate(100, per=3600), usd=Budget(1), lease_s=0.05)
    late = limiter.acquire(tokens=10, usd="0.1")
    time.sleep(0.1)
    # Past its lease but not reclaimed yet: the actual cost still applies.
    assert late.settle(tokens=0, usd=0).status == "settled"
    permit = limiter.acquire(tokens=40, usd="0.1")
    time.sleep(0.1)
    limiter.try_acquire(usd=0)  # any later call reclaims what outlived its lease
    assert permit.settle(tokens=0, usd=0).status == "unknown"
    state = limiter.state()
    assert state.rate("tokens").available == pytest.approx(60, abs=0.1)
    assert state.budget("usd").spent == Decimal("0.1")  # reclaimed: charged in full


BAD_COSTS: list[tuple[object, type[Exception]]] = [
    (-1, InvalidArgument),
    (math.nan, InvalidArgument),
    (math.inf, InvalidArgument),
    (-math.inf, InvalidArgument),
    (True, InvalidArgumentType),
    ("5", InvalidArgumentType),
    (None, InvalidArgumentType),
    (10**30, CostExceedsCapacity),
    (101, CostExceedsCapacity),
]


@pytest.mark.parametrize(("cost", "error"), BAD_COSTS)
def test_bad_costs_raise_typed_errors_and_write_nothing(
    r: redis.Redis, cost: object, error: type[Exception]
) -> None:
    limiter = Limiter(r, "q", tokens=Rate(100, per=60))
    for call in (limiter.try_acquire, limiter.acquire):
        with pytest.raises(error):
            call(tokens=cost)
    assert r.dbsize() == 0


def test_bad_settle_raises_and_writes_nothing(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", tokens=Rate(100, per=60))
    permit = limiter.acquire(tokens=10)
    snapshot = {k: r.dump(k) for k in r.keys("*")}
    for bad in (-1, math.nan, "3", False):
        with pytest.raises(InvalidArgument):
            permit.settle(tokens=bad)
    with pytest.raises(UnknownDimension):
        permit.settle(bogus=1)
    with pytest.raises(InvalidArgument):
        limiter.settle("", tokens=1)
    assert {k: r.dump(k) for k in r.keys("*")} == snapshot


def test_unknown_dimension_and_bad_timeout(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", tokens=Rate(100, per=60))
    with pytest.raises(UnknownDimension):
        limiter.acquire(output_tokens=5)
    with pytest.raises(InvalidArgument):
        limiter.acquire(tokens=1, timeout=-1)
    with pytest.raises(InvalidArgumentType):
        limiter.acquire(tokens=1, timeout="1")  # type: ignore[arg-type]
    assert r.dbsize() == 0


@pytest.mark.parametrize(
    "build",
    [
        lambda r: Limiter(r, "", requests=Rate(1)),
        lambda r: Limiter(r, 5, requests=Rate(1)),  # type: ignore[arg-type]
        lambda r: Limiter(r, "q"),
        lambda r: Limiter(r, "q", requests=5),
        lambda r: Limiter(r, "q", timeout=Rate(1)),
        lambda r: Limiter(r, "q", requests=Rate(1), on_redis_error="ignore"),  # type: ignore[arg-type]
        lambda r: Limiter(r, "q", requests=Rate(1), lease_s=0),
        lambda r: Limiter(r, "q", requests=Rate(1), slot=""),
    ],
)
def test_bad_limiter_arguments(r: redis.Redis, build: object) -> None:
    with pytest.raises(InvalidArgument):
        build(r)  # type: ignore[operator]


@pytest.mark.parametrize(
    "args",
    [(0,), (-1,), (math.nan,), (math.inf,), (1, 0), (1, -5), (1, math.inf), (1, 1, 0), (True,)],
)
def test_rates_must_be_finite_and_positive(args: tuple[float, ...]) -> None:
    with pytest.raises(InvalidArgument):
        Rate(*args)


def test_rate_fractions_are_exact_or_rounded_down() -> None:
    assert Rate(2_000_000, per=60).refill_fraction() == (100_000, 3)
    assert Rate(0.5, per=1).refill_fraction() == (1, 2)
    num, den = Rate(1 / 3, per=7.1).refill_fraction()
    assert num * den < 2**50
    assert num / den <= (1 / 3) / 7.1
    assert num / den == pytest.approx((1 / 3) / 7.1, rel=1e-6)


def test_url_client(redis_url: str) -> None:
    limiter = Limiter(redis_url, "q", requests=Rate(5, per=60))
    assert limiter.acquire().settle().applied


def test_settle_passes_the_providers_figures_on_in_the_same_call(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", requests=Rate(100, per=3600), tokens=Rate(1000, per=3600))
    limiter.acquire(tokens=0).settle()  # the settle script is loaded (NOSCRIPT is done)
    permit = limiter.acquire(tokens=300)
    r.config_resetstat()
    settled = permit.settle(tokens=100, remaining={"tokens": 400, "requests": 97})
    assert settled.applied
    # One script call: the refund, then the provider's lower figure for tokens.
    assert r.info("commandstats")["cmdstat_evalsha"]["calls"] == 1
    state = limiter.state()
    assert state.rate("tokens").available == pytest.approx(400, abs=1)
    assert state.rate("requests").available == pytest.approx(97, abs=0.1)
    with pytest.raises(UnknownDimension):
        limiter.settle(permit.id, remaining={"bogus": 1})
    with pytest.raises(InvalidArgument):
        limiter.settle(permit.id, remaining={"tokens": -1})


def test_tag_names_must_be_strings(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", tokens=Rate(100, per=60))
    with pytest.raises(InvalidArgumentType, match="tag names must be strings, got 1"):
        limiter.acquire(tokens=1, tags={1: "a"})  # type: ignore[dict-item]
    assert r.dbsize() == 0
    assert limiter.acquire(tokens=1, tags={"user": 1, "team": ["a", "b"]}).backed
