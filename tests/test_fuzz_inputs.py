"""Every public entry point, driven with arbitrary values: only LimiterError comes out.

A bad value (a string for a cost, NaN, a negative lease, a typo in a usage, a
dict where a name belongs...) must get a typed error of this package, never a
KeyError or AttributeError from deep inside, never an unmetered admission,
and it must write nothing to Redis. A good value must simply work.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import anthropic
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ratelimit.asyncio
from ratelimit import Budget, Limiter, LimiterError, Pricing, Rate, Retention
from ratelimit.anthropic import wrap
from ratelimit.cli.parser import build_parser
from ratelimit.core.numbers import exact

#: Values of every kind a caller might pass by mistake (or on purpose).
ANYTHING: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.decimals(allow_nan=True, allow_infinity=True),
        st.fractions(),
        st.text(max_size=12),
        st.binary(max_size=8),
        st.sampled_from(["0.5", "1e9", "-1", "NaN", "inf", "", "day", "month", "UTC"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
        st.tuples(inner, inner),
    ),
    max_leaves=6,
)
#: Mostly sensible numbers, so valid calls happen too.
AMOUNT = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0, max_value=1e6),
    st.decimals(min_value=0, max_value=10**6, places=4),
    st.fractions(min_value=0, max_value=10**6),
    ANYTHING,
)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def snapshot(r: redis.Redis) -> dict[Any, tuple[object, int]]:
    """Every key, its value's dump and its TTL (ms, -1 = none); a key that expires
    while this reads it is left out."""
    found = {key: (r.dump(key), r.pttl(key)) for key in r.keys("*")}
    # Gone before DUMP (no value) or between DUMP and PTTL (-2: no such key).
    return {
        key: (value, ttl) for key, (value, ttl) in found.items() if value is not None and ttl != -2
    }


@contextlib.contextmanager
def refused_writes_nothing(r: redis.Redis) -> Iterator[None]:
    """The block may succeed; if it raises, it raised a LimiterError and wrote nothing.

    Nothing written: no key new or changed. A key may only have gone by
    expiring (a bucket that refilled meanwhile), so only one with a TTL.
    """
    before = snapshot(r)
    try:
        yield
    except LimiterError:
        after = snapshot(r)
        for key, (value, _) in after.items():
            assert key in before, f"{key!r} written by a refused call"
            assert value == before[key][0], f"{key!r} changed by a refused call"
        for key, (_, ttl) in before.items():
            assert key in after or ttl >= 0, f"{key!r} deleted by a refused call"


@FUZZ
@given(amount=AMOUNT, per=AMOUNT, burst=st.one_of(st.none(), AMOUNT))
def test_rate(amount: Any, per: Any, burst: Any) -> None:
    with contextlib.suppress(LimiterError):
        rate = Rate(amount, per=per, burst=burst)
        assert rate.capacity_micro >= 1
        num, den = rate.refill_fraction()
        assert num >= 1
        assert den >= 1


@FUZZ
@given(usd=AMOUNT, per=ANYTHING, tz=st.one_of(ANYTHING, st.just("Europe/Paris")), alerts=ANYTHING)
def test_budget(usd: Any, per: Any, tz: Any, alerts: Any) -> None:
    with contextlib.suppress(LimiterError):
        budget = Budget(usd, per=per, tz=tz, alerts=alerts)
        assert budget.limit_nano >= 1
        budget.thresholds()


@FUZZ
@given(
    name=st.one_of(st.text(max_size=8), ANYTHING),
    dims=st.dictionaries(
        st.one_of(st.sampled_from(["requests", "tokens", "usd", "model", "timeout"]), st.text()),
        st.one_of(
            st.builds(Rate, st.integers(1, 100)), st.builds(Budget, st.integers(1, 9)), ANYTHING
        ),
        max_size=3,
    ),
    options=st.fixed_dictionaries(
        {},
        optional={
            "lease_s": AMOUNT,
            "slot": ANYTHING,
            "on_redis_error": st.one_of(st.sampled_from(["raise", "allow", "deny"]), ANYTHING),
            "retention": st.one_of(st.builds(Retention), ANYTHING),
        },
    ),
)
def test_limiter_construction(
    r: redis.Redis, name: Any, dims: dict[str, Any], options: dict[str, Any]
) -> None:
    with refused_writes_nothing(r), contextlib.suppress(TypeError):
        # TypeError only for a keyword the signature does not have (a caller's
        # typo in the code itself, which Python reports); values never do.
        Limiter(r, name, **options, **dims)


@pytest.fixture
def limiters(r: redis.Redis) -> tuple[Limiter, Limiter]:
    # Slow refills: keys live through an example (an expiry is no write).
    slow = Rate(10**6, per=3600)
    rates = Limiter(r, "fuzz", requests=slow, tokens=slow)
    budget = Limiter(r, "fuzz-usd", requests=slow, usd=Budget(10**6))
    return rates, budget


COSTS = st.dictionaries(
    st.one_of(st.sampled_from(["requests", "tokens", "usd", "images"]), st.text(max_size=5)),
    AMOUNT,
    max_size=3,
)


@FUZZ
@given(
    costs=COSTS,
    timeout=st.one_of(st.none(), AMOUNT),
    model=st.one_of(st.none(), ANYTHING),
    tags=st.one_of(st.none(), ANYTHING),
    actual=COSTS,
    budgeted=st.booleans(),
)
def test_acquire_settle_cancel(
    r: redis.Redis,
    limiters: tuple[Limiter, Limiter],
    *,
    costs: dict[str, Any],
    timeout: Any,
    model: Any,
    tags: Any,
    actual: dict[str, Any],
    budgeted: bool,
) -> None:
    limiter = limiters[1] if budgeted else limiters[0]
    with refused_writes_nothing(r):
        permit = limiter.try_acquire(model=model, tags=tags, **costs)
        if permit is not None:
            assert permit.backed
            with refused_writes_nothing(r):
                permit.settle(model=model, tags=tags, **actual)
            permit.cancel()
    with refused_writes_nothing(r):
        limiter.acquire(short(timeout), model=model, tags=tags, **costs).cancel()


def short(timeout: Any) -> Any:
    """``timeout`` as drawn, unless it is a valid wait longer than 10 ms or None (no
    limit): then 10 ms, so an admission booked for later keeps the example short
    (the value is valid either way). The examples share the slow buckets, and a
    settle may leave them a debt of a million units: with no limit, an acquire
    would wait hours for it."""
    if timeout is None:
        return Decimal("0.01")
    try:
        valid = exact(timeout, "timeout") > Decimal("0.01")
    except LimiterError:
        return timeout
    return Decimal("0.01") if valid else timeout


@FUZZ
@given(permit_id=ANYTHING, actual=COSTS, remaining=st.one_of(st.none(), ANYTHING))
def test_settle_by_id(
    r: redis.Redis,
    limiters: tuple[Limiter, Limiter],
    permit_id: Any,
    actual: dict[str, Any],
    remaining: Any,
) -> None:
    for limiter in limiters:
        with refused_writes_nothing(r):
            assert limiter.settle(permit_id, remaining=remaining, **actual).status == "unknown"
        with refused_writes_nothing(r):
            assert limiter.cancel(permit_id).status == "unknown"


@FUZZ
@given(
    model=st.one_of(st.sampled_from(["claude-sonnet-4-6", "claude-haiku-4-5"]), ANYTHING),
    usage=ANYTHING,
    batch=ANYTHING,
)
def test_pricing_cost(model: Any, usage: Any, batch: Any) -> None:
    pricing = Pricing.default()
    with contextlib.suppress(LimiterError):
        cost = pricing.cost(model, usage, batch=batch)
        assert isinstance(cost, Decimal)
        assert cost >= 0
        assert usage  # an empty usage is refused, never priced at $0


@FUZZ
@given(
    options=st.fixed_dictionaries(
        {"limits": st.one_of(st.just({"claude-sonnet-4": {"requests": Rate(10)}}), ANYTHING)},
        optional={
            "budget": ANYTHING,
            "name": ANYTHING,
            "pricing": ANYTHING,
            "estimate": ANYTHING,
            "max_attempts": ANYTHING,
            "lease_s": AMOUNT,
            "acquire_timeout": AMOUNT,
        },
    )
)
def test_wrap(r: redis.Redis, options: dict[str, Any]) -> None:
    client = anthropic.Anthropic(api_key="test", base_url="http://127.0.0.1:9")
    with refused_writes_nothing(r), contextlib.suppress(LimiterError):
        wrap(client, r, **options)


async def test_the_asyncio_limiter_refuses_the_same(redis_url: str) -> None:
    limiter = ratelimit.asyncio.Limiter(redis_url, "fuzz-async", requests=Rate(10))
    for bad in (
        {"requests": -1},
        {"requests": "1"},
        {"nope": 1},
        {"requests": Fraction(1, 3) * 10**40},
    ):
        with pytest.raises(LimiterError):
            await limiter.try_acquire(**bad)
    with pytest.raises(LimiterError):
        await limiter.settle({"not": "an id"})  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(
    argv=st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "ledger",
                    "spend",
                    "alerts",
                    "status",
                    "demo",
                    "exporter",
                    "doctor",
                    "--since",
                    "--until",
                    "--day",
                    "--count",
                    "--port",
                    "--seconds",
                    "--workers",
                    "--format",
                    "--slot",
                    "--interval",
                    "--json",
                    "-x",
                    "2026-13-40",
                    "-5",
                    "abc",
                ]
            ),
            st.text(max_size=8),
        ),
        max_size=5,
    )
)
def test_the_cli_parser_says_what_is_wrong(argv: list[str]) -> None:
    """Bad arguments end with exit status 2 and a message, never a traceback."""
    codes = []
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exit_:
            codes.append(exit_.code)
    assert set(codes) <= {0, 2}
