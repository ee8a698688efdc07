"""Waiting is a line: first booked, first admitted, whatever each one costs.

One bucket refilling 16 tokens per second (den = 1, so every wait is an exact
number of microseconds: a token takes 62 500 us) is drained, then waiters with
different costs join one at a time. Each is admitted exactly when the tokens
for everyone before it and for itself have refilled. A waiter that leaves the
end of the line gives its tokens back; one that leaves from the middle does
not (they stay spent: a newcomer handed them could be squeezed in just before
those booked behind it, more than the bucket holds), and nobody moves.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import pytest
import redis
import redis.asyncio

import ratelimit.asyncio
from ratelimit import AcquireTimeout, Limiter, Permit, Rate
from ratelimit.core.calls import ScriptCall

RATE = Rate(16, per=1, burst=10)
US_PER_TOKEN = 62_500  # 1e6 / 16, exact: the rate's fraction is 16/1 micro-units per us


def server_us(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return seconds * 1_000_000 + micros


def count_bookings(limiter: Limiter | ratelimit.asyncio.Limiter) -> list[object]:
    """Each booking the limiter makes from now on, appended as its script call returns.

    Redis keeps nothing of a permit without a budget, so the test watches the
    booking itself: a waiter is in line once its one script call has returned.
    """
    booked: list[object] = []
    plan = limiter._plan
    book, quick = plan.acquire, plan.quick_result

    def counted(*args: Any, **kwargs: Any) -> Any:
        booking = yield from book(*args, **kwargs)
        booked.append(booking)
        return booking

    def quick_counted(*args: Any, **kwargs: Any) -> Any:
        booking = quick(*args, **kwargs)
        booked.append(booking)
        return booking

    plan.acquire = counted  # type: ignore[method-assign]
    plan.quick_result = quick_counted  # type: ignore[method-assign]
    return booked


def wait_for_bookings(booked: list[object], count: int) -> None:
    """Until ``count`` bookings were made."""
    deadline = time.monotonic() + 10
    while len(booked) < count:
        assert time.monotonic() < deadline, "a waiter never booked"
        time.sleep(0.002)


def level_and_time(limiter: Limiter) -> tuple[int, int]:
    """The tokens level (micro-units) and the server time it was read at."""
    call = next(limiter._plan.state(0))
    assert isinstance(call, ScriptCall)
    reply = limiter._scripts["state"](keys=call.keys, args=call.args)
    return int(reply[3][0][0]), int(reply[1])


def book(limiter: Limiter, tokens: int) -> Permit:
    """A place in line without sleeping in it."""
    booking = limiter._book({"tokens": tokens}, None, None, None)
    assert booking.permit is not None
    assert isinstance(booking.permit, Permit)
    return booking.permit


@dataclass
class Waiter:
    """One thread in ``acquire``, and what it saw when it came out."""

    tokens: int
    permit: Permit | None = None
    returned: float = 0.0  # time.monotonic() when acquire returned
    went_ahead_us: int = 0  # server time read right after
    error: BaseException | None = None


def start_waiter(r: redis.Redis, limiter: Limiter, waiter: Waiter) -> threading.Thread:
    def run() -> None:
        try:
            waiter.permit = limiter.acquire(timeout=30, tokens=waiter.tokens)
            waiter.returned = time.monotonic()
            waiter.went_ahead_us = server_us(r)
        except BaseException as exc:
            waiter.error = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_waiters_are_admitted_in_arrival_order_whatever_they_cost(r: redis.Redis) -> None:
    limiter = Limiter(r, "line", tokens=RATE)
    drained = limiter.acquire(tokens=10)
    booked = count_bookings(limiter)
    waiters = [Waiter(tokens) for tokens in (7, 1, 5, 2, 9, 1)]
    threads = []
    for k, waiter in enumerate(waiters):
        threads.append(start_waiter(r, limiter, waiter))
        wait_for_bookings(booked, k + 1)
    for thread in threads:
        thread.join(timeout=30)
    assert [w.error for w in waiters] == [None] * len(waiters)
    permits = [w.permit for w in waiters if w.permit is not None]
    assert len(permits) == len(waiters)

    # Each is admitted the moment its own tokens are back after everyone
    # ahead: exactly its cost after the one before, to the microsecond.
    admitted = [drained.admitted_at_us] + [p.admitted_at_us for p in permits]
    gaps = [b - a for a, b in itertools.pairwise(admitted)]
    assert gaps == [w.tokens * US_PER_TOKEN for w in waiters]
    # Nobody went ahead before its time, and they came out in the same order
    # (at least 62.5 ms apart, far more than thread wake-up jitter).
    assert all(w.went_ahead_us >= p.admitted_at_us for w, p in zip(waiters, permits, strict=True))
    returned = [w.returned for w in waiters]
    assert returned == sorted(returned)


def test_a_large_request_is_not_starved_by_small_ones(r: redis.Redis) -> None:
    limiter = Limiter(r, "line", tokens=RATE)
    drained = limiter.acquire(tokens=10)
    big = Waiter(9)
    booked = count_bookings(limiter)
    thread = start_waiter(r, limiter, big)
    wait_for_bookings(booked, 1)
    # A stream of 1-token requests while the big one waits: none gets in
    # ahead of it (each would need tokens the big one has booked), and those
    # that book a place are put behind it.
    tries = 0
    small_admitted: list[Permit] = []
    small_booked: list[Permit] = []
    while thread.is_alive():
        tries += 1
        permit = limiter.try_acquire(tokens=1)
        if permit is not None:  # only possible once the line has cleared
            small_admitted.append(permit)
        if len(small_booked) < 3:
            small_booked.append(book(limiter, 1))
    thread.join()
    assert big.error is None
    assert big.permit is not None
    assert tries > 10
    assert all(p.admitted_at_us > big.permit.admitted_at_us for p in small_admitted)
    assert big.permit.admitted_at_us == drained.admitted_at_us + 9 * US_PER_TOKEN
    assert [p.admitted_at_us - big.permit.admitted_at_us for p in small_booked] == [
        US_PER_TOKEN,
        2 * US_PER_TOKEN,
        3 * US_PER_TOKEN,
    ]
    assert big.went_ahead_us >= big.permit.admitted_at_us


def bucket_of(raw: bytes | str | None) -> str:
    """The tokens bucket in a stored rates string, as "level rem den ts" (lib/bucket.lua)."""
    assert isinstance(raw, bytes)
    tokens = raw.decode().split()
    name, level, rem, rem_den, ts = tokens[:5]
    assert name == "tokens"
    return f"{level} {rem} {rem_den} {ts}"


def stored(r: redis.Redis, limiter: Limiter) -> str:
    """The tokens bucket as stored (lib/rates.lua)."""
    return bucket_of(r.get(limiter._scope.keys.rates))


def test_a_booking_cancelled_in_the_middle_of_the_line_keeps_its_tokens_spent(
    r: redis.Redis,
) -> None:
    limiter = Limiter(r, "line", tokens=RATE)
    limiter.acquire(tokens=10)
    first, middle, last = book(limiter, 3), book(limiter, 5), book(limiter, 2)
    bucket = stored(r, limiter)
    before, before_us = level_and_time(limiter)
    assert middle.cancel().applied
    after, after_us = level_and_time(limiter)
    # Nothing credited, only the refill in between (16 micro-units per
    # microsecond, with no remainder since den = 1): the bucket is as it was.
    assert after - before == 16 * (after_us - before_us)
    assert stored(r, limiter) == bucket
    assert middle.cancel().status == "unknown"  # once only
    # The others keep their places, and a later arrival joins behind the last.
    later = book(limiter, 1)
    assert [p.admitted_at_us - first.admitted_at_us for p in (middle, last, later)] == [
        5 * US_PER_TOKEN,
        (5 + 2) * US_PER_TOKEN,
        (5 + 2 + 1) * US_PER_TOKEN,
    ]


def test_the_last_booking_cancelled_gives_its_tokens_back(r: redis.Redis) -> None:
    limiter = Limiter(r, "line", tokens=RATE)
    limiter.acquire(tokens=10)
    first, middle, last = book(limiter, 3), book(limiter, 5), book(limiter, 2)
    assert middle.cancel().applied  # from the middle: stays spent
    before, before_us = level_and_time(limiter)
    assert last.cancel().applied  # nobody behind it: its 2 tokens go back
    after, after_us = level_and_time(limiter)
    assert after - before == 2_000_000 + 16 * (after_us - before_us)
    # Credited as of its admission, where the line now ends.
    assert stored(r, limiter) == f"2000000 0 1 {last.admitted_at_us}"
    assert last.cancel().status == "unknown"  # once only
    # The next arrival takes its place exactly (middle's 5 tokens stay spent).
    later = book(limiter, 2)
    assert later.admitted_at_us == last.admitted_at_us
    assert later.admitted_at_us - first.admitted_at_us == (5 + 2) * US_PER_TOKEN


def test_a_refund_of_a_booking_still_in_line_is_credited_only_at_its_end(
    r: redis.Redis,
) -> None:
    limiter = Limiter(r, "line", tokens=RATE)
    limiter.acquire(tokens=10)
    first, last = book(limiter, 4), book(limiter, 2)
    bucket = stored(r, limiter)
    assert first.settle(tokens=1).applied  # used 1 of 4, with `last` booked behind it
    assert stored(r, limiter) == bucket  # the 3 unused stay spent
    assert last.settle(tokens=0.5).applied  # nobody behind it: 1.5 back
    assert stored(r, limiter) == f"1500000 0 1 {last.admitted_at_us}"
    # 2 more need half a token's refill after the last admission.
    later = book(limiter, 2)
    assert later.admitted_at_us - last.admitted_at_us == US_PER_TOKEN // 2


def test_a_call_that_went_out_gets_its_unused_part_back_after_the_line(
    r: redis.Redis,
) -> None:
    limiter = Limiter(r, "line", tokens=RATE)
    done = limiter.acquire(tokens=4)  # admitted at once: the call goes out
    limiter.acquire(tokens=6)
    behind = book(limiter, 2)  # booked ahead, behind the call that went out
    assert done.admitted_at_us < behind.admitted_at_us
    assert done.settle(tokens=1).applied  # used 1 of 4: 3 come back after `behind`
    assert stored(r, limiter) == f"3000000 0 1 {behind.admitted_at_us}"
    # The next arrival uses them at the end of the line, not before `behind`.
    later = book(limiter, 2)
    assert later.admitted_at_us == behind.admitted_at_us


@pytest.fixture
def alarm() -> Iterator[Callable[[float], None]]:
    """Raise KeyboardInterrupt in the main thread after a delay, as Ctrl-C would."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)

    def arm(seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_a_sync_waiter_interrupted_in_line_gives_its_tokens_back(
    r: redis.Redis, alarm: Callable[[float], None]
) -> None:
    limiter = Limiter(r, "line", tokens=RATE)
    drained = limiter.acquire(tokens=10)
    before, before_us = level_and_time(limiter)
    alarm(0.3)  # long after the booking's round trip, well inside its 625 ms wait
    with pytest.raises(KeyboardInterrupt):
        limiter.acquire(timeout=30, tokens=10)
    after, after_us = level_and_time(limiter)
    assert after - before == 16 * (after_us - before_us)  # only the refill: no tokens kept
    # It did book, 10 tokens after the drain, and it was the last in line:
    # its cancel credited all 10 (up to the capacity) as of that admission.
    admitted = drained.admitted_at_us + 10 * US_PER_TOKEN
    assert stored(r, limiter) == f"10000000 0 1 {admitted}"


async def test_an_async_waiter_cancelled_in_the_middle_of_the_line_keeps_its_tokens_spent(
    ar: redis.asyncio.Redis,
) -> None:
    limiter = ratelimit.asyncio.Limiter(ar, "line", tokens=RATE)
    await limiter.acquire(tokens=10)

    async def level() -> tuple[int, int]:
        call = next(limiter._plan.state(0))
        assert isinstance(call, ScriptCall)
        reply = await limiter._scripts["state"](keys=call.keys, args=call.args)
        return int(reply[3][0][0]), int(reply[1])

    booked = count_bookings(limiter)

    async def join(tokens: int, queued: int) -> asyncio.Task[ratelimit.asyncio.Permit]:
        task = asyncio.create_task(limiter.acquire(timeout=30, tokens=tokens))
        deadline = time.monotonic() + 10
        while len(booked) < queued:
            assert time.monotonic() < deadline, "a waiter never booked"
            await asyncio.sleep(0.002)
        return task

    first = await join(3, 1)
    middle = await join(5, 2)
    last = await join(2, 3)
    bucket = await ar.get(limiter._scope.keys.rates)
    before, before_us = await level()
    middle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await middle
    after, after_us = await level()
    # Nothing credited: only the refill in between.
    assert after - before == 16 * (after_us - before_us)
    assert bucket_of(await ar.get(limiter._scope.keys.rates)) == bucket_of(bucket)
    # The others keep their places, and a later arrival joins behind the last.
    later = await join(1, 4)
    done = await asyncio.gather(first, last, later)
    assert [p.admitted_at_us - done[0].admitted_at_us for p in done[1:]] == [
        (5 + 2) * US_PER_TOKEN,
        (5 + 2 + 1) * US_PER_TOKEN,
    ]


def test_a_later_arrival_does_not_overtake_the_line_after_a_cancel(r: redis.Redis) -> None:
    """Regression: a cancel (or a settle refund) credited the bucket while others
    were booked behind it, so a later arrival was admitted before (or with) them,
    in a window holding more than capacity + refill."""
    limiter = Limiter(r, "line", tokens=RATE)
    limiter.acquire(tokens=10)
    book(limiter, 1)
    middle = book(limiter, 9)
    last = book(limiter, 10)  # admitted 20 tokens after the drain
    middle.cancel()
    later = book(limiter, 8)  # booked after `last`: must not go before it
    try:
        assert later.admitted_at_us >= last.admitted_at_us
        # And 10 + 8 tokens fit in one window only if it refills 8: 8 tokens' time.
        assert abs(last.admitted_at_us - later.admitted_at_us) >= 8 * US_PER_TOKEN
        # Exactly that: the middle's 9 tokens stay spent, and are not lost twice.
        assert later.admitted_at_us - last.admitted_at_us == 8 * US_PER_TOKEN
    finally:
        for permit in (later, last):
            permit.cancel()


def test_timeouts_leave_the_line_as_it_was(r: redis.Redis) -> None:
    """A caller unwilling to wait its turn takes nothing and moves nobody."""
    limiter = Limiter(r, "line", tokens=RATE)
    limiter.acquire(tokens=10)
    ahead = book(limiter, 4)
    with pytest.raises(AcquireTimeout):
        limiter.acquire(timeout=0.1, tokens=2)  # would be admitted in 6 tokens' time
    behind = book(limiter, 1)
    assert behind.admitted_at_us - ahead.admitted_at_us == US_PER_TOKEN
