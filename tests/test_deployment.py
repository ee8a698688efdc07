"""The deployment reader against the real scripts: what it computes is what state() reports.

Buckets are checked exactly against lua/state.lua run at the same Redis time
(the script's own reply carries it), and against the bucket arithmetic of
lua/lib/bucket.lua for arbitrary stored strings; budgets and permits against
``limiter.state()`` and what the limiters booked. The reader runs as an ACL
user that may only read, so a write would fail the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimit import Budget, Limiter, LimiterGroup, Rate, deployment
from ratelimit.core.keys import ScopeKeys, group_base
from ratelimit.core.numbers import MICRO, NANO
from ratelimit.deployment import reader as reader_module
from ratelimit.deployment.keys import GroupKey, ScopeKey, group_members, parse_key
from ratelimit.deployment.stored import StoredBucket, parse_budget, parse_permit, parse_rates
from ratelimit.errors import BackendError
from ratelimit.scripts import lua_dir, source

# -- keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "slot"),
    [
        ("team-b", "team-b"),
        ("anthropic:claude-sonnet-4", "anthropic"),
        ("odd{name}%7B", "slot{x}"),
        ("a:x:b", "a:x:b"),
        ("group:not-a-digest", "s"),
    ],
)
def test_every_key_of_a_scope_reads_back_as_its_scope(name: str, slot: str) -> None:
    keys = ScopeKeys(name, slot)
    for kind in ("r", "b", "p", "l", "ledger", "spend", "alerts"):
        assert parse_key(keys.key(kind)) == ScopeKey(slot, name, kind), kind
    marker = keys.key("x:") + "0123456789abcdef1f"
    assert parse_key(marker.encode()) == ScopeKey(slot, name, "x")


def test_group_keys_and_foreign_keys() -> None:
    base = group_base("wrap", ["fam", "budget"])
    digest = base.rsplit(":", 1)[1]
    assert parse_key(f"{base}:p") == GroupKey("wrap", digest, "p")
    assert parse_key(f"{base}:x:0123456789abcdef0") == GroupKey("wrap", digest, "x")
    assert parse_key("rl:v2:{s}:name:unknown") is None
    assert parse_key("rl:v1:{s}:name:r") is None
    assert parse_key("other") is None


def test_a_groups_scopes_are_found_from_its_digest() -> None:
    digest = group_base("wrap", ["fam", "budget"]).rsplit(":", 1)[1]
    candidates = [("wrap", "budget"), ("wrap", "other"), ("wrap", "fam"), ("x", "fam2")]
    assert group_members("wrap", digest, candidates) == (("wrap", "fam"), ("wrap", "budget"))
    # Across slots: the group's scopes of another slot are found too.
    digest = group_base("a", ["in-a", "in-b"]).rsplit(":", 1)[1]
    found = group_members("a", digest, [("a", "in-a"), ("b", "in-b")])
    assert found == (("a", "in-a"), ("b", "in-b"))
    assert group_members("wrap", "0" * 16, candidates) is None


# -- stored strings --------------------------------------------------------------------


def test_unreadable_strings_are_backend_errors() -> None:
    for raw in (b"", b"requests 1 2 3", b"requests x 0 1 0 0 1:1:1", b"r 1 0 1 0 0 0:1:1"):
        with pytest.raises(BackendError):
            parse_rates(raw)
    with pytest.raises(BackendError):
        parse_budget(b"1 2 3")
    with pytest.raises(BackendError):
        parse_permit(b"nonsense")
    record = parse_permit(b"5\n1:requests:1000000 2:$usd:300\nclaude\n0\n")
    assert record.amounts == {(1, "requests"): 1_000_000, (2, "$usd"): 300}


_BUCKET_HARNESS = """
local d = {cap = tonumber(ARGV[1]), num = tonumber(ARGV[2]), den = tonumber(ARGV[3]),
  level = tonumber(ARGV[4]), rem = tonumber(ARGV[5]), rden = tonumber(ARGV[6]),
  ts = tonumber(ARGV[7])}
if d.ts == 0 then d.level = nil end
local now = tonumber(ARGV[8])
local level, _, at = bucket_at(d, now)
level = level - math.ceil((at - now) / d.den * d.num)
return string.format('%d', level)
"""


@st.composite
def stored_buckets(draw: st.DrawFn) -> tuple[StoredBucket, int]:
    """A bucket as the scripts leave it: num * den < 2^50, debt above -2^51, and booked
    ahead by at most a thousand full buckets' worth of refill."""
    den = draw(st.integers(1, 10**7))
    num = draw(st.integers(1, max(1, 2**50 // den - 1)))
    cap = draw(st.integers(1, 2**40))
    level = draw(st.integers(-(2**48), cap))
    rem_den = draw(st.sampled_from([den, den + 1]))
    rem = draw(st.integers(0, rem_den - 1))
    now = draw(st.integers(10**15, 2 * 10**15))
    ahead = min(10**10, 1000 * cap * den // num + 1)
    ts = draw(st.one_of(st.just(0), st.integers(now - 10**10, now + ahead)))
    return StoredBucket("d", level, rem, rem_den, ts, 0, cap, num, den), now


@pytest.fixture(scope="module")
def harness(server_url: str) -> Iterator[Callable[[StoredBucket, int], int]]:
    """lua/lib/bucket.lua's reading of a bucket at a given time, run by the server."""
    client = redis.Redis.from_url(server_url)
    script = client.register_script(
        (lua_dir() / "lib" / "bucket.lua").read_text() + _BUCKET_HARNESS
    )

    def level(b: StoredBucket, now_us: int) -> int:
        args = [b.cap, b.num, b.den, b.level, b.rem, b.rem_den, b.ts, now_us]
        return int(script(keys=[], args=args))

    yield level
    client.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=stored_buckets())
def test_a_bucket_now_is_what_the_script_computes(
    harness: Callable[[StoredBucket, int], int], case: tuple[StoredBucket, int]
) -> None:
    bucket, now_us = case
    assert bucket.available_micro(now_us) == harness(bucket, now_us)


# -- against the real scripts ----------------------------------------------------------


@pytest.fixture
def reader_client(r: redis.Redis, redis_url: str) -> Iterator[redis.Redis]:
    """A client logged in as a user that may read the project's keys and nothing more."""
    r.acl_setuser(
        "status-reader",
        enabled=True,
        reset=True,
        passwords=["+pw"],
        keys=["rl:v2:*"],
        categories=["+@read", "+@connection", "-@write", "-@scripting"],
        commands=["+time", "+scan"],
    )
    url = redis_url.replace("redis://", "redis://status-reader:pw@", 1)
    client = redis.Redis.from_url(url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("rl:v2:{probe}:probe:r", "x")
    yield client
    client.close()
    r.acl_deluser("status-reader")


def lua_levels(r: redis.Redis, limiter: Limiter) -> tuple[int, dict[str, int]]:
    """lua/state.lua's own reading of a rate-only limiter: (Redis time, micro-units per dim)."""
    args: list[str | int] = [0, 1, limiter.name, len(limiter.rates)]
    for name, rate in limiter.rates.items():
        num, den = rate.refill_fraction()
        args += [name, f"{rate.capacity_micro}:{num}:{den}", 0]
    args.append(0)
    reply = r.eval(source("state"), 1, ScopeKeys(limiter.name, limiter.name).rates, *args)
    levels = [int(level) for level, _, _, _ in reply[3]]
    return int(reply[1]), dict(zip(limiter.rates, levels, strict=True))


def stored_levels(r: redis.Redis, limiter: Limiter, now_us: int) -> dict[str, int]:
    raw = r.get(ScopeKeys(limiter.name, limiter.name).rates)
    assert raw is not None
    return {b.dimension: b.available_micro(now_us) for b in parse_rates(raw)}


def test_booked_ahead_in_debt_and_refilling_buckets_read_as_the_script_reads_them(
    r: redis.Redis, reader_client: redis.Redis
) -> None:
    ahead = Limiter(r, "ahead", requests=Rate(1, per=1), tokens=Rate(1000, per=60))
    debt = Limiter(r, "debt", tokens=Rate(100, per=3600))
    refilling = Limiter(r, "refilling", requests=Rate(50, per=1))
    assert ahead.try_acquire(tokens=10) is not None
    booked = threading.Thread(target=lambda: ahead.acquire(timeout=30, tokens=10).settle())
    booked.start()  # books a turn about a second ahead, and sleeps until then
    try:
        deadline = time.monotonic() + 10
        while deadline > time.monotonic():
            now_us, levels = lua_levels(r, ahead)
            if levels["requests"] < 0:
                break
        assert levels["requests"] < 0, levels
        assert stored_levels(r, ahead, now_us) == levels
        snapshot = deployment.read(reader_client)
        reading = snapshot.scope("ahead").rate("requests")
        assert reading.status == "booked ahead"
        assert reading.booked_until_us is not None
        assert reading.booked_until_us > snapshot.now_us
    finally:
        booked.join(timeout=30)

    permit = debt.try_acquire(tokens=10)
    assert permit is not None
    permit.settle(tokens=500)  # used more than the bucket holds: a debt
    now_us, levels = lua_levels(r, debt)
    assert levels["tokens"] < 0
    assert stored_levels(r, debt, now_us) == levels
    assert deployment.read(reader_client).scope("debt").rate("tokens").status == "in debt"

    for _ in range(20):
        refilling.try_acquire()
    now_us, levels = lua_levels(r, refilling)
    assert stored_levels(r, refilling, now_us) == levels
    reading = deployment.read(reader_client).scope("refilling").rate("requests")
    assert reading.status in ("refilling", "full")
    assert reading.capacity == 50
    assert reading.rate_per_s == 50


def test_readings_agree_with_state_read_before_and_after(
    r: redis.Redis, reader_client: redis.Redis
) -> None:
    limiter = Limiter(r, "between", requests=Rate(10, per=60), tokens=Rate(10_000, per=60))
    for _ in range(6):
        limiter.try_acquire(tokens=1_000)
    before = limiter.state()
    reading = deployment.read(reader_client).scope("between")
    after = limiter.state()
    for dim in ("requests", "tokens"):
        low, high = before.rate(dim).available_micro, after.rate(dim).available_micro
        assert low <= reading.rate(dim).available_micro <= high
        assert float(reading.rate(dim).capacity) == after.rate(dim).capacity
        assert float(reading.rate(dim).rate_per_s) == pytest.approx(after.rate(dim).rate_per_s)


def test_full_and_idle_scopes_need_their_configuration_to_be_seen(
    r: redis.Redis, reader_client: redis.Redis
) -> None:
    Limiter(r, "never-used", requests=Rate(5))
    configured = deployment.configured_scopes(
        {"never-used": {"requests": Rate(5), "tokens": Rate(100, per=60)}}
    )
    assert deployment.read(reader_client).scopes == ()
    snapshot = deployment.read(reader_client, configured=configured)
    scope = snapshot.scope("never-used")
    assert scope.idle
    assert scope.configured
    assert not scope.kinds
    assert [(x.dimension, x.available, x.status) for x in scope.rates] == [
        ("requests", Decimal(5), "full"),
        ("tokens", Decimal(100), "full"),
    ]
    assert scope.as_dict()["rates"][1]["rate_per_second"] == "1.666666667"


def test_budgets_read_as_state_reports_them(r: redis.Redis, reader_client: redis.Redis) -> None:
    team = Limiter(r, "team-b", usd=Budget("5", tz="America/New_York"), requests=Rate(100))
    team.acquire(usd="1.25").settle(usd="0.333333333")
    held = team.acquire(usd="0.5")
    state = team.state().budget("usd")

    plain = deployment.read(reader_client).scope("team-b").budget
    assert plain is not None
    assert (plain.spent, plain.reserved, plain.limit) == (state.spent, state.reserved, state.limit)
    assert plain.resets_at == state.resets_at
    assert plain.dimension == "usd"  # named by the permit in flight

    configured = deployment.configured_scopes(
        {"team-b": {"usd": Budget("7", tz="America/New_York"), "requests": Rate(100)}}
    )
    reading = deployment.read(reader_client, configured=configured).scope("team-b")
    budget = reading.budget
    assert budget is not None
    assert (budget.spent, budget.reserved) == (state.spent, state.reserved)
    assert (budget.limit, budget.stored_limit_nano) == (Decimal(7), 5 * NANO)
    assert budget.resets_at == state.resets_at
    assert str(budget.zone) == "America/New_York"
    flight = reading.in_flight
    assert (flight.permits, flight.expired) == (1, 0)
    assert flight.reserved == {"usd": NANO // 2, "requests": MICRO}
    held.cancel()


def test_a_budget_whose_period_ended_has_spent_nothing_in_the_new_one(
    r: redis.Redis, reader_client: redis.Redis
) -> None:
    limiter = Limiter(r, "old", usd=Budget(3))
    limiter.acquire(usd=1).settle(usd=1)
    key = ScopeKeys("old", "old").budget
    # The last write was in a day long gone, with 0.2 USD still reserved.
    r.set(key, f"{10**15} {10**15 + 86_400 * MICRO} {NANO} {NANO // 5} 0 {3 * NANO} 2001-09-09")
    budget = deployment.read(reader_client).scope("old").budget
    assert budget is not None
    assert (budget.spent, budget.reserved, budget.period, budget.resets_at) == (
        Decimal(0),
        Decimal("0.2"),
        None,
        None,
    )
    # A process that has not seen this period's spend (the first one holds a floor).
    state = Limiter(r, "old", usd=Budget(3)).state().budget("usd")
    configured = deployment.configured_scopes({"old": {"usd": Budget(3)}})
    budget = deployment.read(reader_client, configured=configured).scope("old").budget
    assert budget is not None
    assert (budget.spent, budget.reserved, budget.resets_at) == (
        state.spent,
        state.reserved,
        state.resets_at,
    )


def test_a_lost_budget_string_is_read_from_the_spend_counters_as_the_scripts_do(
    r: redis.Redis, reader_client: redis.Redis
) -> None:
    limiter = Limiter(r, "lost", usd=Budget(3))
    limiter.acquire(usd=1, model="m").settle(usd="0.75", model="m")
    limiter.record_saving("0.5", model="m")
    r.delete(ScopeKeys("lost", "lost").budget)
    configured = deployment.configured_scopes({"lost": {"usd": Budget(3)}})
    budget = deployment.read(reader_client, configured=configured).scope("lost").budget
    assert budget is not None
    assert budget.spent == Decimal("0.75") == limiter.state().budget("usd").spent


def test_group_permits_count_for_their_scopes_and_expired_leases_are_not_reclaimed(
    r: redis.Redis, reader_client: redis.Redis
) -> None:
    family = Limiter(r, "wrap:fam", slot="wrap", requests=Rate(100, per=60), lease_s=0.05)
    budget = Limiter(r, "wrap:budget", slot="wrap", usd=Budget(10), lease_s=0.05)
    group = LimiterGroup(family, budget)
    group.acquire(usd="0.25", requests=2)
    group.acquire(usd="0.5")
    permits_key = f"{group_base('wrap', ['wrap:fam', 'wrap:budget'])}:p"
    assert r.hlen(permits_key) == 2
    deadline = time.monotonic() + 10
    while True:
        snapshot = deployment.read(reader_client)
        if snapshot.scope("wrap:budget").in_flight.expired == 2 or time.monotonic() > deadline:
            break
    budget_flight = snapshot.scope("wrap:budget").in_flight
    family_flight = snapshot.scope("wrap:fam").in_flight
    assert (budget_flight.permits, budget_flight.expired) == (2, 2)
    assert budget_flight.reserved == {"usd": 750_000_000}
    assert family_flight.reserved == {"requests": 3 * MICRO}
    assert snapshot.groups == ()
    assert r.hlen(permits_key) == 2  # read, not reclaimed
    assert snapshot.scope("wrap:budget").as_dict()["in_flight"]["reserved"] == {"usd": "0.75"}


def test_reads_are_bounded(
    r: redis.Redis, reader_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = Limiter(r, "many", usd=Budget(10), requests=Rate(1000))
    for _ in range(3):
        limiter.acquire(usd="0.01")
    for i in range(5):
        Limiter(r, f"s{i}", requests=Rate(1, per=60)).try_acquire()
    snapshot = deployment.read(reader_client, max_scopes=3, scan_count=2)
    assert snapshot.truncated
    assert len(snapshot.scopes) == 3
    monkeypatch.setattr(reader_module, "MAX_PERMITS_READ", 2)
    flight = deployment.read(reader_client, names=["many"]).scope("many").in_flight
    assert (flight.permits, flight.summed, flight.reserved) == (3, False, None)


def test_scopes_can_be_picked_by_name_and_an_unreadable_string_is_a_problem(
    r: redis.Redis, reader_client: redis.Redis
) -> None:
    Limiter(r, "a", requests=Rate(1, per=60)).try_acquire()
    Limiter(r, "b", requests=Rate(1, per=60)).try_acquire()
    r.set(ScopeKeys("c", "c").rates, "garbage")
    snapshot = deployment.read(reader_client, names=["a", "c"])
    assert [s.name for s in snapshot.scopes] == ["a", "c"]
    assert snapshot.scope("c").problems
    assert snapshot.scope("c").rates == ()
    assert Fraction(1, 60) == snapshot.scope("a").rate("requests").rate_per_s


def test_an_unreachable_server_is_a_typed_error() -> None:
    from ratelimit.errors import RedisUnavailable

    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    with pytest.raises(RedisUnavailable):
        deployment.read(client)
