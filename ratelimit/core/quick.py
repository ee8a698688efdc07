"""The common cases of a plan, made without a flow: one script call each.

A plan of one part (one scope, or a group's scopes in one slot) is most of
what limiters are. Its acquire and its settle are then one script call
each, which the shells make directly: the arguments built here, the reply
read here. Without a budget the permit id carries what a settle needs; with
one, only the compact reply of the common case (admitted, or settled, with
nothing to report) is read here, and any other reply goes to the plan's
flow (:mod:`ratelimit.core.plan`) as its ``first``, so nothing is asked
twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ratelimit.core.amounts import wait_bound_us
from ratelimit.core.calls import ScriptArg, ScriptCall
from ratelimit.core.entries import acquire_record
from ratelimit.core.numbers import MICRO, text
from ratelimit.core.part import PermitRef, new_nonce
from ratelimit.core.plan import Plan
from ratelimit.core.replies import read_notes, timeout_error, triples
from ratelimit.core.results import PermitData, PermitFactory, Settlement
from ratelimit.core.scope import ScopeSpec, validate_name
from ratelimit.errors import AcquireTimeout


class QuickPlan(Plan):
    """A :class:`Plan` with its one-call cases."""

    def __init__(self, scopes: Sequence[ScopeSpec]) -> None:
        super().__init__(scopes)
        single = len(self.parts) == 1
        #: One part, without a budget: an acquire is one call of acquire_rates,
        #: which the shells make without a flow (:meth:`quick_call`).
        self.quick = single and not self.parts[0].budgeted
        #: One part, with a budget: an acquire and a settle that give amounts
        #: only are one call each, which the shells make without a flow in
        #: the common case (:meth:`quick_budget_call`).
        self.quick_budgeted = single and self.parts[0].budgeted

    # -- without a budget --------------------------------------------------------
    def quick_call(
        self, costs: Mapping[str, object], timeout_s: object
    ) -> tuple[dict[str, int], list[ScriptArg]]:
        """A :attr:`quick` plan's acquire: its amounts and the acquire_rates ARGV.

        The shell sends it to ``self.parts[0].keys()`` and reads the reply with
        :meth:`quick_result`; on a Redis error it runs :meth:`acquire` instead,
        which applies ``on_redis_error`` (a retried rate-only acquire may book
        twice: it can under-admit, never over-admit).
        """
        amounts = self.amounts(costs, acquire=True)
        return amounts, [wait_bound_us(timeout_s), *self.parts[0].block(amounts)]

    def quick_result(
        self,
        reply: int | Sequence[Any],
        amounts: dict[str, int],
        timeout_s: object,
        make: PermitFactory = PermitData,
    ) -> PermitData | AcquireTimeout:
        """The permit, or the timeout, of a :meth:`quick_call` reply."""
        if isinstance(reply, int):  # admitted at once, nothing to report
            wait, admit = 0, reply
        else:
            part = self.parts[0]
            if reply[2]:
                read_notes(part, reply[2])
            if int(reply[0]) != 1:
                return timeout_error([part.scopes[0].name], int(reply[3]), timeout_s)
            wait, admit = int(reply[3]), int(reply[1]) + int(reply[3])
        order = self.rate_order

        def ident() -> str:  # made on first use: most callers never settle
            return PermitRef(new_nonce(), (admit,), tuple(amounts[d] for d in order)).encode()

        return make(
            ident,
            amounts,
            wait_s=wait / MICRO,
            admitted_at_us=admit,
            backed=True,
            budget_names=self.budget_names,
        )

    def quick_settle(
        self,
        permit_id: str,
        admitted_at_us: int,
        reserved_micro: Mapping[str, int],
        actual: Mapping[str, object],
        *,
        remaining: Mapping[str, object] | None,
    ) -> ScriptCall:
        """A :attr:`quick` plan's settle of a permit this process holds, without
        a flow (its reservation and admission are at hand); read the reply with
        :meth:`quick_settled`. Without labels only: they go through :meth:`settle`."""
        nonce = permit_id.partition(".")[0]  # the rest is at hand
        amounts = self.amounts(actual, acquire=False)
        figures = self._figures(self.parts[0], self.remaining(remaining or {}))
        return self._lean_settle(
            self.parts[0], nonce, admitted_at_us, reserved_micro, amounts=amounts, figures=figures
        )

    def quick_settled(self, reply: Sequence[Any]) -> Settlement:
        """The outcome of a :meth:`quick_settle` (or cancel) reply."""
        read_notes(self.parts[0], reply[2])
        return Settlement("settled" if int(reply[0]) == 1 else "unknown")

    # -- with a budget ----------------------------------------------------------
    def quick_budget_call(
        self,
        costs: Mapping[str, object],
        timeout_s: object,
        *,
        model: object,
        tags: Mapping[str, object] | None,
        clock_us: int,
    ) -> tuple[str, dict[str, int], ScriptCall]:
        """A :attr:`quick_budgeted` plan's acquire: its nonce, amounts and call.

        The shell sends it and reads the reply with :meth:`quick_booking`;
        any other outcome (a wait, a refusal, something to report, a Redis
        error) goes to :meth:`acquire` with the same nonce, which reads that
        reply (or sends the call again: the permit id makes it count once).
        """
        amounts = self.amounts(costs, acquire=True)
        tail = acquire_record(self.rate_names, costs, model, tags)
        nonce = new_nonce()
        pid = PermitRef(nonce, (), tuple(amounts[d] for d in self.rate_order)).encode()
        part = self.parts[0]
        block = part.block(amounts, self._estimate(clock_us), self._floors)
        args = [pid, wait_bound_us(timeout_s), self.lease_us, 0, *block, *tail]
        return nonce, amounts, ScriptCall("acquire", part.keys(), args)

    def quick_booking(
        self, call: ScriptCall, reply: Any, amounts: dict[str, int], make: PermitFactory
    ) -> PermitData | None:
        """The permit of a :meth:`quick_budget_call` admitted with nothing to
        report (the compact reply, lua/lib/budget.lua); None otherwise."""
        if isinstance(reply, list):
            return None
        fields = text(reply).split()
        now, wait = int(fields[0]), int(fields[1])
        self._observe(now)
        self._see(self.parts[0], triples(fields[2:]))
        return make(
            str(call.args[0]),
            amounts,
            wait_s=wait / MICRO,
            admitted_at_us=now + wait,
            backed=True,
            budget_names=self.budget_names,
        )

    def quick_settle_call(
        self, permit_id: object, actual: Mapping[str, object], *, clock_us: int
    ) -> ScriptCall:
        """A :attr:`quick_budgeted` plan's settle of amounts only (no labels, no
        provider figures); read the reply with :meth:`quick_settlement`, and
        pass any other to :meth:`settle` as ``first``."""
        pid = validate_name(permit_id, "permit id")
        amounts = self.amounts(actual, acquire=False)
        part = self.parts[0]
        block = part.block(amounts, self._estimate(clock_us), self._floors)
        return ScriptCall("settle", part.keys(), [pid, *block, "", b"", b"", "settled", ""])

    def quick_settlement(self, reply: Any) -> Settlement | None:
        """The outcome of a :meth:`quick_settle_call` settled with nothing to
        report (the compact reply); None otherwise."""
        if isinstance(reply, list):
            return None
        fields = text(reply).split()
        self._observe(int(fields[0]))
        self._see(self.parts[0], triples(fields[1:]))
        return Settlement("settled")
