"""The asyncio client: the same names and behaviour as :mod:`ratelimit`, awaitable.

``ratelimit.asyncio.Limiter`` mirrors ``ratelimit.Limiter`` as
``redis.asyncio`` mirrors ``redis``: switching is one import. Both drive the
same flows of :mod:`ratelimit.core`; only the I/O differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions
from redis.commands.core import AsyncScript

from ratelimit import checks, ledger, metrics, scripts
from ratelimit.backend import (
    AsyncClient,
    FailoverWait,
    backend_error,
    drop_idle_connections_async,
)
from ratelimit.backend import connect_async as connect
from ratelimit.batching import ScriptBatcher, batcher_for
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

__all__ = ["AsyncClient", "Limiter", "LimiterGroup", "Permit", "connect", "drive"]

R = TypeVar("R")


async def drive(
    client: AsyncClient,
    flow: Flow[R],
    scripts: Mapping[str, AsyncScript] | None = None,
    batcher: ScriptBatcher | None = None,
) -> R:
    """Asyncio twin of :func:`ratelimit.limiter.drive`.

    With a ``batcher``, script calls that meet other tasks' on the wire go
    out together in one pipeline (:mod:`ratelimit.batching`).
    """
    failover = FailoverWait()
    try:
        call = next(flow)
        while True:
            try:
                if isinstance(call, ScriptCall):
                    if scripts is None:
                        raise TypeError(f"no scripts to run {call.script!r} with")
                    script = scripts[call.script]
                    if batcher is None:
                        reply = await script(keys=call.keys, args=call.args)
                    else:
                        reply = await batcher.call(script, call.keys, call.args)
                else:
                    reply = await getattr(client, call.method)(*call.args, **call.kwargs)
            except redis.exceptions.RedisError as exc:
                pause = failover.next_pause(exc)
                if pause is not None:
                    await drop_idle_connections_async(client)  # the retry finds the new primary
                    await asyncio.sleep(pause)
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
    """Asyncio twin of the sync shell: what a Limiter and a LimiterGroup share."""

    client: AsyncClient
    _scripts: dict[str, AsyncScript]
    _batcher: ScriptBatcher | None

    _deployment_ok = False
    _check_lock: asyncio.Lock | None = None

    def _default_pricer(self) -> UsagePricer:
        return Pricing.default()

    async def _drive(self, flow: Flow[R]) -> R:
        return await drive(self.client, flow, self._scripts, self._batcher)

    async def _run(self, script: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """One script call, batched with other tasks' when they meet on the wire."""
        if self._batcher is None:
            return await self._scripts[script](keys=keys, args=args)
        return await self._batcher.call(self._scripts[script], keys, args)

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

    async def _deliver(self, alerts: tuple[Alert, ...] | list[Alert]) -> None:
        for alert in alerts:
            handler = self._alert_handlers.get(alert.scope)
            if handler is None:
                continue
            try:
                outcome = handler(alert)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("the on_alert callback failed for %s", alert)

    async def check_deployment(self) -> list[Verdict]:
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
            info = await self.client.info()
        except redis.exceptions.RedisError as exc:
            error = backend_error(exc)
            if isinstance(error, RedisUnavailable | RedisRefused):
                raise error from exc
            info = exc  # INFO refused (a managed service, fakeredis): said, and go on
        keys, args = self._check_call()
        try:
            denied = await self._scripts["check"](keys=keys, args=args)
        except redis.exceptions.RedisError as exc:
            raise backend_error(exc) from exc
        verdicts = checks.conclude(checks.info_verdicts(info, budgets=kind), denied)
        _checked_clients.setdefault(self.client, set()).add(kind)
        self._deployment_ok = True
        return verdicts

    async def _checked(self) -> None:
        """The deployment checks, once per client and kind of scope, before admitting.

        Concurrent first calls wait for one check. An unreachable Redis, or
        one in a failover, is checked later: the call itself says what
        happened (and retries through the failover).
        """
        if self._deployment_ok:
            return
        if bool(self._plan.budget_names) in _checked_clients.get(self.client, ()):
            self._deployment_ok = True
            return
        if self._check_lock is None:
            self._check_lock = asyncio.Lock()
        async with self._check_lock:
            if not self._deployment_ok:
                with contextlib.suppress(RedisUnavailable, RedisRefused):
                    await self.check_deployment()

    async def _book(
        self,
        costs: Mapping[str, object],
        timeout_s: object,
        model: str | None,
        tags: Mapping[str, object] | None,
    ) -> Booking:
        plan = self._plan
        if plan.quick and model is None and tags is None:
            amounts, args = plan.quick_call(costs, timeout_s)  # bad input raises here
            await self._checked()
            try:
                reply = await self._run("acquire_rates", plan.parts[0].lean_keys, args)
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
            await self._checked()
            try:
                first = await self._run("acquire", call.keys, call.args)
            except redis.exceptions.RedisError:
                pass  # the flow below sends it again, and applies on_redis_error
            else:
                permit = plan.quick_booking(call, first, amounts, self._permit)
                if permit is not None:
                    booking = Booking(permit, None, ())
                    metrics.booked(plan.scopes, booking)
                    return booking
        await self._checked()
        booking = await self._drive(
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
        await self._deliver(booking.alerts)
        return booking

    async def try_acquire(
        self, *, model: str | None = None, tags: Mapping[str, object] | None = None, **costs: Any
    ) -> Permit | None:
        """See :meth:`ratelimit.Limiter.try_acquire`."""
        booking = await self._book(costs, 0, model, tags)
        if booking.permit is not None:
            return booking.permit  # type: ignore[return-value]  # made by self._permit
        if isinstance(booking.error, AcquireTimeout):
            return None
        raise booking.error  # type: ignore[misc]  # a BudgetExceeded

    async def acquire(
        self,
        timeout: float | None = None,
        *,
        model: str | None = None,
        tags: Mapping[str, object] | None = None,
        **costs: Any,
    ) -> Permit:
        """See :meth:`ratelimit.Limiter.acquire`.

        A task cancelled while in line returns its booking before the
        ``CancelledError`` propagates.
        """
        booking = await self._book(costs, timeout, model, tags)
        if booking.permit is None:
            raise booking.error  # type: ignore[misc]
        permit: Permit = booking.permit  # type: ignore[assignment]  # made by self._permit
        if permit.wait_s > 0:
            try:
                await asyncio.sleep(permit.wait_s)
            except BaseException:
                await asyncio.shield(permit.cancel())
                raise
        return permit

    async def settle(
        self,
        permit_id: str,
        *,
        model: str | None = None,
        tags: Mapping[str, object] | None = None,
        usage: object = None,
        remaining: Mapping[str, object] | None = None,
        **actual: Any,
    ) -> Settlement:
        """See :meth:`ratelimit.Limiter.settle`."""
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
                first = await self._run("settle", call.keys, call.args)
            except redis.exceptions.RedisError:
                pass  # the flow below sends it again (a permit settles once)
            else:
                settled = plan.quick_settlement(first)
                if settled is not None:
                    return settled
        settlement = await self._drive(
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
        await self._deliver(settlement.alerts)
        return settlement

    async def cancel(self, permit_id: str) -> Settlement:
        """See :meth:`ratelimit.Limiter.cancel`."""
        return await self._drive(self._plan.cancel(permit_id, clock_us=clock_us()))

    async def observe(self, *, retry_after: float | None = None, **remaining: Any) -> int:
        """Tell every process what the provider says: bring the shared buckets down.

        ``remaining`` gives units left per rate dimension (the provider's
        ``anthropic-ratelimit-*-remaining`` headers); ``retry_after`` (seconds,
        from a 429) holds every bucket back so no process is admitted sooner.
        Buckets are only ever lowered. Returns how many were.
        """
        return await self._drive(self._plan.observe(remaining, retry_after, clock_us()))

    async def record_saving(
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
        return await self._drive(
            self._plan.record_saving(
                saved_usd, model=model, tokens=tokens, tags=tags, clock_us=clock_us()
            )
        )

    async def state(self) -> LimiterState:
        """See :meth:`ratelimit.Limiter.state`."""
        result, alerts = await self._drive(self._plan.state(clock_us()))
        await self._deliver(alerts)
        return result


class Limiter(_Shell):
    """Asyncio twin of :class:`ratelimit.Limiter`; see there for every argument."""

    def __init__(
        self,
        client: AsyncClient | str,
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
            script: self.client.register_script(scripts.source(script))
            for script in scripts.SCRIPT_NAMES
        }
        # A cluster client routes each call to its slot's node: no batching there.
        client = self.client
        self._batcher = batcher_for(client) if isinstance(client, redis.asyncio.Redis) else None

    async def ledger_entries(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        count: int | None = None,
    ) -> list[LedgerEntry]:
        """This scope's ledger entries settled between ``since`` and ``until`` (oldest first)."""
        return await self._drive(ledger.read_entries(self._scope.keys, since, until, count))

    async def spend(self, day: str | None = None) -> dict[str, dict[str, Decimal]]:
        """USD settled per day and model, ``{"2026-11-28": {"claude-...": Decimal}}``.

        ``day`` (``YYYY-MM-DD`` in the ledger's zone) keeps one day only.
        """
        return await self._drive(ledger.read_spend(self._scope.keys, day))

    async def saved(self, day: str | None = None) -> dict[str, dict[str, Decimal]]:
        """USD that cached responses saved, per day and model (see :meth:`record_saving`)."""
        return await self._drive(ledger.read_saved(self._scope.keys, day))

    async def alert_history(self, count: int | None = None) -> list[Alert]:
        """The alerts this scope's budget has fired, oldest first (the stream keeps 1000)."""
        return await self._drive(ledger.read_alerts(self._scope.keys, count))


class LimiterGroup(_Shell):
    """Asyncio twin of :class:`ratelimit.LimiterGroup`."""

    def __init__(self, *limiters: Limiter) -> None:
        self._configure_group(limiters)
        self.limiters = limiters
        self.client = limiters[0].client
        self._scripts = limiters[0]._scripts
        self._batcher = limiters[0]._batcher


class Permit(PermitData):
    """Asyncio twin of :class:`ratelimit.Permit`: ``await permit.settle(...)``."""

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

    async def settle(
        self,
        *,
        model: str | None = None,
        tags: Mapping[str, object] | None = None,
        usage: object = None,
        remaining: Mapping[str, object] | None = None,
        **actual: Any,
    ) -> Settlement:
        """See :meth:`ratelimit.Permit.settle`."""
        if not self.backed:
            self.settlement = Settlement("unbacked")
        elif model is None and tags is None and usage is None and self.limiter._plan.quick:
            self.settlement = await self._quick(actual, remaining)
        else:
            self.settlement = await self.limiter.settle(
                self.id, model=model, tags=tags, usage=usage, remaining=remaining, **actual
            )
        return self.settlement

    async def cancel(self) -> Settlement:
        """See :meth:`ratelimit.Permit.cancel`."""
        if not self.backed:
            self.settlement = Settlement("unbacked")
        elif self.limiter._plan.quick:
            self.settlement = await self._quick(dict.fromkeys(self.reserved_micro, 0), None)
        else:
            self.settlement = await self.limiter.cancel(self.id)
        return self.settlement

    async def _quick(
        self, actual: Mapping[str, Any], remaining: Mapping[str, object] | None
    ) -> Settlement:
        """Settle (or cancel) without a flow: one script call, the plan's quick path."""
        plan = self.limiter._plan
        call = plan.quick_settle(
            self.id, self.admitted_at_us, self.reserved_micro, actual, remaining=remaining
        )
        try:
            reply = await self.limiter._run(call.script, call.keys, call.args)
        except redis.exceptions.RedisError:
            # The flow tries again (the settle marker makes a repeat count once)
            # and reports the error as every settle does.
            return await self.limiter.settle(self.id, remaining=remaining, **actual)
        return plan.quick_settled(reply)

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.settlement is None:
            try:
                await self.cancel()
            except Exception:
                log.exception("could not cancel permit %s", self.id)
