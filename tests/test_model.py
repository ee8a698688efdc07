"""The Lua scripts against a pure-Python reference model of the same rules.

The model below is written from the rules, not from the scripts: integer
micro-units, a refill of floor((elapsed * num + rem) / den) capped at the
capacity, waits of ceil(((need - level) * den - rem) / num) microseconds,
denials that change nothing, settles that refund (capped) or charge (into
debt) once, cancels, and rate changes (new rates apply, levels are capped at
the new capacity, the remainder restarts when the denominator changes).

Waiting is booked: a bucket's stored ``ts`` may lie in the future, and the
bucket is then known as of that instant (the admission of the last booking on
it). A booking is admitted at the first instant every dimension it costs can
pay after everyone booked before it on that dimension, and each of those
buckets is charged as of that instant; a dimension it costs nothing is left
alone. A refund goes back only when nobody is booked after the permit on that
dimension (otherwise the units stay spent); a charge beyond the reservation is
a debt after everyone booked. The provider's remaining figures lower a bucket
as of then, and its retry-after holds the buckets empty until it has passed.
``state`` reports a bucket booked ahead as its level then, less the refill
still owed until then.

The server's clock moves on between calls and cannot be stopped, so the model
is driven by the time each script reports (``now_us`` in every reply): given
the same time, model and server must agree exactly on admission, wait and
every level, to the micro-unit and the microsecond. The calls are made by the
package's own flows (``limiter._plan``), and only their raw replies are read
here, each ``[status, now_us, alerts, events, ...]``: acquire then has the
wait, state the levels. A quota without a budget keeps nothing of a permit in
Redis: a replayed acquire books again, and a permit is known by what its id
carries (its admission time and reservation).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ratelimit import Limiter, Rate
from ratelimit.core.base import clock_us
from ratelimit.core.calls import Flow, ScriptCall
from ratelimit.core.part import PermitRef, new_nonce
from ratelimit.core.replies import full_reply

R = TypeVar("R")

# -- the reference model ------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """A bucket as last written: level and remainder at ``ts``, under ``den``."""

    level: int
    rem: int
    den: int
    ts: int


@dataclass(frozen=True)
class ModelRate:
    cap: int
    num: int
    den: int

    @classmethod
    def of(cls, rate: Rate) -> ModelRate:
        num, den = rate.refill_fraction()
        return cls(rate.capacity_micro, num, den)


def refilled(bucket: Bucket | None, rate: ModelRate, now: int) -> tuple[int, int]:
    """(level, remainder) of a bucket at ``now``; an unwritten bucket is full."""
    if bucket is None:
        return rate.cap, 0
    rem = bucket.rem if bucket.den == rate.den else 0
    if bucket.level >= rate.cap:  # also a bucket above a capacity that shrank
        return rate.cap, 0
    gained, rem = divmod(max(0, now - bucket.ts) * rate.num + rem, rate.den)
    level = bucket.level + gained
    return (rate.cap, 0) if level >= rate.cap else (level, rem)


def bucket_at(bucket: Bucket | None, rate: ModelRate, now: int) -> tuple[int, int, int]:
    """(level, remainder, at) of a bucket as of ``at`` = max(now, ts).

    A bucket booked ahead (``ts`` in the future) is known only as of ``ts``:
    nobody can be admitted before then. An unwritten bucket is full now.
    """
    if bucket is None:
        return rate.cap, 0, now
    if bucket.ts > now:
        if bucket.level >= rate.cap:
            return rate.cap, 0, bucket.ts
        return bucket.level, bucket.rem if bucket.den == rate.den else 0, bucket.ts
    return *refilled(bucket, rate, now), now


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def wait_until(level: int, rem: int, need: int, rate: ModelRate) -> int:
    """Whole microseconds until (level, rem) holds ``need``: never a microsecond early."""
    if level >= need:
        return 0
    return ceil_div((need - level) * rate.den - rem, rate.num)


def full_at(bucket: Bucket | None, rate: ModelRate, now: int) -> int:
    """The first instant at which the bucket is full again (``now`` if it is already)."""
    level, rem, at = bucket_at(bucket, rate, now)
    return at + wait_until(level, rem, rate.cap, rate)


#: Debt is floored here (quota.lua), far below anything the machine reaches.
FLOOR = -2_251_799_813_685_248


@dataclass
class Model:
    """A quota's buckets and outstanding permits, as the rules say they must be."""

    rates: dict[str, ModelRate]
    buckets: dict[str, Bucket]
    permits: dict[str, tuple[int, dict[str, int]]]  # id -> (admitted at, reserved)

    def level(self, dim: str, now: int) -> int:
        """What ``state`` reports: booked ahead, the level then less the refill owed until then."""
        rate = self.rates[dim]
        level, _, at = bucket_at(self.buckets.get(dim), rate, now)
        return level - ceil_div((at - now) * rate.num, rate.den)

    def acquire(
        self,
        permit_id: str,
        costs: Mapping[str, int],
        max_wait: int,
        now: int,
        rates: Mapping[str, ModelRate],
    ) -> tuple[int, int]:
        """(admitted, wait or retry-after) for a booking at ``now`` made with ``rates``.

        The rates are the caller's: a call retried after a redeploy still
        carries the rates it was built with. Every call is a new booking.
        """
        charged = {
            d: bucket_at(self.buckets.get(d), r, now) for d, r in rates.items() if costs[d] > 0
        }
        # First come, first served per dimension: after everyone booked on it.
        admit = max(
            [now]
            + [
                at + wait_until(level, rem, costs[d], rates[d])
                for d, (level, rem, at) in charged.items()
            ]
        )
        wait = admit - now
        if 0 <= max_wait < wait:
            return 0, wait
        for dim, (level, rem, at) in charged.items():
            rate = rates[dim]
            # Charged at its admission, refilled (capped) until then.
            then, rem_then = refilled(Bucket(level, rem, rate.den, at), rate, admit)
            self.buckets[dim] = Bucket(then - costs[dim], rem_then, rate.den, admit)
        self.permits[permit_id] = (admit, dict(costs))
        return 1, wait

    def settle(self, permit_id: str, actual: Mapping[str, int], now: int) -> int:
        """1 when the settle applied; 0 for an unknown (already settled) permit."""
        if permit_id not in self.permits:
            return 0
        admitted, reserved = self.permits.pop(permit_id)
        for dim, rate in self.rates.items():
            if dim not in actual:  # not given: the reservation stands
                continue
            back = reserved.get(dim, 0) - actual[dim]
            if back == 0:
                continue
            level, rem, at = bucket_at(self.buckets.get(dim), rate, now)
            if back < 0:  # used more: a debt after everyone booked
                level = max(level + back, FLOOR)
            elif admitted <= now or admitted >= at:
                # The call went out (its unused part comes back after everyone
                # booked), or nobody is booked after it: credited.
                level += back
                if level >= rate.cap:
                    level, rem = rate.cap, 0
            else:  # a booking still in line, others booked after it: stays spent
                continue
            self.buckets[dim] = Bucket(level, rem, rate.den, at)
        return 1

    def observe(self, remaining: Mapping[str, int], retry_after: int, now: int) -> int:
        """What the provider reports: how many buckets were brought down.

        A remaining figure lowers (never raises) the level as of the bucket's
        ``at``; a retry-after holds the bucket empty until ``now`` + it: known
        as of then, at most empty, whatever refilled meanwhile.
        """
        lowered = 0
        for dim, rate in self.rates.items():
            level, rem, at = bucket_at(self.buckets.get(dim), rate, now)
            new_level, new_rem, new_at = level, rem, at
            if 0 <= remaining.get(dim, -1) < level:
                new_level, new_rem = remaining[dim], 0
            if retry_after > 0 and at < now + retry_after:
                new_at = now + retry_after
                new_level, new_rem = refilled(
                    Bucket(new_level, new_rem, rate.den, at), rate, new_at
                )
                if new_level > 0:
                    new_level, new_rem = 0, 0
            if new_at != at or new_level < level:
                lowered += 1
                self.buckets[dim] = Bucket(new_level, new_rem, rate.den, new_at)
        return lowered


# -- driving the real scripts ---------------------------------------------------

#: Rate sets the machine switches between. Awkward fractions (7/3, 1000/7,
#: 5/11, 9990/73...), capacities that are not multiples of anything, a
#: capacity that shrinks with the same denominator (requests 7 -> 4.5 keeps
#: den 3, and images 5/11 -> 25/11 keeps den 11: the remainder must survive
#: those changes and restart on the others).
RATE_SETS: tuple[dict[str, Rate], ...] = (
    {
        "requests": Rate(7, per=3),
        "tokens": Rate(1000, per=7, burst=13),
        "images": Rate(0.5, per=1.1, burst=2.5),
    },
    {
        "requests": Rate(7, per=3, burst=4.5),
        "tokens": Rate(999, per=7.3, burst=20),
        "images": Rate(3, per=0.9),
    },
    {
        "requests": Rate(50, per=1.7),
        "tokens": Rate(13),
        "images": Rate(2.5, per=1.1, burst=2),
    },
    {
        "requests": Rate(1, per=0.37, burst=3),
        "tokens": Rate(1000, per=7, burst=13),
        "images": Rate(0.5, per=1.1, burst=2.5),
    },
)


def limiter_for(r: redis.Redis, name: str, rates: Mapping[str, Rate]) -> Limiter:
    return Limiter(
        r, name, requests=rates["requests"], tokens=rates["tokens"], images=rates["images"]
    )


def run(limiter: Limiter, flow: Flow[R]) -> tuple[R, ScriptCall, list[Any]]:
    """Drive one of the package's flows; its result, and its last script call and raw reply."""
    exchanges: list[tuple[ScriptCall, list[Any]]] = []
    try:
        call = next(flow)
        while True:
            assert isinstance(call, ScriptCall)
            raw = limiter._scripts[call.script](keys=call.keys, args=call.args)
            reply = list(full_reply(call.script, raw))
            assert isinstance(reply, list)
            exchanges.append((call, reply))
            call = flow.send(raw)
    except StopIteration as stop:
        result: R = stop.value
    assert len(exchanges) == 1  # one scope without a budget: one call
    return result, *exchanges[0]


def units(micro: int) -> Decimal:
    """Micro-units as the exact Decimal of units the client converts back."""
    return Decimal(micro).scaleb(-6)


def cost_strategy(cap: int) -> st.SearchStrategy[int]:
    """Micro-unit costs, biased to the edges: nothing, a full bucket, just under it."""
    return st.one_of(
        st.just(0),
        st.just(cap),
        st.integers(max(0, cap - 1000), cap),
        st.integers(0, cap),
        st.integers(1, 50),
    )


_names = itertools.count()


@dataclass(frozen=True)
class Booked:
    """A booking tried: the call, its costs, max wait and rates, and its permit (if any)."""

    call: ScriptCall
    costs: dict[str, int]
    max_wait: int
    rates: dict[str, ModelRate]
    permit_id: str | None


def stored_rates(raw: bytes | str | None) -> dict[str, tuple[Bucket, ModelRate]]:
    """A rates key's buckets and the rates stored with them (lib/rates.lua)."""
    tokens = [] if raw is None else (raw.decode() if isinstance(raw, bytes) else raw).split()
    found = {}
    for k in range(0, len(tokens), 7):
        name, level, rem, rem_den, ts, _seen, setting = tokens[k : k + 7]
        cap, num, den = (int(v) for v in setting.split(":"))
        found[name] = (
            Bucket(int(level), int(rem), int(rem_den), int(ts)),
            ModelRate(cap, num, den),
        )
    return found


def normalized(bucket: Bucket, rate: ModelRate, now: int) -> Bucket:
    """A bucket as it reads under ``rate`` from ``now`` on: a bucket full by now
    is just full, whenever it filled (no bucket, one written full later, or one
    refilled since, read the same). A bucket stored with ts 0 is full at any
    capacity (lib/rates.lua)."""
    if bucket.ts == 0:
        return Bucket(rate.cap, 0, rate.den, now)
    level, _, at = bucket_at(bucket, rate, now)
    if level == rate.cap and at == now:
        return Bucket(rate.cap, 0, rate.den, now)
    return bucket


def forget_holders(r: redis.Redis, key: str) -> None:
    """As if no process had used the stored rates for longer than their hold
    (lib/rates.lua): the next caller's own rates apply at once."""
    raw = r.get(key)
    if not isinstance(raw, bytes):
        return
    tokens = raw.decode().split()
    for k in range(0, len(tokens), 7):
        tokens[k + 5] = "0"  # when a process holding the setting last wrote
    r.set(key, " ".join(tokens), keepttl=True)


class ScriptsMatchModel(RuleBasedStateMachine):
    """Random operations on one quota; the server and the model must agree exactly."""

    r: redis.Redis

    def __init__(self) -> None:
        super().__init__()
        self.name = f"model-{next(_names)}"
        self.limiter = limiter_for(self.r, self.name, RATE_SETS[0])
        self.model = Model({d: ModelRate.of(r) for d, r in RATE_SETS[0].items()}, {}, {})
        # Every booking ever tried (settled ones too, to settle or retry them
        # again; refused ones too, with no permit): the call that made it, its
        # costs, max wait and rates, and the permit's id.
        self.bookings: list[Booked] = []

    # -- plumbing ------------------------------------------------------------
    def all_full(self, now: int) -> bool:
        return all(self.model.level(d, now) == r.cap for d, r in self.model.rates.items())

    def check_ttl(self, now: int) -> None:
        """After a write at ``now``: the state hash outlives every bucket's refill.

        A missing hash reads as full buckets, so one that expired before they
        are all full again would hand out capacity for free.
        """
        pipe = self.r.pipeline(transaction=True)
        pipe.time()
        pipe.pexpiretime(self.limiter._scope.keys.rates)
        (seconds, micros), expire_ms = pipe.execute()
        if expire_ms == -2:  # gone already: only allowed once every bucket is full
            assert self.all_full(int(seconds) * 1_000_000 + int(micros)), self.model
            return
        assert expire_ms != -1, "a written state hash must expire once idle"
        full = max(full_at(self.model.buckets.get(d), r, now) for d, r in self.model.rates.items())
        # Redis keeps expiry in whole milliseconds: allow one for its rounding.
        assert expire_ms * 1000 >= full - 1000, self.model

    def pick(self, data: st.DataObject, *, current_rates_only: bool = False) -> Booked:
        # In booking order, not by the random ids: a replayed draw picks the same one.
        ids = [
            booking
            for booking in self.bookings
            if not current_rates_only or booking.rates is self.model.rates
        ]
        # Often one of the latest: most likely still outstanding, and booked
        # ahead of or behind others (refunds are credited only at the end of
        # the line). Which one, by position only, never by the server's clock.
        recent = st.integers(1, min(3, len(ids))).map(lambda k: ids[-k])
        return data.draw(st.one_of(st.sampled_from(ids), recent), label="permit")

    def book(self, costs: dict[str, int], max_wait: int) -> None:
        """Book through the scripts and the model alike; they must agree."""
        timeout = None if max_wait < 0 else units(max_wait)
        flow = self.limiter._plan.acquire(
            {d: units(c) for d, c in costs.items()},
            timeout,
            model=None,
            tags=None,
            clock_us=clock_us(),
        )
        booking, call, reply = run(self.limiter, flow)
        admitted, now, wait = int(reply[0]), int(reply[1]), int(reply[3])
        permit_id = None if booking.permit is None else booking.permit.id
        if booking.permit is not None:
            assert booking.permit.reserved_micro == costs
            assert booking.permit.admitted_at_us == now + wait
        self.record(call, costs, max_wait, permit_id, admitted=admitted, now=now, wait=wait)

    def record(
        self,
        call: ScriptCall,
        costs: dict[str, int],
        max_wait: int,
        permit_id: str | None,
        *,
        admitted: int,
        now: int,
        wait: int,
    ) -> None:
        """Check a booking's outcome against the model's, and keep it."""
        rates = self.model.rates
        expected = self.model.acquire(permit_id or "", costs, max_wait, now, rates)
        assert (admitted, wait) == expected, f"at {now}: {self.model}"
        # Kept even when refused (settling it is then a no-op, retrying it a
        # new try): what hypothesis may draw next must not depend on the
        # server's clock, or it cannot replay and shrink a failure.
        self.bookings.append(Booked(call, costs, max_wait, rates, permit_id if admitted else None))
        if admitted:
            self.check_ttl(now)

    # -- operations ------------------------------------------------------------
    @rule(data=st.data())
    def acquire(self, data: st.DataObject) -> None:
        costs = {
            d: data.draw(cost_strategy(rate.cap), label=f"cost {d}")
            for d, rate in self.model.rates.items()
        }
        max_wait = data.draw(
            st.one_of(st.just(-1), st.just(0), st.integers(0, 10_000_000)), label="max_wait_us"
        )
        self.book(costs, max_wait)

    @rule(data=st.data())
    def join_line(self, data: st.DataObject) -> None:
        """Book without a time limit, so lines form (and refunds land inside them)."""
        costs = {
            d: data.draw(st.integers(0, rate.cap // 2), label=f"cost {d}")
            for d, rate in self.model.rates.items()
        }
        self.book(costs, -1)

    @precondition(lambda self: any(b.rates is self.model.rates for b in self.bookings))
    @rule(data=st.data())
    def retry_acquire(self, data: st.DataObject) -> None:
        """The same call again, as after a lost reply: Redis keeps nothing of a
        permit without a budget, so it is a new booking (never the first one
        handed out twice). (Only calls built with the rates in force: an old
        client writing with old rates sets the TTL for them, and the model
        does not follow expiries; see change_rates.)
        """
        booked = self.pick(data, current_rates_only=True)
        call = booked.call
        reply = full_reply(
            call.script, self.limiter._scripts[call.script](keys=call.keys, args=call.args)
        )
        admitted, now, wait = int(reply[0]), int(reply[1]), int(reply[3])
        # The id the client would have made of that reply.
        plan = self.limiter._plan
        reserved = tuple(booked.costs[d] for d in plan.rate_order)
        permit_id = PermitRef(new_nonce(), (now + wait,), reserved).encode()
        self.record(
            call, booked.costs, booked.max_wait, permit_id, admitted=admitted, now=now, wait=wait
        )

    @precondition(lambda self: self.bookings)
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        """Settle some dimensions (refund or charge), keep the others' reservation."""
        permit_id = self.pick(data).permit_id
        actual: dict[str, int] = {}
        for d, rate in self.model.rates.items():
            if data.draw(st.booleans(), label=f"settle {d}?"):
                actual[d] = data.draw(st.integers(0, 2 * rate.cap), label=f"actual {d}")
        if permit_id is None:
            return  # a refused booking: there is nothing to settle
        flow = self.limiter._plan.settle(
            permit_id,
            {d: units(a) for d, a in actual.items()},
            model=None,
            tags=None,
            usage=None,
            pricer=self.limiter._pricing,
            clock_us=clock_us(),
        )
        _, _, reply = run(self.limiter, flow)
        status, now = (int(v) for v in reply[:2])
        assert status == self.model.settle(permit_id, actual, now), f"at {now}: {self.model}"
        self.check_ttl(now)

    @precondition(lambda self: self.bookings)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        permit_id = self.pick(data).permit_id
        if permit_id is None:
            return  # a refused booking: there is nothing to cancel
        _, _, reply = run(self.limiter, self.limiter._plan.cancel(permit_id, clock_us=clock_us()))
        status, now = (int(v) for v in reply[:2])
        everything = dict.fromkeys(self.model.rates, 0)
        assert status == self.model.settle(permit_id, everything, now), f"at {now}: {self.model}"
        self.check_ttl(now)

    @rule(data=st.data())
    def observe(self, data: st.DataObject) -> None:
        """The provider's figures: units remaining (some dimensions), maybe a retry-after."""
        remaining = {
            d: data.draw(
                st.one_of(cost_strategy(rate.cap), st.integers(rate.cap, 2 * rate.cap)),
                label=f"remaining {d}",
            )
            for d, rate in self.model.rates.items()
            if data.draw(st.booleans(), label=f"remaining {d}?")
        }
        retry_after = data.draw(
            st.one_of(st.just(0), st.integers(1, 50), st.integers(1, 300_000)),
            label="retry_after_us",
        )
        flow = self.limiter._plan.observe(
            {d: units(v) for d, v in remaining.items()},
            units(retry_after) if retry_after else None,
            clock_us(),
        )
        lowered, _, reply = run(self.limiter, flow)
        now = int(reply[1])
        assert int(reply[3]) == lowered
        expected = self.model.observe(remaining, retry_after, now)
        assert lowered == expected, f"at {now}: {self.model}"
        self.check_ttl(now)

    @rule(new=st.integers(0, len(RATE_SETS) - 1))
    def change_rates(self, new: int) -> None:
        """Recreate the Limiter with other rates, as a redeploy would.

        A new rate applies from the first call made with it, but the state
        hash's TTL was computed under the old rates, and only a call that
        writes a bucket extends it (documented: an idle quota may expire, that
        is be full again, sooner than the new rates would refill it; see
        test_an_idle_quota_expires_at_the_rate_it_was_last_written_with). The
        model does not follow expiries, so at the switch the test gives the
        hash the TTL a write under the new rates would: never shorter than it
        was, and at least until every bucket is full again under the new rates.
        """
        key = self.limiter._scope.keys.rates
        # The redeployed processes replace the old ones: nobody holds the old rates.
        forget_holders(self.r, key)
        pipe = self.r.pipeline(transaction=True)
        pipe.time()
        pipe.get(key)
        pipe.pttl(key)
        pipe.persist(key)  # nothing expires while the new TTL is computed
        (seconds, micros), raw, old_ttl_ms, _ = pipe.execute()
        server_now = int(seconds) * 1_000_000 + int(micros)
        # A bucket stored with ts 0 is full at any capacity, like a missing one.
        present = {dim for dim, (bucket, _) in stored_rates(raw).items() if bucket.ts > 0}
        for dim in list(self.model.buckets):
            if dim not in present:
                # Its bucket is gone, or stored as full: the key expired (allowed
                # once every bucket was full) and a later write wrote it full. A
                # missing bucket is a full one, at whatever capacity comes next;
                # the model's full bucket would stay at the old capacity.
                rate = self.model.rates[dim]
                assert self.model.level(dim, server_now) == rate.cap, self.model
                del self.model.buckets[dim]
        self.limiter = limiter_for(self.r, self.name, RATE_SETS[new])
        self.model.rates = {d: ModelRate.of(r) for d, r in RATE_SETS[new].items()}
        if present:
            full = max(
                full_at(self.model.buckets.get(d), r, server_now)
                for d, r in self.model.rates.items()
            )
            self.r.pexpire(key, max(old_ttl_ms, -(-(full - server_now) // 1000) + 1))
        # A booking of nothing is admitted at once and touches no bucket, even
        # one booked ahead or in debt.
        self.book(dict.fromkeys(self.model.rates, 0), -1)

    @rule(ms=st.integers(0, 30))
    def pause(self, ms: int) -> None:
        """Let the clock run so refills (and their remainders) add up."""
        time.sleep(ms / 1000)

    @invariant()
    def levels_match(self) -> None:
        (state, _), _, reply = run(self.limiter, self.limiter._plan.state(clock_us()))
        now = int(reply[1])
        server = {d: state.rate(d).available_micro for d in state}
        model = {d: self.model.level(d, now) for d in self.model.rates}
        assert server == model, f"at {now}: {self.model}"

    @invariant()
    def stored_buckets_match(self) -> None:
        """What is stored, too: each bucket and the rates it is kept under.

        Levels read back capped, so a bucket stored wrong would only show
        after a later rate change; comparing what is stored (as it reads under
        its rates) shows it at once.
        """
        pipe = self.r.pipeline(transaction=True)
        pipe.time()
        pipe.get(self.limiter._scope.keys.rates)
        (seconds, micros), raw = pipe.execute()
        server_now = int(seconds) * 1_000_000 + int(micros)
        stored = stored_rates(raw)
        for dim, rate in self.model.rates.items():
            if dim not in stored:  # the key expired: only allowed once the bucket is full
                assert self.model.level(dim, server_now) == rate.cap, dim
                continue
            # The rates it is kept under are those of its last write (a rate
            # change applies from the next one); it reads under the new ones.
            bucket, _ = stored[dim]
            model = self.model.buckets.get(dim)
            if model is None:  # never written by the model: stored as full
                model = Bucket(rate.cap, 0, rate.den, server_now)
            assert normalized(bucket, rate, server_now) == normalized(model, rate, server_now), dim
        assert set(stored) <= set(self.model.rates)


def test_scripts_match_the_reference_model(r: redis.Redis) -> None:
    machine = type("Machine", (ScriptsMatchModel,), {"r": r})
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )


# -- fixed examples the model's arithmetic must get right ------------------------


def test_model_rounds_waits_up_and_refills_down() -> None:
    """The model itself, on hand-computed numbers (so it is not just the scripts twice)."""
    rate = ModelRate(cap=7_000_000, num=7, den=3)  # 7 units per 3 s
    # 3 us refill 7 micro-units; 1 us refills 2 with a third left over.
    assert refilled(Bucket(0, 0, 3, 100), rate, 101) == (2, 1)
    assert refilled(Bucket(0, 1, 3, 100), rate, 101) == (2, 2)
    assert refilled(Bucket(0, 2, 3, 100), rate, 101) == (3, 0)
    assert refilled(Bucket(0, 2, 5, 100), rate, 101) == (2, 1)  # other den: rem restarts
    assert refilled(Bucket(6_999_999, 0, 3, 0), rate, 10**9) == (7_000_000, 0)
    assert refilled(Bucket(9_000_000, 2, 3, 0), rate, 0) == (7_000_000, 0)  # shrunk capacity
    # 1 micro-unit short with 2/3 already refilled: a third more, so 1 us.
    assert wait_until(-1, 2, 0, rate) == 1
    assert wait_until(-1, 0, 0, rate) == 1  # 3/7 us, rounded up
    assert wait_until(-7, 0, 0, rate) == 3
    assert wait_until(-8, 0, 0, rate) == 4  # 24/7 = 3.43 us
    assert wait_until(5, 0, 5, rate) == 0


def test_model_books_ahead_and_credits_only_the_end_of_the_line() -> None:
    """The booking rules of the model, on hand-computed numbers."""
    a, b = ModelRate(cap=10, num=1, den=1), ModelRate(cap=10, num=2, den=1)
    model = Model({"a": a, "b": b}, {}, {})
    assert model.acquire("p1", {"a": 10, "b": 0}, -1, 0, model.rates) == (1, 0)
    assert model.buckets == {"a": Bucket(0, 0, 1, 0)}  # b costs nothing: untouched
    # a is empty: 4 us for 4 units. b is full: charged at the admission, 4 us later.
    assert model.acquire("p2", {"a": 4, "b": 10}, -1, 0, model.rates) == (1, 4)
    assert model.buckets == {"a": Bucket(0, 0, 1, 4), "b": Bucket(0, 0, 1, 4)}
    # Behind p2 on b (1 us for 2 units after it), not on a, whose line it does not join.
    assert model.acquire("p3", {"a": 0, "b": 2}, -1, 1, model.rates) == (1, 4)
    assert model.buckets == {"a": Bucket(0, 0, 1, 4), "b": Bucket(0, 0, 1, 5)}
    assert model.acquire("p4", {"a": 0, "b": 1}, 2, 1, model.rates) == (0, 5)  # nothing taken
    # Booked ahead, state reports the level then less the refill still owed.
    assert (model.level("a", 1), model.level("b", 1)) == (-3, -8)
    assert bucket_at(model.buckets["b"], b, 1) == (0, 0, 5)
    assert bucket_at(model.buckets["b"], b, 7) == (4, 0, 7)
    # p2 cancelled: last in line on a, credited there; p3 is booked after it on b,
    # so its 10 units there stay spent.
    assert model.settle("p2", {"a": 0, "b": 0}, 2) == 1
    assert model.buckets == {"a": Bucket(4, 0, 1, 4), "b": Bucket(0, 0, 1, 5)}
    assert model.acquire("p5", {"a": 5, "b": 0}, -1, 2, model.rates) == (1, 3)
    assert model.buckets["a"] == Bucket(0, 0, 1, 5)
    # p3 used 5 of the 2 it reserved: 3 more as a debt after everyone booked.
    assert model.settle("p3", {"b": 5}, 3) == 1
    assert model.buckets["b"] == Bucket(-3, 0, 1, 5)
    assert model.settle("p3", {"b": 0}, 3) == 0  # once only
    # The last booking on a: its refund is credited as of its admission.
    assert model.settle("p5", {"a": 0}, 3) == 1
    assert model.buckets["a"] == Bucket(5, 0, 1, 5)
    assert model.settle("p1", {"a": 0}, 9) == 1  # at <= now: nobody booked ahead
    assert model.buckets["a"] == Bucket(10, 0, 1, 9)
    # The provider says 3 remain on a; then to retry after 5 us: both held empty till then.
    assert model.observe({"a": 3}, 0, 9) == 1
    assert model.buckets["a"] == Bucket(3, 0, 1, 9)
    assert model.observe({}, 5, 10) == 2
    assert model.buckets == {"a": Bucket(0, 0, 1, 15), "b": Bucket(0, 0, 1, 15)}
    assert model.observe({"a": 0, "b": 20}, 3, 11) == 0  # held past 14 already, not above 0


def test_a_new_rate_applies_from_the_last_write(r: redis.Redis) -> None:
    """A fixed walk through a rate change, each number checked against the model and by hand."""
    first = Limiter(r, "q", requests=Rate(7, per=3))
    model = Model({"requests": ModelRate.of(Rate(7, per=3))}, {}, {})
    flow = first._plan.acquire({"requests": 7}, None, model=None, tags=None, clock_us=clock_us())
    booking, _, reply = run(first, flow)
    admitted, now, wait = int(reply[0]), int(reply[1]), int(reply[3])
    assert booking.permit is not None
    assert (admitted, wait) == (1, 0)
    assert model.acquire(booking.permit.id, {"requests": 7_000_000}, -1, now, model.rates) == (1, 0)
    time.sleep(0.01)
    forget_holders(r, first._scope.keys.rates)  # the first process is gone, long enough
    second = Limiter(r, "q", requests=Rate(1000, per=7, burst=2))
    model.rates = {"requests": ModelRate.of(Rate(1000, per=7, burst=2))}
    (state, _), _, reply = run(second, second._plan.state(clock_us()))
    later = int(reply[1])
    level = state.rate("requests").available_micro
    assert level == model.level("requests", later)
    # From empty at `now`, 1000/7 micro-units per microsecond, under the new cap of 2 units.
    assert level == min(2_000_000, (later - now) * 1000 // 7)


def test_an_idle_quota_expires_at_the_rate_it_was_last_written_with(r: redis.Redis) -> None:
    """Documented (README): a new rate applies from the first call made with it; until
    then the bucket refills at the rate it was last written with, so an idle quota
    may already be full again.

    The state hash's TTL is set by the writes, under the writer's rates: after a
    switch to a slower rate, an idle hash still expires when the old rate would
    have refilled it, and reads as full. From the first write under the new rate
    on, the hash lives as long as the new rate needs.
    """
    fast = Limiter(r, "q", tokens=Rate(100, per=0.1))  # empty -> full again in 0.1 s
    assert fast.try_acquire(tokens=100) is not None
    key = fast._scope.keys.rates
    assert 0 < r.pttl(key) <= 102  # 0.1 s, plus the scripts' millisecond of margin
    time.sleep(0.25)  # long past it
    slow = Limiter(r, "q", tokens=Rate(100, per=3600))  # now 100 per hour
    assert r.exists(key) == 0  # expired: a full bucket, whatever the new rate
    assert slow.state().rate("tokens").available_micro == 100_000_000
    assert slow.try_acquire(tokens=50) is not None
    # Written under the slow rate: 50 tokens at 100/h are 30 minutes' refill.
    assert r.pttl(key) > 1_790_000
    time.sleep(0.25)
    # 0.25 s at 100/h refill 0.007 tokens (0.1 would take 3.6 s): still about 50.
    assert 50 <= slow.state().rate("tokens").available < 50.1
    assert slow.try_acquire(tokens=50.1) is None
