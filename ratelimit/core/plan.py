"""How the scopes of a limiter (or a group) are checked, and the flows over them.

A :class:`Plan` groups its scopes by hash slot into :class:`Part` objects, one
script call each, and writes every operation (acquire, settle, cancel,
observe, record a saving, read the state) once, as a flow of script calls.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

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
from ratelimit.core.keys import group_permit_keys
from ratelimit.core.numbers import (
    MAX_BUDGET_NANO,
    MAX_CAPACITY_MICRO,
    MICRO,
    exact,
    scaled,
    text,
    to_micro,
    to_nano,
    usd,
)
from ratelimit.core.results import (
    Alert,
    Booking,
    BudgetState,
    DimensionState,
    LimiterState,
    PermitData,
    Settlement,
)
from ratelimit.core.scope import OnRedisError, ScopeSpec, validate_name
from ratelimit.errors import (
    AcquireTimeout,
    BackendError,
    BudgetExceeded,
    CostExceedsCapacity,
    InvalidArgument,
    RedisUnavailable,
    UnknownDimension,
)

log = logging.getLogger("ratelimit")


@dataclass(frozen=True)
class Part:
    """The scopes of one hash slot, checked by one script call, with their permits keys."""

    scopes: tuple[ScopeSpec, ...]
    permits_key: str
    leases_key: str

    def keys(self) -> list[str]:
        """The KEYS of a script call (lua/lib/args.lua): permits, leases, then 4 per scope."""
        return [
            self.permits_key,
            self.leases_key,
            *(key for scope in self.scopes for key in scope.keys.script_keys()),
        ]

    def block(self, amounts: Mapping[str, int], instant_us: int) -> list[int | str]:
        args: list[int | str] = [len(self.scopes)]
        for scope in self.scopes:
            args += scope.block(amounts, instant_us)
        return args


class Plan:
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
        self.scopes = tuple(scopes)
        self.on_redis_error: OnRedisError = scopes[0].on_redis_error
        self.lease_us = min(s.lease_us for s in scopes)
        by_slot: dict[str, list[ScopeSpec]] = {}
        for scope in scopes:
            by_slot.setdefault(scope.slot, []).append(scope)
        self.parts: list[Part] = []
        for slot, members in by_slot.items():
            if len(scopes) == 1:
                permits, leases = members[0].keys.permits, members[0].keys.leases
            else:
                permits, leases = group_permit_keys(slot, names)
            self.parts.append(Part(tuple(members), permits, leases))
        self.budget_names = frozenset(s.budget.name for s in scopes if s.budget)
        self.rate_names = frozenset(d.name for s in scopes for d in s.rates)
        self._instant_us = 0
        self._instant_known = False

    # The scripts decide with Redis TIME; the client only has to send budget
    # periods around it. It estimates Redis time from the last reply and, when
    # a script says the estimate was off, sends them again around the time
    # that script reported.
    def _estimate(self, clock_us: int) -> int:
        return self._instant_us if self._instant_known else clock_us

    def _observe(self, now_us: int) -> None:
        self._instant_us, self._instant_known = now_us, True

    # -- amounts ---------------------------------------------------------------
    def amounts(self, costs: Mapping[str, object], *, acquire: bool) -> dict[str, int]:
        """Validated amounts per dimension: micro-units, or nano-dollars for budgets.

        For acquire, ``requests`` defaults to 1 and other dimensions to 0; for
        settle, a dimension not given keeps its reservation (-1).
        """
        known = self.rate_names | self.budget_names
        for name in costs:
            if name not in known:
                raise UnknownDimension(f"no dimension {name!r} here; there are {sorted(known)}")
        amounts: dict[str, int] = {}
        for name in sorted(known):
            if name not in costs:
                amounts[name] = (MICRO if name == "requests" else 0) if acquire else -1
            elif name in self.budget_names:
                amounts[name] = to_nano(costs[name], f"{'cost' if acquire else 'actual'} {name!r}")
            else:
                amounts[name] = to_micro(costs[name], f"{'cost' if acquire else 'actual'} {name!r}")
        for name, amount in amounts.items():
            bound = MAX_BUDGET_NANO if name in self.budget_names else MAX_CAPACITY_MICRO
            if amount > bound:
                raise CostExceedsCapacity(
                    f"{name}={costs[name]!r} is too large to be stored exactly"
                )
        if acquire:
            for scope in self.scopes:
                for d in scope.rates:
                    if amounts[d.name] > d.capacity_micro:
                        raise CostExceedsCapacity(
                            f"a cost of {Decimal(amounts[d.name]) / MICRO} {d.name} can never "
                            f"fit in {scope.name!r}, whose bucket holds "
                            f"{Decimal(d.capacity_micro) / MICRO}"
                        )
                b = scope.budget
                if b and amounts[b.name] > b.limit_nano:
                    raise CostExceedsCapacity(
                        f"a cost of ${usd(amounts[b.name])} can never fit in the "
                        f"${usd(b.limit_nano)} budget of {scope.name!r}"
                    )
        return amounts

    # -- acquire ---------------------------------------------------------------
    def acquire(
        self,
        costs: Mapping[str, object],
        timeout_s: object,
        *,
        model: object,
        tags: Mapping[str, object] | None,
        clock_us: int,
    ) -> Flow[Booking]:
        """Book one admission across every part; the shell sleeps ``permit.wait_s`` after."""
        amounts = self.amounts(costs, acquire=True)
        ledger_tail = acquire_record(self.rate_names, costs, model, tags)
        if timeout_s is None:
            max_wait_us = -1
        else:
            wait = exact(timeout_s, "timeout")
            if wait < 0:
                raise InvalidArgument(f"timeout must not be negative, got {timeout_s!r}")
            max_wait_us = math.floor(wait * MICRO)
        permit_id = secrets.token_hex(16)
        admitted: list[Part] = []
        alerts: list[Alert] = []
        wait_us, admitted_at = 0, 0
        error: AcquireTimeout | BudgetExceeded | None = None
        for part in self.parts:
            try:
                reply = yield from self._call_with_periods(
                    "acquire",
                    part,
                    head=[permit_id, max_wait_us, self.lease_us],
                    amounts=amounts,
                    tail=ledger_tail,
                    clock_us=clock_us,
                )
            except RedisUnavailable as exc:
                error = yield from self._unavailable(exc, admitted, permit_id)
                if error is None:
                    return Booking(self._unbacked(permit_id, amounts), None, tuple(alerts))
                return Booking(None, error, tuple(alerts))
            code, now_us = int(reply[0]), int(reply[1])
            alerts += self._alerts(part, reply[2])
            if code == 1:
                admitted.append(part)
                wait_us = max(wait_us, int(reply[3]))
                admitted_at = max(admitted_at, now_us + int(reply[3]))
                continue
            if code == 0:
                error = self._timeout(int(reply[3]), timeout_s)
            else:  # -1: a budget refused
                error = self._budget_refusal(part, reply)
            yield from self._cancel_parts(admitted, permit_id)
            return Booking(None, error, tuple(alerts))
        permit = PermitData(
            permit_id, amounts, wait_us / MICRO, admitted_at, True, budget_names=self.budget_names
        )
        return Booking(permit, None, tuple(alerts))

    def _call_with_periods(
        self,
        script: ScriptName,
        part: Part,
        *,
        head: list[ScriptArg],
        amounts: Mapping[str, int],
        tail: list[ScriptArg],
        clock_us: int,
    ) -> Flow[list[Any]]:
        """One script call; sent again once when its budget periods missed Redis time."""
        instant = self._estimate(clock_us)
        for _ in range(2):
            reply = yield ScriptCall(
                script, part.keys(), [*head, *part.block(amounts, instant), *tail]
            )
            # Every reply starts {status, now_us, alerts, ...}.
            instant = int(reply[1])
            self._observe(instant)
            if int(reply[0]) == -2:
                continue  # our periods missed Redis time: send them around it
            return list(reply)
        raise BackendError("Redis time keeps moving out of the budget periods sent")

    def _unavailable(
        self, exc: RedisUnavailable, admitted: list[Part], permit_id: str
    ) -> Flow[AcquireTimeout | None]:
        if self.on_redis_error == "raise":
            yield from self._cancel_parts(admitted, permit_id, quiet=True)
            raise exc
        log.warning(
            "Redis unreachable, %s %s: %s",
            "admitting unmetered" if self.on_redis_error == "allow" else "denying",
            [s.name for s in self.scopes],
            exc.__cause__ or exc,
        )
        if self.on_redis_error == "allow":
            return None
        yield from self._cancel_parts(admitted, permit_id, quiet=True)
        error = AcquireTimeout("Redis is unreachable and on_redis_error='deny'", 1.0)
        error.__cause__ = exc
        return error

    def _unbacked(self, permit_id: str, amounts: dict[str, int]) -> PermitData:
        return PermitData(permit_id, amounts, 0.0, 0, False, budget_names=self.budget_names)

    def _cancel_parts(
        self, parts: list[Part], permit_id: str, *, quiet: bool = False
    ) -> Flow[None]:
        zero = dict.fromkeys(self.rate_names | self.budget_names, 0)
        for part in parts:
            try:
                yield from self._call_with_periods(
                    "settle",
                    part,
                    head=[permit_id],
                    amounts=zero,
                    tail=CANCELLED,
                    clock_us=self._instant_us,
                )
            except BackendError:
                if not quiet:
                    raise
                log.exception("could not return permit %s; its lease will reclaim it", permit_id)

    def _timeout(self, wait_us: int, timeout_s: object) -> AcquireTimeout:
        names = [s.name for s in self.scopes]
        if wait_us < 0:
            return AcquireTimeout(f"{names} are booked too far ahead to take this", math.inf)
        return AcquireTimeout(
            f"{names} would admit this in {wait_us / MICRO:.3f}s, later than the timeout of "
            f"{timeout_s}s",
            wait_us / MICRO,
        )

    @staticmethod
    def _budget_refusal(part: Part, reply: Sequence[Any]) -> BudgetExceeded:
        scope = part.scopes[int(reply[3]) - 1]
        if scope.budget is None:  # pragma: no cover - the script names a budgeted scope
            raise BackendError(f"unexpected budget refusal {reply!r}")
        budget = scope.budget.budget
        spent, reserved, limit = usd(int(reply[4])), usd(int(reply[5])), usd(int(reply[6]))
        resets_at = datetime.fromtimestamp(int(reply[7]) / MICRO, budget.zone)
        return BudgetExceeded(
            f"the ${limit} per {budget.per} budget of {scope.name!r} cannot take this: "
            f"${spent} spent and ${reserved} reserved; it resets at {resets_at.isoformat()}",
            scope=scope.name,
            spent=spent,
            reserved=reserved,
            limit=limit,
            resets_at=resets_at,
        )

    @staticmethod
    def _alerts(part: Part, raw: Sequence[Any]) -> list[Alert]:
        alerts = []
        for j, ppm, spent, limit, period in raw:
            scope = part.scopes[int(j) - 1]
            alerts.append(
                Alert(
                    threshold=int(ppm) / MICRO,
                    scope=scope.name,
                    spent=usd(int(spent)),
                    limit=usd(int(limit)),
                    period=text(period),
                )
            )
        return alerts

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
    ) -> Flow[Settlement]:
        """Settle in every part: given dimensions at their actual cost, others as reserved.

        ``remaining`` (units per rate dimension, what the provider reports is
        left) then brings those buckets down to it in the same script call.
        """
        pid = validate_name(permit_id, "permit id")
        self.amounts(actual, acquire=False)  # validate before anything is priced
        left = self._remaining(remaining or {})
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
        return (yield from self._finish(pid, amounts, ledger_tail, clock_us, left))

    def _remaining(self, remaining: Mapping[str, object]) -> dict[str, int]:
        """Provider figures per rate dimension, validated, in micro-units."""
        left: dict[str, int] = {}
        for name, value in remaining.items():
            if name not in self.rate_names:
                raise UnknownDimension(
                    f"no rate dimension {name!r}; there are {sorted(self.rate_names)}"
                )
            left[name] = to_micro(value, f"remaining {name!r}")
        return left

    def cancel(self, permit_id: object, *, clock_us: int) -> Flow[Settlement]:
        """Return everything a permit took, in every part."""
        pid = validate_name(permit_id, "permit id")
        zero = dict.fromkeys(self.rate_names | self.budget_names, 0)
        return (yield from self._finish(pid, zero, CANCELLED, clock_us, {}))

    def _finish(
        self,
        pid: str,
        amounts: dict[str, int],
        ledger_tail: LedgerTail,
        clock_us: int,
        remaining: Mapping[str, int],
    ) -> Flow[Settlement]:
        applied = False
        overshoot: dict[str, Decimal] = {}
        alerts: list[Alert] = []
        for part in self.parts:
            figures = " ".join(
                f"{j}:{d.name}:{remaining[d.name]}"
                for j, scope in enumerate(part.scopes, 1)
                for d in scope.rates
                if d.name in remaining
            )
            reply = yield from self._call_with_periods(
                "settle",
                part,
                head=[pid],
                amounts=amounts,
                tail=[*ledger_tail, figures],
                clock_us=clock_us,
            )
            applied = applied or int(reply[0]) == 1
            alerts += self._alerts(part, reply[2])
            for j, nano in reply[3]:
                overshoot[part.scopes[int(j) - 1].name] = usd(int(nano))
        if overshoot:
            log.warning("permit %s cost more than it reserved: %s", pid, overshoot)
        return Settlement("settled" if applied else "unknown", overshoot, tuple(alerts))

    # -- provider feedback -------------------------------------------------------
    def observe(
        self, remaining: Mapping[str, object], retry_after_s: object, clock_us: int
    ) -> Flow[int]:
        """Lower the shared buckets to what the provider reports; returns how many dropped."""
        amounts = {name: -1 for name in self.rate_names}
        amounts.update(self._remaining(remaining))
        retry_us = 0 if retry_after_s is None else scaled(retry_after_s, "retry_after", MICRO)
        lowered = 0
        for part in self.parts:
            reply = yield from self._call_with_periods(
                "observe", part, head=[], amounts=amounts, tail=[retry_us], clock_us=clock_us
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
            reply = yield from self._call_with_periods(
                "record",
                part,
                head=[secrets.token_hex(16)],
                amounts=amounts,
                tail=tail,
                clock_us=clock_us,
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
            reply = yield from self._call_with_periods(
                "state", part, head=[], amounts={}, tail=[], clock_us=clock_us
            )
            alerts += self._alerts(part, reply[2])
            levels, budgets = iter(reply[3]), iter(reply[4])
            for scope in part.scopes:
                label = f"{scope.name}." if prefix else ""
                for d in scope.rates:
                    level = int(next(levels))
                    result[label + d.name] = DimensionState(
                        available=level / MICRO,
                        capacity=d.capacity_micro / MICRO,
                        rate_per_s=d.rate.rate_per_s,
                        available_micro=level,
                    )
                if scope.budget:
                    spent, reserved, stop = (int(v) for v in next(budgets))
                    budget = scope.budget.budget
                    result[label + scope.budget.name] = BudgetState(
                        spent=usd(spent),
                        reserved=usd(reserved),
                        limit=usd(scope.budget.limit_nano),
                        resets_at=datetime.fromtimestamp(stop / MICRO, budget.zone),
                        period=budget.per,
                    )
        return result, alerts
