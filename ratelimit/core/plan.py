"""How the scopes of a limiter (or a group) are checked, and the flows over them.

A :class:`Plan` groups its scopes by hash slot into parts
(:mod:`ratelimit.core.part`), one script call each, and writes every
operation (acquire, settle, cancel, observe, record a saving, read the
state) once, as a flow of script calls. A part without a budget takes the
lean scripts (``acquire_rates``, ``settle_rates``): nothing of a permit is
kept in Redis; a part with one takes the remembering scripts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from ratelimit.core.amounts import Dimensions, wait_bound_us
from ratelimit.core.calls import Flow, ScriptArg, ScriptCall, ScriptName
from ratelimit.core.entries import (
    CANCELLED,
    LedgerTail,
    UsagePricer,
    acquire_record,
    pack_tags,
    pack_tokens,
    settle_inputs,
    token_value,
    validate_model,
)
from ratelimit.core.numbers import (
    MICRO,
    scaled,
    text,
    to_nano,
    usd,
)
from ratelimit.core.part import Part, PermitRef, new_nonce
from ratelimit.core.replies import (
    budget_refusal,
    full_reply,
    read_notes,
    read_state,
    timeout_error,
)
from ratelimit.core.results import (
    Alert,
    Booking,
    LimiterState,
    PermitData,
    PermitFactory,
    Settlement,
)
from ratelimit.core.scope import OnRedisError, ScopeSpec, validate_name
from ratelimit.errors import (
    AcquireTimeout,
    BackendError,
    BudgetExceeded,
    InvalidArgument,
    RedisUnavailable,
)

log = logging.getLogger("ratelimit")

#: Most reclaim batches one acquire runs before it books (64 permits each).
RECLAIM_CALLS = 32

#: A flow's first script call not sent yet (see Plan._call's ``first``).
UNSENT: Any = object()


class Plan(Dimensions):
    """How the scopes of a limiter (or of a :class:`LimiterGroup`) are checked.

    Scopes that share a slot form one part, checked and debited by one script
    call. Scopes in different slots take one call per part, made in a fixed
    order; when a later part refuses, the parts already admitted are cancelled,
    so nothing leaks.
    """

    def __init__(self, scopes: Sequence[ScopeSpec]) -> None:
        names = [s.name for s in scopes]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"each scope may appear once, got {names}")
        super().__init__(scopes)
        self.on_redis_error: OnRedisError = scopes[0].on_redis_error
        self.lease_us = min(s.lease_us for s in scopes)
        by_slot: dict[str, list[ScopeSpec]] = {}
        for scope in scopes:
            by_slot.setdefault(scope.slot, []).append(scope)
        group = names if len(scopes) > 1 else None
        parts = [Part.of(slot, members, group) for slot, members in by_slot.items()]
        # Lean parts go first: a permit's id holds their admission times, and
        # is complete before a part that keeps the permit under it is called.
        self.parts = [p for p in parts if not p.budgeted] + [p for p in parts if p.budgeted]
        self._lean = sum(not part.budgeted for part in self.parts)
        self._instant_us = 0
        self._instant_known = False
        #: The highest spend seen per budgeted scope, by period label: sent
        #: back as a floor, so a Redis that lost it cannot start from zero.
        self._floors: dict[str, tuple[str, int]] = {}

    # The scripts decide with Redis TIME; the client only has to send budget
    # periods around it. It estimates Redis time from the last reply and, when
    # a script says the estimate was off, sends them again around the time
    # that script reported.
    def _estimate(self, clock_us: int) -> int:
        return self._instant_us if self._instant_known else clock_us

    def _observe(self, now_us: int) -> None:
        self._instant_us, self._instant_known = now_us, True

    # -- one script call -------------------------------------------------------
    def _call(
        self,
        script: ScriptName,
        part: Part,
        *,
        head: list[ScriptArg],
        amounts: Mapping[str, int],
        tail: list[ScriptArg],
        clock_us: int,
        first: Any = UNSENT,
    ) -> Flow[tuple[list[Any], list[Alert]]]:
        """One script call, and the alerts it reported. Its events are reported.

        Sent again when its budget periods missed Redis time (status -2: once
        per period boundary or clock skew), and after reclaiming when permits
        whose lease ended hold reservations (status -3, acquire only).
        ``first``: the reply of this call, already sent by the shell.
        """
        keys = part.keys()
        budgeted = part.budgeted
        instant = self._estimate(clock_us) if budgeted else 0
        alerts: list[Alert] = []
        reclaimed = False
        for _ in range(3):
            marks = [1 if reclaimed else 0] if script == "acquire" else []
            if first is UNSENT:
                args = [*head, *marks, *part.block(amounts, instant, self._floors), *tail]
                reply = yield ScriptCall(script, keys, args)
            else:
                reply, first = first, UNSENT
            reply = full_reply(script, reply)
            # Every reply starts {status, now_us, notes, ...}.
            alerts += read_notes(part, reply[2])
            if not budgeted:
                return reply, alerts
            instant = int(reply[1])
            self._observe(instant)
            status = int(reply[0])
            if status == -3 and not reclaimed:
                alerts += yield from self._reclaim(part, instant)
                reclaimed = True  # the acquire sent next admits whatever ended since
            elif status != -2:
                return reply, alerts
        raise BackendError("Redis time keeps moving out of the budget periods sent")

    def _reclaim(self, part: Part, instant: int) -> Flow[list[Alert]]:
        """End the permits of ``part`` whose lease ended, a batch per call.

        Bounded: RECLAIM_CALLS batches of 64 (lua/lib/reclaim.lua) per acquire;
        a larger backlog is left for the next caller.
        """
        alerts: list[Alert] = []
        zero = dict.fromkeys(self.known, 0)
        for _ in range(RECLAIM_CALLS):
            args = part.block(zero, instant, self._floors)
            reply = yield ScriptCall("reclaim", part.keys(), args)
            alerts += read_notes(part, reply[2])
            instant = int(reply[1])
            self._observe(instant)
            if int(reply[0]) == 1 and not int(reply[3]):
                break
        return alerts

    def _see(self, part: Part, seen: Sequence[Any]) -> None:
        """Keep the highest spend seen per budgeted scope in its latest period."""
        for j, label, spent in seen:
            name, period, nano = part.scopes[int(j) - 1].name, text(label), int(spent)
            kept = self._floors.get(name)
            if kept is None or period > kept[0] or (period == kept[0] and nano > kept[1]):
                self._floors[name] = (period, nano)

    # -- acquire ---------------------------------------------------------------
    def acquire(
        self,
        costs: Mapping[str, object],
        timeout_s: object,
        *,
        model: object,
        tags: Mapping[str, object] | None,
        clock_us: int,
        make: PermitFactory = PermitData,
        nonce: str | None = None,
        first: Any = UNSENT,
    ) -> Flow[Booking]:
        """Book one admission across every part; the shell sleeps ``permit.wait_s`` after.

        ``make`` builds the permit (the shell's own class). After a
        :meth:`~ratelimit.core.quick.QuickPlan.quick_budget_call`, ``nonce``
        is its permit's and ``first`` its reply (UNSENT when it failed: it is
        sent again, and a permit id Redis has already booked returns that
        booking).
        """
        amounts = self.amounts(costs, acquire=True)
        max_wait_us = wait_bound_us(timeout_s)
        ledger_tail: LedgerTail = []
        if self.budget_names:
            ledger_tail = acquire_record(self.rate_names, costs, model, tags)
        elif model is not None or tags is not None:
            validate_model(model), pack_tags(tags)  # labels nothing, but bad input is refused
        nonce = nonce or new_nonce()
        reserved = tuple(amounts[d] for d in self.rate_order)
        admits: list[int] = []  # per lean part: its admission time
        done: list[Part] = []
        alerts: list[Alert] = []
        pid, wait_us, admitted_at = "", 0, 0
        for part in self.parts:
            if part.budgeted and not pid:
                # Every lean part is admitted by now (they go first): the id is
                # complete, and a remembered permit is kept under it.
                pid = PermitRef(nonce, tuple(admits), reserved).encode()
            try:
                if part.budgeted:
                    reply, noted = yield from self._call(
                        "acquire",
                        part,
                        head=[pid, max_wait_us, self.lease_us],
                        amounts=amounts,
                        tail=ledger_tail,
                        clock_us=clock_us,
                        first=first,
                    )
                    self._see(part, reply[4] if int(reply[0]) >= 0 else [])
                else:
                    reply, noted = yield from self._call(
                        "acquire_rates", part, head=[max_wait_us], amounts=amounts, tail=[],
                        clock_us=clock_us,
                    )  # fmt: skip
            except RedisUnavailable as exc:
                ref = PermitRef(nonce, tuple(admits), reserved)
                error = yield from self._unavailable(exc, ref, done)
                if error is None:
                    return Booking(self._unbacked(nonce, amounts, make), None, tuple(alerts))
                return Booking(None, error, tuple(alerts))
            except BackendError:
                # Misconfigured or refused: never unmetered; what earlier parts
                # took goes back.
                yield from self._cancel_parts(
                    PermitRef(nonce, tuple(admits), reserved), done, quiet=True
                )
                raise
            code = int(reply[0])
            alerts += noted
            if code == 1:
                wait_us = max(wait_us, int(reply[3]))
                admit = int(reply[1]) + int(reply[3])
                admitted_at = max(admitted_at, admit)
                if not part.budgeted:
                    admits.append(admit)
                done.append(part)
                continue
            error_: AcquireTimeout | BudgetExceeded
            if code == 0:
                names = [s.name for s in self.scopes]
                error_ = timeout_error(names, int(reply[3]), timeout_s)
            else:  # -1: a budget refused
                error_ = budget_refusal(part, reply)
            yield from self._cancel_parts(PermitRef(nonce, tuple(admits), reserved), done)
            return Booking(None, error_, tuple(alerts))
        # Made on first use: a caller that never settles never pays for the id.
        ident = pid or PermitRef(nonce, tuple(admits), reserved).encode
        permit = make(
            ident,
            amounts,
            wait_s=wait_us / MICRO,
            admitted_at_us=admitted_at,
            backed=True,
            budget_names=self.budget_names,
        )
        return Booking(permit, None, tuple(alerts))

    def _unavailable(
        self, exc: RedisUnavailable, ref: PermitRef, done: list[Part]
    ) -> Flow[AcquireTimeout | None]:
        if self.on_redis_error == "raise":
            yield from self._cancel_parts(ref, done, quiet=True)
            raise exc
        log.warning(
            "Redis unreachable, %s %s: %s",
            "admitting unmetered" if self.on_redis_error == "allow" else "denying",
            [s.name for s in self.scopes],
            exc.__cause__ or exc,
        )
        if self.on_redis_error == "allow":
            return None
        yield from self._cancel_parts(ref, done, quiet=True)
        error = AcquireTimeout("Redis is unreachable and on_redis_error='deny'", 1.0)
        error.__cause__ = exc
        return error

    def _unbacked(self, nonce: str, amounts: dict[str, int], make: PermitFactory) -> PermitData:
        ref = PermitRef(nonce, (0,) * self._lean, tuple(amounts[d] for d in self.rate_order))
        return make(
            ref.encode(),
            amounts,
            wait_s=0.0,
            admitted_at_us=0,
            backed=False,
            budget_names=self.budget_names,
        )

    def _cancel_parts(
        self, ref: PermitRef, parts: list[Part], *, quiet: bool = False
    ) -> Flow[None]:
        """Give back what the first parts admitted when a later one refused."""
        zero = dict.fromkeys(self.known, 0)
        pid = ref.encode()
        for part in parts:
            try:
                yield from self._end(
                    part, ref, pid, zero, ledger_tail=CANCELLED, figures="",
                    clock_us=self._instant_us,
                )  # fmt: skip
            except BackendError:
                if not quiet:
                    raise
                log.exception("could not return permit %s; its lease will end it", pid)

    # -- settle ----------------------------------------------------------------
    def settle(
        self,
        permit_id: object,
        actual: Mapping[str, object],
        *,
        model: object,
        tags: Mapping[str, object] | None,
        usage: object,
        pricer: Callable[[], UsagePricer],
        clock_us: int,
        remaining: Mapping[str, object] | None = None,
        first: Any = UNSENT,
    ) -> Flow[Settlement]:
        """Settle in every part: given dimensions at their actual cost, others as reserved.

        ``remaining`` (units per rate dimension, what the provider reports is
        left) then brings those buckets down to it in the same script call.
        ``first``: the reply of a
        :meth:`~ratelimit.core.quick.QuickPlan.quick_settle_call` of these amounts.
        """
        ref = self._ref(permit_id)
        pid = str(permit_id)
        self.amounts(actual, acquire=False)  # validate before anything is priced
        left = self.remaining(remaining or {})
        ledger_tail: LedgerTail = ["", b"", b"", "settled"]
        values: Mapping[str, object] = actual
        if model is not None or tags is not None or usage is not None:
            values, ledger_tail = settle_inputs(
                self.rate_names,
                self.budget_names,
                actual,
                model=model,
                tags=tags,
                usage=usage,
                pricer=pricer,
            )
        amounts = self.amounts(values, acquire=False)
        return (
            yield from self._finish(
                ref, pid, amounts, ledger_tail, clock_us=clock_us, remaining=left, first=first
            )
        )

    def cancel(self, permit_id: object, *, clock_us: int) -> Flow[Settlement]:
        """Return everything a permit took, in every part."""
        ref = self._ref(permit_id)
        zero = dict.fromkeys(self.known, 0)
        return (
            yield from self._finish(
                ref, str(permit_id), zero, CANCELLED, clock_us=clock_us, remaining={}
            )
        )

    def _ref(self, permit_id: object) -> PermitRef:
        """What the id carries. Without lean parts, the id is only the key of a
        permit Redis remembers: any string is one, perhaps of no permit."""
        pid = validate_name(permit_id, "permit id")
        if not self._lean:
            return PermitRef(pid, (), ())
        return PermitRef.decode(pid, self._lean, len(self.rate_order))

    def _finish(
        self,
        ref: PermitRef,
        pid: str,
        amounts: dict[str, int],
        ledger_tail: LedgerTail,
        *,
        clock_us: int,
        remaining: Mapping[str, int],
        first: Any = UNSENT,
    ) -> Flow[Settlement]:
        applied = False
        overshoot: dict[str, Decimal] = {}
        alerts: list[Alert] = []
        for part in self.parts:
            figures = self._figures(part, remaining)
            reply, noted = yield from self._end(
                part, ref, pid, amounts, ledger_tail=ledger_tail, figures=figures,
                clock_us=clock_us, first=first,
            )  # fmt: skip
            applied = applied or int(reply[0]) == 1
            alerts += noted
            for j, nano in reply[3] if len(reply) > 3 else ():
                overshoot[part.scopes[int(j) - 1].name] = usd(int(nano))
        if overshoot:
            log.warning("permit %s cost more than it reserved: %s", pid, overshoot)
        return Settlement("settled" if applied else "unknown", overshoot, tuple(alerts))

    def _end(
        self,
        part: Part,
        ref: PermitRef,
        pid: str,
        amounts: Mapping[str, int],
        *,
        ledger_tail: LedgerTail,
        figures: str,
        clock_us: int,
        first: Any = UNSENT,
    ) -> Flow[tuple[list[Any], list[Alert]]]:
        """One part's settle (or cancel: all amounts 0), and the alerts it reported."""
        if part.budgeted:
            reply, alerts = yield from self._call(
                "settle",
                part,
                head=[pid],
                amounts=amounts,
                tail=[*ledger_tail, figures],
                clock_us=clock_us,
                first=first,
            )
            self._see(part, reply[4] if int(reply[0]) >= 0 else [])
            return reply, alerts
        # Lean: Redis gets back what the permit did not use (or a debt).
        reserved = dict(zip(self.rate_order, ref.reserved_micro, strict=True))
        admit = ref.admits_us[self.parts.index(part)]  # lean parts come first
        call = self._lean_settle(part, ref.nonce, admit, reserved, amounts=amounts, figures=figures)
        reply = yield call
        return reply, read_notes(part, reply[2])

    def _lean_settle(
        self,
        part: Part,
        nonce: str,
        admit: int,
        reserved: Mapping[str, int],
        *,
        amounts: Mapping[str, int],
        figures: str,
    ) -> ScriptCall:
        """A lean part's settle: Redis gets back what the permit did not use (or a debt)."""
        back = {d: 0 if a < 0 else reserved[d] - a for d, a in amounts.items() if d in reserved}
        keys = [(part.marker_prefix + nonce).encode(), *part.lean_keys]
        args = [admit, admit + self.lease_us, figures, *part.block(back)]
        return ScriptCall("settle_rates", keys, args)

    @staticmethod
    def _figures(part: Part, remaining: Mapping[str, int]) -> str:
        """What the provider says is left, as a settle sends it: "<j>:<dim>:<micro> ..."."""
        return " ".join(
            f"{j}:{d.name}:{remaining[d.name]}"
            for j, scope in enumerate(part.scopes, 1)
            for d in scope.rates
            if d.name in remaining
        )

    # -- provider feedback -------------------------------------------------------
    def observe(
        self, remaining: Mapping[str, object], retry_after_s: object, clock_us: int
    ) -> Flow[int]:
        """Lower the shared buckets to what the provider reports; returns how many dropped."""
        amounts = {name: -1 for name in self.rate_names}
        amounts.update(self.remaining(remaining))
        retry_us = 0 if retry_after_s is None else scaled(retry_after_s, "retry_after", MICRO)
        lowered = 0
        for part in self.parts:
            reply, _ = yield from self._call(
                "observe",
                part,
                head=[1 if part.budgeted else 0],
                amounts=amounts,
                tail=[retry_us],
                clock_us=clock_us,
            )
            lowered += int(reply[3])
        return lowered

    def record_saving(
        self,
        saved_usd: object,
        *,
        model: object,
        tokens: Mapping[str, object] | None,
        tags: Mapping[str, object] | None,
        clock_us: int,
    ) -> Flow[int]:
        """Ledger a call a cached response answered, with the cost it saved."""
        saved = to_nano(saved_usd, "saved_usd")
        amounts = dict.fromkeys(self.budget_names, saved)
        counts = {k: token_value(v) for k, v in (tokens or {}).items()}
        tail: LedgerTail = [
            validate_model(model),
            pack_tokens(counts),
            pack_tags(tags) or pack_tags({}),
        ]
        recorded = 0
        for part in self.parts:
            if not part.budgeted:
                continue
            reply, _ = yield from self._call(
                "record", part, head=[new_nonce()], amounts=amounts, tail=tail, clock_us=clock_us
            )
            recorded += int(reply[3])
        return recorded

    # -- state -----------------------------------------------------------------
    def state(self, clock_us: int) -> Flow[tuple[LimiterState, list[Alert]]]:
        """Every dimension of every scope (a group reports ``"scope.dim"``)."""
        result = LimiterState()
        alerts: list[Alert] = []
        prefix = len(self.scopes) > 1
        for part in self.parts:
            reply, noted = yield from self._call(
                "state",
                part,
                head=[1 if part.budgeted else 0],
                amounts={},
                tail=[],
                clock_us=clock_us,
            )
            alerts += noted
            seen = read_state(part, reply, result, prefix=prefix)
            self._see(part, seen)
        return result, alerts
