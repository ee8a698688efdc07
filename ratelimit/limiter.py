"""The synchronous client: a thin shell that drives the flows of :mod:`ratelimit.core`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

import redis
import redis.cluster
import redis.exceptions

from ratelimit import checks, ledger, metrics, scripts
from ratelimit.backend import (
    FailoverWait,
    SyncClient,
    backend_error,
    connect,
    drop_idle_connections,
)
from ratelimit.checks import Verdict
from ratelimit.core.base import AlertCallback, LimiterBase, clock_us
from ratelimit.core.calls import Flow, ScriptCall
from ratelimit.core.entries import UsagePricer
from ratelimit.core.plan import UNSENT, log
from ratelimit.core.results import Alert, Booking, LimiterState, PermitData, Settlement
from ratelimit.core.scope import DEFAULT_LEASE_S, OnRedisError
from ratelimit.core.settings import Retention
from ratelimit.errors import AcquireTimeout, RedisRefused, RedisUnavailable
from ratelimit.ledger import LedgerEntry
from ratelimit.pricing import Pricing
from ratelimit.transport import LeanScript

__all__ = ["Limiter", "LimiterGroup", "Permit", "SyncClient", "connect", "drive"]

R = TypeVar("R")


def drive(client: SyncClient, flow: Flow[R], scripts: Mapping[str, LeanScript] | None = None) -> R:
    """Run a core flow on ``client``: each call it yields goes to Redis, each reply back.

    ``scripts`` carries out its script calls; a flow of plain reads (the
    ledger's) needs none.
    """
    failover = FailoverWait()
    try:
        call = next(flow)
        while True:
            try:
                if isinstance(call, ScriptCall):
                    if scripts is None:
                        raise TypeError(f"no scripts to run {call.script!r} with")
                    reply = scripts[call.script](keys=call.keys, args=call.args)
                else:
                    reply = getattr(client, call.method)(*call.args, **call.kwargs)
            except redis.exceptions.RedisError as exc:
                pause = failover.next_pause(exc)
                if pause is not None:
                    drop_idle_connections(client)  # so that the retry finds the new primary
                    time.sleep(pause)
                    continue  # the same call again, to the new primary
                error = backend_error(exc)
                error.__cause__ = exc
                call = flow.throw(error)
            else:
                call = flow.send(reply)
    except StopIteration as stop:
        result: R = stop.value
        return result


#: The clients (and kinds of scope: with a budget or not) whose deployment was
#: checked in this process.
_checked_clients: weakref.WeakKeyDictionary[Any, set[bool]] = weakref.WeakKeyDictionary()


class _Shell(LimiterBase):
    """What a Limiter and a LimiterGroup share: admission over a plan of scopes."""

    client: SyncClient
    _scripts: dict[str, LeanScript]

    _deployment_ok = False

    def _default_pricer(self) -> UsagePricer:
        return Pricing.default()

    def _drive(self, flow: Flow[R]) -> R:
        return drive(self.client, flow, self._scripts)

    def _permit(
        self,
        ident: str | Callable[[], str],
        reserved_micro: dict[str, int],
        *,
        wait_s: float,
        admitted_at_us: int,
        backed: bool,
        budget_names: frozenset[str],
    ) -> PermitData:
        return Permit(
            self,
            ident,
            reserved_micro,
            wait_s=wait_s,
            admitted_at_us=admitted_at_us,
            backed=backed,
            budget_names=budget_names,
        )

    def _deliver(self, alerts: tuple[Alert, ...] | list[Alert]) -> None:
        for alert in alerts:
            handler = self._alert_handlers.get(alert.scope)
            if handler is None:
                continue
            try:
                outcome = handler(alert)
                if inspect.isawaitable(outcome):
                    asyncio.run(_awaited(outcome))
            except Exception:
                log.exception("the on_alert callback failed for %s", alert)

    def check_deployment(self) -> list[Verdict]:
        """Check the server against what the limiter's promises need.

        Logs a ``WARNING`` for each problem (an eviction policy that can take
        the limiter's keys, budgets without AOF, an old server, replicas
        without ``min-replicas-to-write``) and returns every verdict. Raises
        :class:`~ratelimit.errors.RedisMisconfigured` when the Redis user may
        not run a command the scripts need. It runs by itself before a
        client's first admission; ``ratelimit doctor`` runs it from a shell.
        """
        kind = bool(self._plan.budget_names)
        info: Mapping[str, Any] | Exception
        try:
            info = self.client.info()
        except redis.exceptions.RedisError as exc:
            error = backend_error(exc)
            if isinstance(error, RedisUnavailable | RedisRefused):
                raise error from exc
            info = exc  # INFO refused (a managed service, fakeredis): said, and go on
        keys, args = self._check_call()
        try:
            denied = self._scripts["check"](keys=keys, args=args)
        except redis.exceptions.RedisError as exc:
            raise backend_error(exc) from exc
        verdicts = checks.conclude(checks.info_verdicts(info, budgets=kind), denied)
        _checked_clients.setdefault(self.client, set()).add(kind)
        self._deployment_ok = True
        return verdicts

    def _checked(self) -> None:
        """The deployment checks, once per client and kind of scope, before admitting.

        An unreachable Redis, or one in a failover, is checked later: the call
        itself says what happened (and retries through the failover).
        """
        if self._deployment_ok:
            return
        if bool(self._plan.budget_names) in _checked_clients.get(self.client, ()):
            self._deployment_ok = True
            return
        with contextlib.suppress(RedisUnavailable, RedisRefused):
            self.check_deployment()

    def _book(
        self,
        costs: Mapping[str, object],
        timeout_s: object,
        model: str | None,
        tags: Mapping[str, object] | None,
    ) -> Booking:
        plan = self._plan
        if plan.quick and model is None and tags is None:
            amounts, args = plan.quick_call(costs, timeout_s)  # bad input raises here
            self._checked()
            try:
                reply = self._scripts["acquire_rates"](keys=plan.parts[0].lean_keys, args=args)
            except redis.exceptions.RedisError:
                pass  # the flow below tries again, and applies on_redis_error
            else:
                result = plan.quick_result(reply, amounts, timeout_s, self._permit)
                if isinstance(result, AcquireTimeout):
                    booking = Booking(None, result, ())
                else:
                    booking = Booking(result, None, ())
                metrics.booked(plan.scopes, booking)
                return booking
        nonce, first = None, UNSENT
        if plan.quick_budgeted:
            nonce, amounts, call = plan.quick_budget_call(
                costs, timeout_s, model=model, tags=tags, clock_us=clock_us()
            )  # bad input raises here
            self._checked()
            try:
                first = self._scripts["acquire"](keys=call.keys, args=call.args)
            except redis.exceptions.RedisError:
                pass  # the flow below sends it again, and applies on_redis_error
            else:
                permit = plan.quick_booking(call, first, amounts, self._permit)
                if permit is not None:
                    booking = Booking(permit, None, ())
                    metrics.booked(plan.scopes, booking)
                    return booking
        self._checked()
        booking = self._drive(
            plan.acquire(
                costs,
                timeout_s,
                model=model,
                tags=tags,
                clock_us=clock_us(),
                make=self._permit,
                nonce=nonce,
                first=first,
            )
        )
        metrics.booked(plan.scopes, booking)
        self._deliver(booking.alerts)
        return booking

    def try_acquire(
        self, *, model: str | None = None, tags: Mapping[str, object] | None = None, **costs: Any
    ) -> Permit | None:
        """A permit if every dimension can pay ``costs`` right now, else None; never waits.

        Raises :class:`~ratelimit.errors.BudgetExceeded` when a budget cannot
        take the cost this period. ``model`` and ``tags`` label the ledger entry.
        """
        booking = self._book(costs, 0, model, tags)
        if booking.permit is not None:
            return booking.permit  # type: ignore[return-value]  # made by self._permit
        if isinstance(booking.error, AcquireTimeout):
            return None
        raise booking.error  # type: ignore[misc]  # a BudgetExceeded

    def acquire(
        self,
        timeout: float | None = None,
        *,
        model: str | None = None,
        tags: Mapping[str, object] | None = None,
        **costs: Any,
    ) -> Permit:
        """Wait for a permit for ``costs``: one script call books the place in line.

        Raises :class:`~ratelimit.errors.AcquireTimeout` at once, consuming
        nothing, when admission would come later than ``timeout`` seconds, and
        :class:`~ratelimit.errors.BudgetExceeded` at once when a budget cannot
        take the cost. Interrupted while waiting, it returns its booking first.
        """
        booking = self._book(costs, timeout, model, tags)
        if booking.permit is None:
            raise booking.error  # type: ignore[misc]
        permit: Permit = booking.permit  # type: ignore[assignment]  # made by self._permit
        if permit.wait_s > 0:
            try:
                time.sleep(permit.wait_s)
            except BaseException:
                permit.cancel()
                raise
        return permit

    def settle(
        self,
        permit_id: str,
        *,
        model: str | None = None,
        tags: Mapping[str, object] | None = None,
        usage: object = None,
        remaining: Mapping[str, object] | None = None,
        **actual: Any,
    ) -> Settlement:
        """Settle a permit by id, from any process: see :meth:`Permit.settle`.

        ``remaining`` (units per rate dimension, what the provider's headers
        say is left) brings those buckets down to it in the same script call,
        after the settle: :meth:`observe` without another round trip.
        """
        plan, first = self._plan, UNSENT
        if (
            plan.quick_budgeted
            and model is None
            and tags is None
            and usage is None
            and not remaining
        ):
            call = plan.quick_settle_call(permit_id, actual, clock_us=clock_us())
            try:
                first = self._scripts["settle"](keys=call.keys, args=call.args)
            except redis.exceptions.RedisError:
                pass  # the flow below sends it again (a permit settles once)
            else:
                settled = plan.quick_settlement(first)
                if settled is not None:
                    return settled
        settlement = self._drive(
            plan.settle(
                permit_id,
                actual,
                model=model,
                tags=tags,
                usage=usage,
                pricer=self._pricing,
                clock_us=clock_us(),
                remaining=remaining,
                first=first,
            )
        )
        self._deliver(settlement.alerts)
        return settlement

    def cancel(self, permit_id: str) -> Settlement:
        """Return everything a permit took, by id: see :meth:`Permit.cancel`."""
        return self._drive(self._plan.cancel(permit_id, clock_us=clock_us()))

    def observe(self, *, retry_after: float | None = None, **remaining: Any) -> int:
        """Tell every process what the provider says: bring the shared buckets down.

        ``remaining`` gives units left per rate dimension (the provider's
        ``anthropic-ratelimit-*-remaining`` headers); ``retry_after`` (seconds,
        from a 429) holds every bucket back so no process is admitted sooner.
        Buckets are only ever lowered. Returns how many were.
        """
        return self._drive(self._plan.observe(remaining, retry_after, clock_us()))

    def record_saving(
        self,
        saved_usd: object,
        *,
        model: str | None = None,
        tokens: Mapping[str, object] | None = None,
        tags: Mapping[str, object] | None = None,
    ) -> int:
        """Ledger a call that a cached response answered, with the cost it saved.

        Budgets and rates are untouched; each budgeted scope gets a
        ``"cache_hit"`` entry. Returns how many scopes recorded it.
        """
        return self._drive(
            self._plan.record_saving(
                saved_usd, model=model, tokens=tokens, tags=tags, clock_us=clock_us()
            )
        )

    def state(self) -> LimiterState:
        """Each dimension as Redis sees it now (a group names them ``"scope.dim"``)."""
        result, alerts = self._drive(self._plan.state(clock_us()))
        self._deliver(alerts)
        return result


async def _awaited(outcome: Any) -> None:
    await outcome


class Limiter(_Shell):
    """A scope (a named quota) shared by every process that builds a Limiter of its ``name``.

    ``client`` is a ``redis.Redis``, a ``redis.cluster.RedisCluster`` or a URL;
    each keyword names a dimension: a :class:`Rate` (``requests``,
    ``input_tokens``...) or one :class:`Budget` (``usd``). A dimension named
    ``requests`` costs 1 per acquire unless the caller says otherwise; the
    others cost 0 unless given.

    ``lease_s`` is how long a permit may stay unsettled after its admission
    before a later call reclaims it; ``slot`` is the Redis Cluster hash tag of
    the scope's keys (default: its name; give scopes one slot to check them in
    one call); ``on_redis_error`` says what admission does while Redis is
    unreachable: ``"raise"`` (:class:`~ratelimit.errors.RedisUnavailable`),
    ``"allow"`` (unmetered) or ``"deny"``; ``on_alert`` is called (sync or
    async) with each budget :class:`Alert` this process's calls report;
    ``retention`` sets how long the ledger keeps its entries; ``pricing``
    prices a settle's ``usage`` (default: the packaged price table).
    """

    def __init__(
        self,
        client: SyncClient | str,
        name: str,
        *,
        on_redis_error: OnRedisError = "raise",
        lease_s: float = DEFAULT_LEASE_S,
        slot: str | None = None,
        on_alert: AlertCallback | None = None,
        retention: Retention | None = None,
        pricing: Pricing | None = None,
        **dimensions: Any,
    ) -> None:
        self._configure(
            name,
            dimensions,
            slot=slot,
            lease_s=lease_s,
            on_redis_error=on_redis_error,
            retention=retention,
            on_alert=on_alert,
            pricer=pricing,
        )
        self.client = connect(client) if isinstance(client, str) else client
        self._scripts = {
            script: LeanScript(self.client, self.client.register_script(scripts.source(script)))
            for script in scripts.SCRIPT_NAMES
        }

    def ledger_entries(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        count: int | None = None,
    ) -> list[LedgerEntry]:
        """This scope's ledger entries settled between ``since`` and ``until`` (oldest first)."""
        return self._drive(ledger.read_entries(self._scope.keys, since, until, count))

    def spend(self, day: str | None = None) -> dict[str, dict[str, Decimal]]:
        """USD settled per day and model, ``{"2026-11-28": {"claude-...": Decimal}}``.

        ``day`` (``YYYY-MM-DD`` in the ledger's zone) keeps one day only.
        """
        return self._drive(ledger.read_spend(self._scope.keys, day))

    def saved(self, day: str | None = None) -> dict[str, dict[str, Decimal]]:
        """USD that cached responses saved, per day and model (see :meth:`record_saving`)."""
        return self._drive(ledger.read_saved(self._scope.keys, day))

    def alert_history(self, count: int | None = None) -> list[Alert]:
        """The alerts this scope's budget has fired, oldest first (the stream keeps 1000)."""
        return self._drive(ledger.read_alerts(self._scope.keys, count))


class LimiterGroup(_Shell):
    """Several limiters checked as one: a request must pass every scope, or none.

    Costs are given by dimension name and charged to every scope that has that
    dimension (``usd`` to a team's and an org's budget alike). Scopes built
    with the same ``slot`` are checked and debited by one script call; scopes
    in different slots take one call per slot, and when a later one refuses,
    the earlier ones are cancelled, so nothing leaks. The group uses the first
    limiter's client.
    """

    def __init__(self, *limiters: Limiter) -> None:
        self._configure_group(limiters)
        self.limiters = limiters
        self.client = limiters[0].client
        self._scripts = limiters[0]._scripts


class Permit(PermitData):
    """Admission for one call; settle it with the real usage when the call is done.

    Used as a context manager, leaving the block by an exception before a
    settle cancels the permit (the call is taken not to have gone out).
    """

    __slots__ = ("limiter",)

    def __init__(
        self,
        limiter: _Shell,
        ident: str | Callable[[], str],
        reserved_micro: dict[str, int],
        *,
        wait_s: float,
        admitted_at_us: int,
        backed: bool,
        budget_names: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(
            ident,
            reserved_micro,
            wait_s=wait_s,
            admitted_at_us=admitted_at_us,
            backed=backed,
            budget_names=budget_names,
        )
        self.limiter = limiter

    def settle(
        self,
        *,
        model: str | None = None,
        tags: Mapping[str, object] | None = None,
        usage: object = None,
        remaining: Mapping[str, object] | None = None,
        **actual: Any,
    ) -> Settlement:
        """Charge what the call really used, once.

        Each given dimension gets back ``reserved - actual`` (after everyone
        already booked on it, capped at its capacity) or is debited the
        excess, a debt that later callers wait for; dimensions not given keep
        their reservation. A budget turns its reservation into the actual
        cost (given as ``usd=...``, or priced from ``usage`` and ``model``) and
        the ledger records it. A second settle of the same permit, from this
        process or any other, changes nothing and reports ``"unknown"``.
        """
        if not self.backed:
            self.settlement = Settlement("unbacked")
        elif model is None and tags is None and usage is None and self.limiter._plan.quick:
            self.settlement = self._quick(actual, remaining)
        else:
            self.settlement = self.limiter.settle(
                self.id, model=model, tags=tags, usage=usage, remaining=remaining, **actual
            )
        return self.settlement

    def cancel(self) -> Settlement:
        """Give back what the permit took (the call never went out), also in line.

        A booking still in line with others booked after it on a dimension
        keeps that dimension's slot spent: handing it to a newcomer would
        squeeze the newcomer in just before them.
        """
        if not self.backed:
            self.settlement = Settlement("unbacked")
        elif self.limiter._plan.quick:
            self.settlement = self._quick(dict.fromkeys(self.reserved_micro, 0), None)
        else:
            self.settlement = self.limiter.cancel(self.id)
        return self.settlement

    def _quick(
        self, actual: Mapping[str, Any], remaining: Mapping[str, object] | None
    ) -> Settlement:
        """Settle (or cancel) without a flow: one script call, the plan's quick path."""
        plan = self.limiter._plan
        call = plan.quick_settle(
            self.id, self.admitted_at_us, self.reserved_micro, actual, remaining=remaining
        )
        try:
            reply = self.limiter._scripts[call.script](keys=call.keys, args=call.args)
        except redis.exceptions.RedisError:
            # The flow tries again (the settle marker makes a repeat count once)
            # and reports the error as every settle does.
            return self.limiter.settle(self.id, remaining=remaining, **actual)
        return plan.quick_settled(reply)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.settlement is None:
            try:
                self.cancel()
            except Exception:
                log.exception("could not cancel permit %s", self.id)
