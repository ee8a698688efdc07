"""Budgets on the real servers: reserve, settle, refuse, ledger, alerts, groups, leases.

Every amount is checked to the nano-dollar with ``Decimal``: the scripts keep
money as integer nano-dollars, so anything short of exact equality is a bug.
Times are judged on the server's clock (``TIME``), never on how long a call
took on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import math
import time
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgpack  # type: ignore[import-untyped]
import pytest
import redis
import redis.asyncio
from anthropic.types import CacheCreation, Usage
from hypothesis import given
from hypothesis import strategies as st

import ratelimit.asyncio
from ratelimit import (
    Alert,
    Budget,
    BudgetExceeded,
    CostExceedsCapacity,
    InvalidArgument,
    InvalidArgumentType,
    Limiter,
    LimiterError,
    LimiterGroup,
    Pricing,
    Rate,
    Retention,
)
from ratelimit.core.calls import ScriptCall
from ratelimit.core.keys import ALERT_CHANNEL
from ratelimit.core.numbers import to_nano
from ratelimit.core.replies import full_reply
from ratelimit.core.settings import calendar_around
from ratelimit.ledger import parse_published_alert, to_csv, to_jsonl, total

PARIS = "Europe/Paris"
SONNET = "claude-sonnet-4-5"


# -- helpers -------------------------------------------------------------------


def server_now_us(r: redis.Redis) -> int:
    """The server's clock in microseconds: the only clock budgets are decided by."""
    seconds, micros = r.time()
    return int(seconds) * 1_000_000 + int(micros)


def snapshot(r: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key's serialized value: equal snapshots mean nothing was written."""
    return {key: r.dump(key) for key in r.keys("*")}  # type: ignore[misc]


def team(r: redis.Redis, name: str = "team-a", **kwargs: Any) -> Limiter:
    """The brief's example quota: 100 requests a minute and $5 a Paris day."""
    kwargs.setdefault("usd", Budget("5", per="day", tz=PARIS, alerts=(0.5, 0.8, 1.0)))
    return Limiter(r, name, requests=Rate(100, per=60), **kwargs)


def budget_of(limiter: Limiter | LimiterGroup, name: str = "usd") -> tuple[Decimal, Decimal]:
    """(spent, reserved) of a budget, as the server reports it now."""
    state = limiter.state().budget(name)
    return state.spent, state.reserved


def counters_total(limiter: Limiter) -> Decimal:
    """The sum of every daily spend counter of a scope, all days and models."""
    return sum((usd for models in limiter.spend().values() for usd in models.values()), Decimal(0))


def next_local_midnight(r: redis.Redis, tz: str) -> datetime:
    """When the day holding the server's now ends in ``tz``."""
    starts, _ = calendar_around(server_now_us(r), ZoneInfo(tz), "day")
    return datetime.fromtimestamp(starts[2] / 1_000_000, ZoneInfo(tz))


def wait_for_server_time(r: redis.Redis, until_us: int) -> None:
    """Sleep until the server's clock has passed ``until_us`` (a lease end, say)."""
    while server_now_us(r) <= until_us:
        time.sleep(0.02)


def evalsha_calls(r: redis.Redis) -> int:
    """How many EVALSHA the server has run so far (INFO commandstats)."""
    stats = r.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


# -- reserve, settle, refuse ---------------------------------------------------


def test_reserve_then_settle_reports_overshoot(r: redis.Redis) -> None:
    limiter = team(r)
    permit = limiter.acquire(usd="0.0123", model=SONNET, tags={"user": "u1"})
    assert permit.reserved["usd"] == Decimal("0.0123")
    assert budget_of(limiter) == (Decimal(0), Decimal("0.0123"))

    # Under the reservation: the difference goes back, no overshoot.
    under = permit.settle(usd="0.01")
    assert under.status == "settled"
    assert under.overshoot == {}
    assert budget_of(limiter) == (Decimal("0.01"), Decimal(0))

    # Over the reservation: charged in full, and the excess is reported by scope.
    over = limiter.acquire(usd="0.02").settle(usd="0.0277")
    assert over.applied
    assert over.overshoot == {"team-a": Decimal("0.0077")}
    assert budget_of(limiter) == (Decimal("0.0377"), Decimal(0))

    # A settle without usd keeps the reservation as the cost.
    assert limiter.acquire(usd="0.5").settle().overshoot == {}
    assert budget_of(limiter) == (Decimal("0.5377"), Decimal(0))


def test_budget_exceeded_reports_the_period_and_changes_nothing(r: redis.Redis) -> None:
    limiter = team(r)
    limiter.acquire(usd="3").settle(usd="3")
    limiter.acquire(usd="1.5")  # in flight
    before = snapshot(r)

    with pytest.raises(BudgetExceeded) as caught:
        limiter.acquire(usd="0.500000001")  # 3 + 1.5 + 0.500000001 > 5
    error = caught.value
    assert isinstance(error, LimiterError)
    assert (error.spent, error.reserved, error.limit) == (Decimal(3), Decimal("1.5"), Decimal(5))
    assert error.scope == "team-a"
    assert error.resets_at == next_local_midnight(r, PARIS)
    assert error.resets_at.utcoffset() == ZoneInfo(PARIS).utcoffset(error.resets_at)

    # try_acquire refuses the same way: waiting would not help.
    with pytest.raises(BudgetExceeded):
        limiter.try_acquire(usd="0.6")
    # The refusals wrote nothing: not the budget, not the request bucket, no ledger entry.
    assert snapshot(r) == before

    # Exactly up to the limit is allowed.
    assert limiter.try_acquire(usd="0.5") is not None
    assert budget_of(limiter) == (Decimal(3), Decimal(2))


def test_cost_larger_than_the_whole_budget_can_never_fit(r: redis.Redis) -> None:
    limiter = team(r)
    for call in (limiter.acquire, limiter.try_acquire):
        with pytest.raises(CostExceedsCapacity):
            call(usd="5.000000001")
    assert r.dbsize() == 0
    # The whole budget at once does fit.
    assert limiter.acquire(usd=5).settle().applied
    assert budget_of(limiter) == (Decimal(5), Decimal(0))


def test_zero_cost_is_admitted_even_when_the_budget_is_spent(r: redis.Redis) -> None:
    limiter = team(r)
    limiter.acquire(usd=5).settle()
    with pytest.raises(BudgetExceeded):
        limiter.acquire(usd="0.000000001")
    # A call that costs nothing (a cached answer, say) is not a budget matter.
    assert limiter.acquire(usd=0).settle(usd=0).applied
    assert budget_of(limiter) == (Decimal(5), Decimal(0))


# -- money exactness -----------------------------------------------------------


def test_many_awkward_amounts_sum_exactly(r: redis.Redis) -> None:
    limiter = Limiter(r, "exact", usd=Budget("100", tz=PARIS))
    amounts: list[object] = (
        ["0.000000001"] * 200 + ["0.1"] * 30 + [Decimal("0.333333333")] * 30 + [0.1] * 10
    )
    for i, amount in enumerate(amounts):
        # Reserve a round-ish worst case, settle the awkward actual.
        limiter.acquire(usd="0.5", model=f"m{i % 3}").settle(usd=amount)
    expected = (
        Decimal("0.000000001") * 200
        + Decimal("0.1") * 30
        + Decimal("0.333333333") * 30
        + Decimal("0.1") * 10
    )
    assert expected == Decimal("14.00000019")
    spent, reserved = budget_of(limiter)
    assert (spent, reserved) == (expected, Decimal(0))
    entries = limiter.ledger_entries()
    assert len(entries) == len(amounts)
    assert total(entries) == expected
    assert counters_total(limiter) == expected
    # Per day and model, each counter is the sum of its entries.
    for day, models in limiter.spend().items():
        for model, usd in models.items():
            mine = [e for e in entries if e.day == day and e.model == model]
            assert total(mine) == usd


@pytest.mark.parametrize(
    ("amount", "nano"),
    [
        (Decimal("0.5"), 500_000_000),
        (1, 1_000_000_000),
        (0.25, 250_000_000),
        (0.1, 100_000_000),  # the float a user wrote, not its binary expansion
        (1 / 3, 333_333_334),  # more digits than a nano-dollar: rounded up, never down
        ("0.5", 500_000_000),
        (" 0.0123 ", 12_300_000),
        ("1e-9", 1),
        ("1e-10", 1),  # below a nano-dollar: still charged one
    ],
)
def test_usd_accepts_numbers_and_numeric_strings(r: redis.Redis, amount: object, nano: int) -> None:
    limiter = team(r)
    permit = limiter.acquire(usd=amount)
    assert permit.reserved_micro["usd"] == nano
    assert budget_of(limiter) == (Decimal(0), Decimal(nano) / 10**9)
    permit.settle(usd=amount)
    assert budget_of(limiter) == (Decimal(nano) / 10**9, Decimal(0))
    assert [e.cost_usd for e in limiter.ledger_entries()] == [Decimal(nano) / 10**9]


BAD_USD: list[tuple[object, type[Exception]]] = [
    (math.nan, InvalidArgument),
    (Decimal("NaN"), InvalidArgument),
    ("nan", InvalidArgument),
    (-1, InvalidArgument),
    (Decimal("-0.000000001"), InvalidArgument),
    ("-0.5", InvalidArgument),
    (math.inf, InvalidArgument),
    ("Infinity", InvalidArgument),
    (True, InvalidArgumentType),
    (False, InvalidArgumentType),
    ("abc", InvalidArgument),
    ("", InvalidArgument),
    (None, InvalidArgumentType),
    (b"1", InvalidArgumentType),
    ([1], InvalidArgumentType),
]


@pytest.mark.parametrize(("amount", "error"), BAD_USD)
def test_bad_usd_raises_typed_errors_and_writes_nothing(
    r: redis.Redis, amount: object, error: type[Exception]
) -> None:
    limiter = team(r)
    for call in (limiter.acquire, limiter.try_acquire):
        with pytest.raises(error):
            call(usd=amount)
    assert r.dbsize() == 0

    permit = limiter.acquire(usd="0.5")
    before = snapshot(r)
    with pytest.raises(error):
        permit.settle(usd=amount)
    with pytest.raises(error):
        limiter.settle(permit.id, usd=amount)
    assert snapshot(r) == before
    assert permit.settle(usd="0.1").applied  # the permit is still whole


def test_amounts_with_many_digits_are_still_rounded_up() -> None:
    # 1 dollar and 10^-28 dollars: the true nano-dollar count is 10^9 + 10^-19,
    # whose ceiling is 10^9 + 1.
    assert to_nano("1.0000000000000000000000000001", "usd") == 1_000_000_001


@given(
    st.one_of(
        st.decimals(min_value=0, max_value=10**12, allow_nan=False, places=20).map(str),
        st.floats(min_value=0, max_value=1e12, allow_nan=False),
        st.integers(min_value=0, max_value=10**12),
        st.text(alphabet=" 0123456789.", max_size=24),
    )
)
def test_amounts_read_in_integers_round_up_as_exact_decimals(value: object) -> None:
    """Plain numbers (a price's "0.003", most floats) skip Decimal: the result
    and the refusals are the same as the exact Decimal ceiling's."""

    def exact_ceiling() -> int | type[Exception]:
        try:
            number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
        except ArithmeticError:
            return InvalidArgument
        if not number.is_finite() or number < 0:
            return InvalidArgument
        return math.ceil(number * 10**9)

    try:
        got: int | type[Exception] = to_nano(value, "usd")
    except InvalidArgument:
        got = InvalidArgument
    assert got == exact_ceiling()


def test_an_absurd_settle_cannot_split_the_ledger_from_the_counters(r: redis.Redis) -> None:
    limiter = team(r)
    permit = limiter.acquire(usd="1")
    for _ in range(2):
        # Refusing it is fine; leaving half of it written is not.
        with contextlib.suppress(LimiterError):
            permit.settle(usd=10**10)  # $10 billion: 10^19 nano-dollars, past int64
    entries = limiter.ledger_entries()
    spent, reserved = budget_of(limiter)
    assert total(entries) == counters_total(limiter) == spent
    assert len(entries) == (0 if reserved else 1)


# -- settling once, from anywhere ----------------------------------------------


def test_settle_by_id_from_another_limiter_counts_once(r: redis.Redis, redis_url: str) -> None:
    limiter = team(r)
    permit = limiter.acquire(usd="0.4", model=SONNET)
    elsewhere = team(redis.Redis.from_url(redis_url))  # another process would do the same
    try:
        assert elsewhere.settle(permit.id, usd="0.25").status == "settled"
        assert budget_of(limiter) == (Decimal("0.25"), Decimal(0))
        # Every later settle of the same permit, from either side, is a no-op.
        assert permit.settle(usd="0.4").status == "unknown"
        assert elsewhere.settle(permit.id, usd="0.3").status == "unknown"
        assert limiter.cancel(permit.id).status == "unknown"
    finally:
        elsewhere.client.close()
    assert budget_of(limiter) == (Decimal("0.25"), Decimal(0))
    entries = limiter.ledger_entries()
    assert [(e.permit_id, e.kind, e.cost_usd) for e in entries] == [
        (permit.id, "settled", Decimal("0.25"))
    ]
    assert counters_total(limiter) == Decimal("0.25")


def test_a_settle_replayed_after_a_lost_reply_counts_once(r: redis.Redis) -> None:
    """A client that timed out after the server committed sends the same call again."""
    limiter = team(r)
    permit = limiter.acquire(usd="0.4")
    flow = limiter._plan.settle(
        permit.id,
        {"usd": "0.3"},
        model=SONNET,
        tags=None,
        usage=None,
        pricer=Pricing.default,
        clock_us=server_now_us(r),
    )
    call = next(flow)
    assert isinstance(call, ScriptCall)
    script = limiter._scripts[call.script]
    first = full_reply(call.script, script(keys=call.keys, args=call.args))
    replayed = full_reply(call.script, script(keys=call.keys, args=call.args))  # the same call
    assert (int(first[0]), int(replayed[0])) == (1, 0)
    assert budget_of(limiter) == (Decimal("0.3"), Decimal(0))
    assert [e.cost_usd for e in limiter.ledger_entries()] == [Decimal("0.3")]
    assert counters_total(limiter) == Decimal("0.3")


# -- pricing a usage -----------------------------------------------------------


USAGES: list[object] = [
    {"input_tokens": 1000, "output_tokens": 200, "cache_read_input_tokens": 50},
    Usage(
        input_tokens=1234,
        output_tokens=567,
        cache_creation_input_tokens=3000,
        cache_read_input_tokens=89,
        cache_creation=CacheCreation(
            ephemeral_5m_input_tokens=1000, ephemeral_1h_input_tokens=2000
        ),
    ),
]


@pytest.mark.parametrize("usage", USAGES, ids=["mapping", "anthropic-usage"])
def test_usage_priced_settle_charges_the_price_table(r: redis.Redis, usage: object) -> None:
    limiter = team(r)
    permit = limiter.acquire(usd="0.5", model=SONNET)
    assert permit.settle(usage=usage, model=SONNET).applied
    expected = Pricing.default().cost(SONNET, usage)  # type: ignore[arg-type]
    assert expected > 0
    assert expected == expected.quantize(Decimal("1e-9"))  # whole nano-dollars: no rounding
    assert budget_of(limiter) == (expected, Decimal(0))
    (entry,) = limiter.ledger_entries()
    assert entry.cost_usd == expected
    assert entry.model == SONNET
    assert sum(int(v) for v in entry.tokens.values()) > 0


def test_usage_needs_a_model_to_be_priced(r: redis.Redis) -> None:
    limiter = Limiter(r, "q", usd=Budget("5"))
    permit = limiter.acquire(usd="0.5")
    before = snapshot(r)
    with pytest.raises(InvalidArgument):
        permit.settle(usage={"input_tokens": 10})
    assert snapshot(r) == before


# -- the ledger ----------------------------------------------------------------


TAGS = {"user": "u1", "attempt": 2, "labels": ["a", "b"], "note": 'comma, "quote"\nnewline'}


def test_ledger_entries_carry_model_tags_and_tokens(r: redis.Redis) -> None:
    limiter = Limiter(
        r,
        "sonnet",
        input_tokens=Rate(2_000_000, per=60),
        output_tokens=Rate(400_000, per=60),
        usd=Budget("5", tz=PARIS),
    )
    first = limiter.acquire(
        usd="0.02", input_tokens=1200, output_tokens=1024, model=SONNET, tags=TAGS
    )
    assert limiter.ledger_entries() == []  # only settles (and reclaims) write the ledger
    # Model, tags and tokens as at acquire when the settle gives none...
    first.settle(usd="0.011")
    # ...and the settle's own when it does.
    second = limiter.acquire(usd="0.02", input_tokens=10, model="m-acquire", tags={"x": 1})
    second.settle(usd="0.001", input_tokens=7, model="m-settle", tags={"x": 2})

    one, two = entries = limiter.ledger_entries()
    assert (one.permit_id, one.kind, one.scope) == (first.id, "settled", "sonnet")
    assert (one.model, one.cost_usd, one.tags) == (SONNET, Decimal("0.011"), TAGS)
    assert one.tokens == {"input_tokens": 1200, "output_tokens": 1024}
    assert (two.permit_id, two.model, two.cost_usd) == (second.id, "m-settle", Decimal("0.001"))
    assert (two.tags, two.tokens) == ({"x": 2}, {"input_tokens": 7})
    # Each entry's day is the Paris calendar day of its server time, and the
    # counters are keyed by that day and the model.
    expected: dict[str, dict[str, Decimal]] = {}
    for e in entries:
        assert e.day == e.time.astimezone(ZoneInfo(PARIS)).date().isoformat()
        expected.setdefault(e.day, {})[e.model] = e.cost_usd
    assert limiter.spend() == expected
    assert limiter.spend(day=one.day) == {one.day: expected[one.day]}
    assert limiter.spend(day="1999-01-01") == {}


def test_ledger_exports_round_trip(r: redis.Redis) -> None:
    limiter = team(r)
    limiter.acquire(usd="0.02", model=SONNET, tags=TAGS).settle(usd="0.013")
    limiter.acquire(usd="0.02", model="other").settle(usage={"input_tokens": 5}, model=SONNET)
    limiter.acquire(usd="0.02").cancel()
    entries = limiter.ledger_entries()
    assert [e.kind for e in entries] == ["settled", "settled", "cancelled"]

    text = io.StringIO()
    to_csv(entries, text)
    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    decoded = [
        {k: json.loads(v) if k in ("tokens", "tags") else v for k, v in row.items()} for row in rows
    ]
    assert decoded == [e.as_dict() for e in entries]

    lines = io.StringIO()
    to_jsonl(entries, lines)
    parsed = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert parsed == [e.as_dict() for e in entries]
    # The money survives both exports exactly.
    assert sum((Decimal(row["cost_usd"]) for row in rows), Decimal(0)) == total(entries)
    assert sum((Decimal(p["cost_usd"]) for p in parsed), Decimal(0)) == total(entries)


def test_ledger_retention_by_maxlen(r: redis.Redis) -> None:
    maxlen = 10
    limiter = Limiter(r, "short", usd=Budget("5"), retention=Retention(maxlen=maxlen))
    for _ in range(250):
        limiter.acquire(usd="0.001").settle()
    entries = limiter.ledger_entries()
    # XADD MAXLEN ~ trims whole stream nodes (stream-node-max-entries, 100 by
    # default), so the stream keeps at least maxlen and at most a node more.
    node = int(str(r.config_get("stream-node-max-entries")["stream-node-max-entries"]))
    assert maxlen <= len(entries) <= maxlen + node
    assert len(entries) < 250
    # The newest entries are the ones kept; the counters still hold everything.
    assert total(entries) == Decimal("0.001") * len(entries)
    assert counters_total(limiter) == Decimal("0.25")
    assert budget_of(limiter) == (Decimal("0.25"), Decimal(0))


# -- alerts --------------------------------------------------------------------


def test_each_threshold_fires_once_to_callback_history_and_channel(
    r: redis.Redis, redis_url: str
) -> None:
    listener = redis.Redis.from_url(redis_url)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(ALERT_CHANNEL)
    assert pubsub.get_message(timeout=1) is None  # the subscription is in place
    try:
        seen: list[Alert] = []
        limiter = team(r, on_alert=seen.append)
        fired = []
        # Spent 1.5, 3 (>= 2.5), 4.5 (>= 4), 4.9, then exactly 5 (>= 5).
        for actual in ("1.5", "1.5", "1.5", "0.4", "0.1"):
            fired += [a.threshold for a in limiter.acquire(usd="0.1").settle(usd=actual).alerts]
        assert fired == [0.5, 0.8, 1.0]
        assert [a.threshold for a in seen] == [0.5, 0.8, 1.0]
        today = seen[0].period
        assert [(a.scope, a.limit, a.period) for a in seen] == [("team-a", Decimal(5), today)] * 3
        assert [a.spent for a in seen] == [Decimal(3), Decimal("4.5"), Decimal(5)]
        assert limiter.alert_history() == seen
        # Nothing fires twice: not on a refusal, not on a later settle.
        with pytest.raises(BudgetExceeded):
            limiter.acquire(usd="0.1")
        assert limiter.acquire(usd=0).settle(usd="0.3").alerts == ()
        assert limiter.alert_history() == seen

        published: list[Alert] = []
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            published.append(parse_published_alert(message["data"]))
        assert [a for a in published if a.scope == "team-a"] == seen
    finally:
        pubsub.close()
        listener.close()


def test_a_failing_callback_does_not_fail_the_settle(r: redis.Redis) -> None:
    def broken(alert: Alert) -> None:
        raise RuntimeError("the pager is down")

    limiter = team(r, on_alert=broken)
    settlement = limiter.acquire(usd="3").settle()
    assert settlement.applied
    assert [a.threshold for a in settlement.alerts] == [0.5]
    assert [a.threshold for a in limiter.alert_history()] == [0.5]


def test_async_callback_on_the_sync_limiter(r: redis.Redis) -> None:
    seen: list[Alert] = []

    async def page(alert: Alert) -> None:
        await asyncio.sleep(0)
        seen.append(alert)

    limiter = team(r, on_alert=page)
    limiter.acquire(usd="4").settle()
    assert [a.threshold for a in seen] == [0.5, 0.8]


async def test_async_limiter_alerts_with_sync_and_async_callbacks(
    ar: redis.asyncio.Redis,
) -> None:
    sync_seen: list[Alert] = []
    async_seen: list[Alert] = []

    async def page(alert: Alert) -> None:
        await asyncio.sleep(0)
        async_seen.append(alert)

    budget = Budget("5", tz=PARIS, alerts=(0.5, 0.8, 1.0))
    first = ratelimit.asyncio.Limiter(ar, "team-a", usd=budget, on_alert=sync_seen.append)
    second = ratelimit.asyncio.Limiter(ar, "team-a", usd=budget, on_alert=page)
    await (await first.acquire(usd="2")).settle(usd="2.5")  # 0.5
    await (await second.acquire(usd="2")).settle(usd="1.6")  # 0.8, by the other process
    permit = await second.acquire(usd="0.9")
    with pytest.raises(BudgetExceeded):
        await first.try_acquire(usd="0.1")
    await permit.settle()  # 1.0
    assert [a.threshold for a in sync_seen] == [0.5]
    assert [a.threshold for a in async_seen] == [0.8, 1.0]
    assert [a.threshold for a in await first.alert_history()] == [0.5, 0.8, 1.0]
    state = (await first.state()).budget("usd")
    assert (state.spent, state.reserved) == (Decimal(5), Decimal(0))
    assert total(await second.ledger_entries()) == Decimal(5)


# -- groups --------------------------------------------------------------------


def scopes(
    r: redis.Redis, *, same_slot: bool, org_usd: str
) -> tuple[Limiter, Limiter, LimiterGroup, dict[str, list[Alert]]]:
    """A team and its org, with the alerts each one's callback was told."""
    seen: dict[str, list[Alert]] = {"team": [], "org": []}
    slot = "acme" if same_slot else None
    team_limiter = Limiter(
        r,
        "team",
        slot=slot,
        requests=Rate(10, per=3600),
        usd=Budget("5", tz=PARIS),
        on_alert=seen["team"].append,
    )
    org_limiter = Limiter(
        r, "org", slot=slot, usd=Budget(org_usd, tz=PARIS), on_alert=seen["org"].append
    )
    return team_limiter, org_limiter, LimiterGroup(team_limiter, org_limiter), seen


def test_group_in_one_slot_is_one_script_call(r: redis.Redis) -> None:
    team_limiter, org_limiter, group, seen = scopes(r, same_slot=True, org_usd="10")
    group.acquire(usd="0.01").settle()  # loads the scripts (a NOSCRIPT retry would count)
    for _ in range(3):
        before = evalsha_calls(r)
        permit = group.acquire(usd="1")
        assert evalsha_calls(r) - before == 1
        before = evalsha_calls(r)
        permit.settle(usd="0.7")
        assert evalsha_calls(r) - before == 1
    state = group.state()
    assert state.budget("team.usd").spent == state.budget("org.usd").spent == Decimal("2.11")
    # Each scope's budget and ledger was charged, and its own callback told.
    assert budget_of(team_limiter) == budget_of(org_limiter) == (Decimal("2.11"), Decimal(0))
    assert total(team_limiter.ledger_entries()) == total(org_limiter.ledger_entries())
    assert counters_total(org_limiter) == Decimal("2.11")
    assert [a.threshold for a in seen["team"]] == []  # 2.11 < 2.5
    assert [(a.scope, a.threshold) for a in seen["org"]] == []  # 2.11 < 5
    settlement = group.acquire(usd="1").settle(usd="3")  # 5.11: team 1.0, org 0.5
    assert sorted((a.scope, a.threshold) for a in settlement.alerts) == [
        ("org", 0.5),
        ("team", 0.5),
        ("team", 0.8),
        ("team", 1.0),
    ]
    assert settlement.overshoot == {"team": Decimal(2), "org": Decimal(2)}
    assert [a.threshold for a in seen["team"]] == [0.5, 0.8, 1.0]
    assert [a.threshold for a in seen["org"]] == [0.5]


def test_group_in_one_slot_refusal_writes_nothing(r: redis.Redis) -> None:
    _, _, group, _ = scopes(r, same_slot=True, org_usd="1")
    group.acquire(usd="0.8").settle()
    before = snapshot(r)
    with pytest.raises(BudgetExceeded) as caught:
        group.acquire(usd="0.3")
    assert caught.value.scope == "org"
    assert (caught.value.spent, caught.value.limit) == (Decimal("0.8"), Decimal(1))
    assert snapshot(r) == before


def test_group_across_slots_refused_by_the_second_scope_leaks_nothing(r: redis.Redis) -> None:
    team_limiter, org_limiter, group, _ = scopes(r, same_slot=False, org_usd="1")
    assert len(group._plan.parts) == 2
    group.acquire(usd="0.8").settle(usd="0.8")
    for _ in range(5):
        with pytest.raises(BudgetExceeded) as caught:
            group.acquire(usd="0.3")
        assert caught.value.scope == "org"
    # The team scope was booked first, then given everything back.
    team_state = team_limiter.state()
    assert team_state.rate("requests").available == pytest.approx(9, abs=0.01)
    assert budget_of(team_limiter) == (Decimal("0.8"), Decimal(0))
    assert budget_of(org_limiter) == (Decimal("0.8"), Decimal(0))
    kinds = [(e.kind, e.cost_usd) for e in team_limiter.ledger_entries()]
    assert kinds == [("settled", Decimal("0.8"))] + [("cancelled", Decimal(0))] * 5
    assert counters_total(team_limiter) == Decimal("0.8")
    # Settling a group permit charges both budgets, whatever their slots.
    group.acquire(usd="0.2").settle(usd="0.15")
    assert budget_of(team_limiter) == budget_of(org_limiter) == (Decimal("0.95"), Decimal(0))
    assert total(team_limiter.ledger_entries()) == total(org_limiter.ledger_entries())


# -- leases --------------------------------------------------------------------


def test_an_expired_lease_is_reclaimed_in_full(r: redis.Redis) -> None:
    seen: list[Alert] = []
    limiter = Limiter(
        r, "lease", usd=Budget("1", tz=PARIS, alerts=(0.5,)), lease_s=0.5, on_alert=seen.append
    )
    lost = limiter.acquire(usd="0.6", model=SONNET, tags={"job": 7})
    kept = limiter.acquire(usd="0.1")
    kept.settle(usd="0.05")  # settled in time: not reclaimed
    assert budget_of(limiter) == (Decimal("0.05"), Decimal("0.6"))
    wait_for_server_time(r, lost.admitted_at_us + 500_000)

    # Any later call reclaims: the worst case is charged, as the call may have been billed.
    spent, reserved = budget_of(limiter)
    assert (spent, reserved) == (Decimal("0.65"), Decimal(0))
    assert [a.threshold for a in seen] == [0.5]  # crossed by the reclaim, told to whoever saw it
    entries = limiter.ledger_entries()
    assert [(e.kind, e.cost_usd) for e in entries] == [
        ("settled", Decimal("0.05")),
        ("reclaimed", Decimal("0.6")),
    ]
    assert (entries[1].permit_id, entries[1].model, entries[1].tags) == (
        lost.id,
        SONNET,
        {"job": 7},
    )
    assert lost.settle(usd="0.01").status == "unknown"  # too late: it was charged in full
    assert counters_total(limiter) == total(entries) == Decimal("0.65")


def test_each_ledger_entry_is_one_msgpack_record(r: redis.Redis) -> None:
    limiter = Limiter(r, "raw", usd=Budget("5"))
    limiter.acquire(usd="0.5", model="claude-haiku-4-5", tags={"job": 7}).settle(usd="0.125")
    rows: Any = r.xrange(limiter._scope.keys.ledger)
    ((_, fields),) = rows
    assert set(fields) == {b"rec"}
    record = msgpack.unpackb(fields[b"rec"], raw=False)
    assert record["cost_nano"] == 125_000_000
    assert record["model"] == "claude-haiku-4-5"
    assert record["scope"] == "raw"
    assert record["kind"] == "settled"
    assert record["tags"] == {"job": 7}
    assert record["t"] > 1_700_000_000_000_000  # Redis time, microseconds


@pytest.mark.parametrize(
    "nano", [0, 1, 127, 128, 255, 65_535, 2**32 - 1, 2**32, 2**32 + 1, 2**52 - 1]
)
def test_ledger_costs_keep_every_integer_width(r: redis.Redis, nano: int) -> None:
    """The scripts write msgpack integers themselves: each width reads back exact."""
    limiter = Limiter(r, f"wide-{nano}", usd=Budget(Decimal(2**52) / 10**9))
    cost = Decimal(nano) / 10**9
    limiter.acquire(usd=cost).settle(usd=cost)
    rows: Any = r.xrange(limiter._scope.keys.ledger)
    ((_, fields),) = rows
    record = msgpack.unpackb(fields[b"rec"], raw=False)
    assert record["cost_nano"] == nano
    assert record["saved_nano"] == 0
    assert abs(record["t"] - server_now_us(r)) < 60_000_000
    assert budget_of(limiter) == (cost, Decimal(0))


def test_a_budgeted_acquire_and_settle_are_one_script_call_each(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the reply carries (an alert, a restored spend), it is read from
    the one call that made it, never asked again."""
    seen: list[Alert] = []
    limiter = team(r, "one-call", on_alert=seen.append)
    limiter.acquire(usd="1").settle(usd="1")  # the deployment check runs once, first
    r.config_resetstat()
    limiter.acquire(usd="1").settle(usd="2")  # $3 spent: the 50 % alert fires
    assert evalsha_calls(r) == 2
    assert [a.threshold for a in seen] == [0.5]
    r.delete(limiter._scope.keys.budget)  # Redis loses the spend: the floor restores it
    r.config_resetstat()
    with caplog.at_level("ERROR", logger="ratelimit"):
        permit = limiter.acquire(usd="1")
    assert evalsha_calls(r) == 1
    assert any("restored" in m or "lost" in m for m in caplog.messages)
    assert permit.settle(usd="0.5").applied
    assert budget_of(limiter) == (Decimal("3.5"), Decimal(0))


async def test_an_async_budgeted_acquire_and_settle_are_one_script_call_each(
    r: redis.Redis, ar: redis.asyncio.Redis
) -> None:
    seen: list[Alert] = []
    budget = Budget("5", tz=PARIS, alerts=(0.5, 0.8, 1.0))
    limiter = ratelimit.asyncio.Limiter(ar, "one-call", usd=budget, on_alert=seen.append)
    await (await limiter.acquire(usd="1")).settle(usd="1")  # after the deployment check
    r.config_resetstat()
    await (await limiter.acquire(usd="1")).settle(usd="2")  # $3 spent: the 50 % alert fires
    with pytest.raises(BudgetExceeded):
        await limiter.try_acquire(usd="3")  # $6 would pass the $5 limit
    assert evalsha_calls(r) == 3
    assert [a.threshold for a in seen] == [0.5]
    state = (await limiter.state()).budget("usd")
    assert (state.spent, state.reserved) == (Decimal(3), Decimal(0))


def test_an_admission_that_states_no_cost_for_the_budget_is_refused(r: redis.Redis) -> None:
    """A budget that is not told the cost guards nothing: say usd=... (or usd=0)."""
    limiter = team(r)
    with pytest.raises(InvalidArgument, match="worst-case cost"):
        limiter.acquire(model=SONNET)
    with pytest.raises(InvalidArgument, match="worst-case cost"):
        limiter.try_acquire()
    assert r.keys("*") == []  # refused before anything was sent
    assert limiter.acquire(usd=0).settle(usd=0).applied
