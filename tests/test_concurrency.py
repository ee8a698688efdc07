"""Many OS processes hammer one multi-dimension quota: nothing is over-admitted.

Eight processes (each with its own connection and Limiter, as real workers
would have) race for one quota for a few seconds, once with ``try_acquire`` in
a tight loop and once with ``acquire(timeout=...)``, which books a place in
line and sleeps. Every admission is judged afterwards on the server's own
clock (``admitted_at_us``), never on how fast the machine happened to be:

* no window between two admissions holds more than the bucket's capacity plus
  what the rate refilled over the window, in every dimension (exact integer
  arithmetic on the rate's num/den fraction), and the whole run took no more
  than capacity + rate x elapsed;
* the binding dimension was used to at least 95% of what the quota allowed
  (the limiter is not just safe by being stingy);
* with ``acquire``, nobody went ahead before its admission time, and places in
  line were admitted in the order they were booked.

The main quota has one binding dimension (tokens). The tests at the end make
the dimensions take turns binding, which once made ``acquire`` over-admit (a
booking debited every dimension at booking time, so one that was not binding
refilled meanwhile and was spent twice): they stay as regression tests.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.synchronize
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pytest
import redis

from ratelimit import AcquireTimeout, Limiter, Permit, Rate

Mode = Literal["try_acquire", "acquire"]

PROCESSES = 8


@dataclass(frozen=True)
class Scenario:
    rates: dict[str, Rate]
    costs: Callable[[random.Random], dict[str, float]]
    hammer_s: float
    """Seconds each child hammers."""
    binding: str | None
    """The dimension that must be used to 95%, when one dimension binds throughout."""


SCENARIOS = {
    # Tokens bind (about 260 admissions/s at the mean cost), requests do not
    # (2857/s). Both rates are awkward fractions (num/den = 500000/13 and
    # 20000/7 micro-units per microsecond), so the remainder arithmetic is
    # exercised on every refill. 3 s: about a thousand admissions and many
    # refills, still short enough for two modes x two engines. Saturating
    # takes only ~260 calls/s, which eight processes keep up even on a loaded
    # machine, and the token burst holds half a second of refill, so a moment
    # when every child stalls loses nothing to a full bucket: the 95% check
    # measures the limiter, not the machine.
    "tokens_bind": Scenario(
        rates={
            "requests": Rate(2000, per=0.7, burst=150),
            "tokens": Rate(50_000, per=1.3, burst=20_000),
        },
        # 1 or 2 requests, and 0.001 to 300 tokens (fractional).
        costs=lambda rng: {
            "requests": rng.choice((1, 1, 1, 2)),
            "tokens": rng.randint(1, 300_000) / 1000,
        },
        hammer_s=3.0,
        binding="tokens",
    ),
    # Mostly 1-token calls (requests bind) with a few near the token burst
    # (tokens bind while they wait): each dimension spends time full while
    # the other holds the line.
    "dims_take_turns": Scenario(
        rates={"requests": Rate(400, per=1, burst=10), "tokens": Rate(40_000, per=1, burst=4000)},
        costs=lambda rng: {"requests": 1, "tokens": 3900 if rng.random() < 0.05 else 1},
        hammer_s=1.5,
        binding=None,
    ),
}


@dataclass(frozen=True)
class Admission:
    """One permit as a child saw it; every time is the server's, in microseconds."""

    booked_us: int
    """Server time of the script call that booked it."""
    admitted_at_us: int
    """Server time at which it was admitted (booked_us + the wait it was told)."""
    costs_micro: dict[str, int]
    """What it reserved per dimension, in micro-units."""
    went_ahead_us: int | None
    """Server time read after ``acquire`` returned (acquire mode only)."""


def _hammer(
    results: multiprocessing.Queue[tuple[int, list[Admission] | str]],
    start: multiprocessing.synchronize.Barrier,
    *,
    url: str,
    scenario_name: str,
    mode: Mode,
    seed: int,
) -> None:
    """A child process: build a Limiter from the URL, wait for the others, hammer."""
    try:
        scenario = SCENARIOS[scenario_name]
        limiter = Limiter(
            url,
            f"{scenario_name}-{mode}",
            requests=scenario.rates["requests"],
            tokens=scenario.rates["tokens"],
        )
        rng = random.Random(seed)
        client = limiter.client
        client.ping()  # connect before the start line, not after it
        got: list[Admission] = []
        start.wait(timeout=60)
        deadline = time.monotonic() + scenario.hammer_s
        while time.monotonic() < deadline:
            cost = scenario.costs(rng)
            requests, tokens = cost["requests"], cost["tokens"]
            went_ahead_us: int | None = None
            if mode == "try_acquire":
                permit = limiter.try_acquire(requests=requests, tokens=tokens)
                if permit is None:
                    continue
            else:
                try:
                    permit = limiter.acquire(timeout=0.5, requests=requests, tokens=tokens)
                except AcquireTimeout:
                    continue
                seconds, micros = client.time()
                went_ahead_us = seconds * 1_000_000 + micros
            booked_us = permit.admitted_at_us - round(permit.wait_s * 1_000_000)
            got.append(
                Admission(booked_us, permit.admitted_at_us, permit.reserved_micro, went_ahead_us)
            )
        results.put((seed, got))
    except BaseException:
        results.put((seed, traceback.format_exc()))


def server_time_us(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return seconds * 1_000_000 + micros


def run_children(
    r: redis.Redis, url: str, scenario: str, mode: Mode
) -> tuple[list[Admission], int]:
    """Start the children together; their admissions and the server time elapsed."""
    # forkserver: children fork from a small server process that has already
    # imported this module, instead of each importing everything afresh (spawn)
    # or inheriting pytest's threads and sockets (fork).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    results: multiprocessing.Queue[tuple[int, list[Admission] | str]] = ctx.Queue()
    start = ctx.Barrier(PROCESSES + 1)
    children = [
        ctx.Process(
            target=_hammer,
            args=(results, start),
            kwargs={"url": url, "scenario_name": scenario, "mode": mode, "seed": seed},
        )
        for seed in range(PROCESSES)
    ]
    for child in children:
        child.start()
    try:
        started_us = server_time_us(r)  # before anyone can be admitted
        start.wait(timeout=60)
        outcomes = [results.get(timeout=SCENARIOS[scenario].hammer_s + 60) for _ in children]
        finished_us = server_time_us(r)  # after the last one was admitted
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    errors = [outcome for _, outcome in outcomes if isinstance(outcome, str)]
    assert not errors, errors[0]
    admissions = [a for _, got in outcomes if not isinstance(got, str) for a in got]
    return admissions, finished_us - started_us


@dataclass(frozen=True)
class WindowCheck:
    windows_over: int
    """How many admissions end a window holding more than the quota allowed."""
    worst_excess_micro: float
    """The largest excess over all windows, in micro-units (<= 0 when none)."""


def check_windows(admissions: list[Admission], dim: str, rate: Rate) -> WindowCheck:
    """Every window [t_i, t_j] between two admissions, in one pass.

    With admissions sorted by time and S the prefix sums of their costs, the
    window from the i-th to the j-th admission (i <= j) holds S[j+1] - S[i]
    and may hold cap + rate * (t_j - t_i). Scaled by den to stay in integers:

        (S[j+1] - S[i]) * den <= cap * den + num * (t_j - t_i)
        <=> S[j+1] * den - num * t_j <= cap * den + min_{i<=j} (S[i] * den - num * t_i)

    so a running minimum checks all n^2 pairs in O(n). Admissions sharing a
    timestamp are all inside any window that touches that time; taking the
    first of them as i and the last as j covers it.
    """
    num, den = rate.refill_fraction()
    cap = rate.capacity_micro
    ordered = sorted(admissions, key=lambda a: a.admitted_at_us)
    prefix = 0  # S[j], the costs before admission j
    lowest: int | None = None
    over = 0
    worst = -float("inf")
    for a in ordered:
        start_term = prefix * den - num * a.admitted_at_us
        lowest = start_term if lowest is None else min(lowest, start_term)
        prefix += a.costs_micro[dim]
        excess = (prefix * den - num * a.admitted_at_us) - (cap * den + lowest)
        if excess > 0:
            over += 1
        worst = max(worst, excess / den)
    return WindowCheck(over, worst)


def allowed_micro(rate: Rate, elapsed_us: int) -> float:
    """What a full bucket can let through over ``elapsed_us``, in micro-units."""
    num, den = rate.refill_fraction()
    return rate.capacity_micro + num * elapsed_us / den


def hammer_and_check(r: redis.Redis, url: str, scenario_name: str, mode: Mode) -> None:
    """Run the children, check (a), (b) and (c), print the figures (``-s`` shows them)."""
    scenario = SCENARIOS[scenario_name]
    engine = "valkey" if "valkey_version" in r.info("server") else "redis"
    admissions, elapsed_us = run_children(r, url, scenario_name, mode)
    assert len(admissions) > 200  # enough decisions to prove something
    first = min(a.admitted_at_us for a in admissions)
    last = max(a.admitted_at_us for a in admissions)
    lines = [
        f"[{engine} {scenario_name} {mode}] {len(admissions)} admissions by {PROCESSES} processes"
    ]
    try:
        for dim, rate in scenario.rates.items():
            num, den = rate.refill_fraction()
            total = sum(a.costs_micro[dim] for a in admissions)
            allowed = allowed_micro(rate, last - first)
            windows = check_windows(admissions, dim, rate)
            lines.append(
                f"  {dim}: {windows.windows_over} windows over the limit (closest: "
                f"{windows.worst_excess_micro / 1e6:+.6f} units from it); used "
                f"{total / 1e6:.1f} of {allowed / 1e6:.1f} allowed from first to last "
                f"admission = {total / allowed:.2%}"
            )
            # (a) Every window between two admissions, then the run as a whole
            # (elapsed on the server's clock, from before the start to after the end).
            assert windows.windows_over == 0, lines
            assert total * den <= rate.capacity_micro * den + num * elapsed_us, lines
            # (b) Saturated: the binding dimension was not left idle.
            if dim == scenario.binding:
                assert total / allowed >= 0.95, lines

        if mode == "acquire":
            # (c) Nobody went ahead early, and the line kept its booking order.
            early = sum(
                1
                for a in admissions
                if a.went_ahead_us is None or a.went_ahead_us < a.admitted_at_us
            )
            by_booking = sorted(admissions, key=lambda a: a.booked_us)
            out_of_order = sum(
                1
                for before, after in itertools.pairwise(by_booking)
                if before.admitted_at_us > after.admitted_at_us
            )
            waited = sum(1 for a in admissions if a.admitted_at_us > a.booked_us)
            lines.append(
                f"  {waited} booked ahead; {early} went ahead early; "
                f"{out_of_order} admitted out of booking order"
            )
            assert early == 0, lines
            assert out_of_order == 0, lines
            assert waited > len(admissions) // 2, lines  # the line was really used
    finally:
        print("\n" + "\n".join(lines))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["try_acquire", "acquire"])
def test_many_processes_never_over_admit(r: redis.Redis, redis_url: str, mode: Mode) -> None:
    hammer_and_check(r, redis_url, "tokens_bind", mode)


@pytest.mark.slow
def test_many_processes_never_over_admit_when_dimensions_take_turns(
    r: redis.Redis, redis_url: str
) -> None:
    """Regression: acquire debited every dimension when it booked, but the request
    only went ahead when the slowest dimension allowed; a dimension that was not
    binding refilled up to its capacity meanwhile, so it was spent twice in the
    same window. Now each is charged as of the admission."""
    hammer_and_check(r, redis_url, "dims_take_turns", "acquire")


def book(limiter: Limiter, **costs: int) -> Permit:
    """A place in line without sleeping in it."""
    booking = limiter._book(costs, None, None, None)
    assert booking.permit is not None
    assert isinstance(booking.permit, Permit)
    return booking.permit


def test_waiting_on_one_dimension_does_not_overfill_another(r: redis.Redis) -> None:
    """The smallest case of the bug above, without any concurrency."""
    limiter = Limiter(r, "q", requests=Rate(1, per=1), tokens=Rate(10, per=1))
    limiter.acquire(requests=1)  # requests empty: the next one waits 1 s for it
    first = book(limiter, requests=1, tokens=10)  # all 10 tokens, going ahead in 1 s
    second = book(limiter, requests=0, tokens=10)  # 10 tokens more
    try:
        # 20 tokens fit in a window of 10 (the burst) + 10/s x its length only
        # if it lasts 1 s: the second must go ahead at least 1 s after the first.
        # (It was booked 1 s after the drain, a few microseconds after the first.)
        assert abs(second.admitted_at_us - first.admitted_at_us) >= 1_000_000
        # Exactly 1 s: the tokens the first took are back then, not later.
        assert second.admitted_at_us - first.admitted_at_us == 1_000_000
    finally:
        first.cancel()
        second.cancel()
