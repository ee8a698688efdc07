"""RQ jobs that take the shared quota before their function runs.

``rate_limited`` decorates a job function: each run of the job first takes
its cost from the quota, then runs the function, then settles::

    from redis import Redis
    from rq import Queue
    from ratelimit import Rate
    from ratelimit.rq import current_permit, rate_limited

    @rate_limited(
        url="redis://quota:6379/0", name="anthropic/sonnet",
        requests=Rate(50, per=60), input_tokens=Rate(40_000, per=60),
        costs=lambda prompt: {"input_tokens": len(prompt) // 3},
    )
    def summarize(prompt: str) -> str:
        reply = client.messages.create(...)
        current_permit().settle(input_tokens=reply.usage.input_tokens)
        return reply.content[0].text

    Queue(connection=Redis()).enqueue(summarize, "...")

Run the workers with ``rq worker --with-scheduler``: when the quota has no
room now, the job returns an :class:`rq.Retry` with an interval, and RQ's
scheduler puts it back on its queue later (same job id, so its dependents
keep waiting for it); no worker is held meanwhile. A budget that cannot take
the cost fails the job at once with :class:`~ratelimit.errors.BudgetExceeded`
(or, on request, retries it when the budget's period resets).

Importing :mod:`ratelimit` never imports this module or RQ.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, ParamSpec, TypeVar

from rq import Retry, get_current_job

from ratelimit._core import Budget, Rate
from ratelimit.errors import (
    AcquireTimeout,
    BudgetExceeded,
    InvalidArgument,
    InvalidArgumentType,
    LimiterError,
)
from ratelimit.limiter import Limiter, LimiterGroup, Permit

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "BudgetPolicy",
    "Costs",
    "ErrorPolicy",
    "NoCurrentPermit",
    "current_permit",
    "rate_limited",
]

P = ParamSpec("P")
R = TypeVar("R")

Quota = Limiter | LimiterGroup
#: What a job costs: a mapping of dimension name to amount (``model`` and
#: ``tags`` label the ledger entry), or a callable that computes one from the
#: job's arguments.
Costs = Mapping[str, object] | Callable[..., Mapping[str, object]]
#: What a job does when a budget cannot take its cost: fail at once, or retry
#: when the budget's period resets.
BudgetPolicy = Literal["fail", "retry_at_reset"]
#: What a permit becomes when the function raises: ``"cancel"`` gives
#: everything back (the call is taken not to have gone out), ``"keep"``
#: charges the reservation as if the call had gone out.
ErrorPolicy = Literal["cancel", "keep"]

#: How many times a job may be put back for want of quota before it fails.
DEFAULT_MAX_RETRIES = 100

log = logging.getLogger("ratelimit.rq")


class NoCurrentPermit(LimiterError, LookupError):
    """:func:`current_permit` was called outside the body of a ``rate_limited`` task."""


_permit: ContextVar[Permit | None] = ContextVar("ratelimit_rq_permit", default=None)


def current_permit() -> Permit:
    """The permit of the ``rate_limited`` task body running now.

    Settle it with what the call really used (``current_permit().settle(...)``);
    once settled, the decorator does not settle again.
    """
    permit = _permit.get()
    if permit is None:
        raise NoCurrentPermit("current_permit() is only available inside a rate_limited job")
    return permit


# -- the quota, built once per process ----------------------------------------


class _ProcessLimiters:
    """Limiters built from a URL in this process, by quota.

    Every job function of the process that names the same quota shares one limiter
    (one connection pool); after a fork the child starts afresh, since the
    parent's connections are not its to use.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._pid = os.getpid()
        self._limiters: dict[str, Quota] = {}

    def get(self, key: str, build: Callable[[], Quota]) -> Quota:
        """The limiter for ``key``, made by ``build`` if this process has none (lock held)."""
        if self._pid != os.getpid():
            self._limiters.clear()
            self._pid = os.getpid()
        quota = self._limiters.get(key)
        if quota is None:
            quota = self._limiters[key] = build()
        return quota


_process_limiters = _ProcessLimiters()


class _LazyQuota:
    """A limiter made on first use in each process, never inherited across a fork.

    RQ's default worker forks a work horse for each job; a connection opened
    before a fork would be shared with the parent, so the limiter is only built
    inside the process that uses it.
    """

    def __init__(
        self,
        factory: Callable[[], Quota] | None,
        url: str | None,
        name: str | None,
        dimensions: Mapping[str, Rate | Budget],
    ) -> None:
        if factory is not None:
            if url is not None or name is not None or dimensions:
                raise InvalidArgument("give limiter= or url=, name= and dimensions, not both")
            if not callable(factory):
                raise InvalidArgumentType("limiter= must be a callable that builds a Limiter")
        elif not isinstance(url, str) or not isinstance(name, str):
            raise InvalidArgumentType("give limiter= (a factory) or url= and name= (strings)")
        self._factory = factory
        self._url = url or ""
        self._name = name or ""
        self._dimensions: dict[str, Any] = dict(dimensions)
        self._key = f"{url}\x00{name}\x00{sorted(self._dimensions.items())!r}"
        self._built: tuple[int, Quota] | None = None

    def get(self) -> Quota:
        """This process's limiter, built now if it has none yet."""
        pid = os.getpid()
        built = self._built
        if built is not None and built[0] == pid:
            return built[1]
        with _process_limiters.lock:
            if self._factory is not None:
                quota = self._factory()
            else:
                quota = _process_limiters.get(self._key, self._from_url)
            self._built = (pid, quota)
        return quota

    def _from_url(self) -> Quota:
        return Limiter(self._url, self._name, **self._dimensions)


# -- one run of a task ----------------------------------------------------------


def _costs_of(costs: Costs | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if costs is None:
        return {}
    got = costs(*args, **kwargs) if callable(costs) else costs
    if not isinstance(got, Mapping):
        raise InvalidArgumentType(f"costs must give a mapping, got {type(got).__name__}")
    return dict(got)


@dataclass(frozen=True)
class _Settler:
    """What becomes of a permit once the body has run."""

    actual: Callable[[Any], Mapping[str, object] | None] | None
    on_error: ErrorPolicy

    def run(self, permit: Permit, cost: Mapping[str, Any], body: Callable[[], R]) -> R:
        """Run ``body`` with ``permit`` as the current permit, then settle or cancel it."""
        token = _permit.set(permit)
        try:
            result = body()
        except BaseException:
            if permit.settlement is None:
                try:
                    if self.on_error == "cancel":
                        permit.cancel()
                    else:
                        permit.settle()
                except Exception:
                    log.exception("could not %s permit %s", self.on_error, permit.id)
            raise
        finally:
            _permit.reset(token)
        if permit.settlement is None:
            self._settle(permit, result, cost)
        return result

    def _settle(self, permit: Permit, result: Any, cost: Mapping[str, Any]) -> None:
        try:
            given: dict[str, Any] = dict(self.actual(result) or {}) if self.actual else {}
        except Exception:
            # The call went out; a bug in the mapping must not fail (and so
            # re-run) the job: the reservation stands as the charge.
            log.exception("actual() failed for permit %s; charging its reservation", permit.id)
            given = {}
        # The ledger entry keeps the model and tags the costs named.
        for label in ("model", "tags"):
            if label in cost:
                given.setdefault(label, cost[label])
        try:
            permit.settle(**given)
        except Exception:
            # The work is done: failing the job now would invite a second
            # call. An unsettled permit is reclaimed when its lease runs out.
            log.exception("could not settle permit %s; its lease will reclaim it", permit.id)


def _check_seconds(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentType(f"{what} must be a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{what} must be finite and >= 0, got {value!r}")
    return float(value)


def _retry_in(delay_s: float, jitter_s: float, max_retries: int) -> Retry:
    """A Retry that RQ's scheduler carries out ``delay_s`` (+ jitter) seconds from now."""
    # RQ takes whole seconds, and 0 would mean "now" (a busy loop), so the
    # interval is rounded up to at least one second; RQ's scheduler only looks
    # once a second anyway.
    interval = max(1, math.ceil(delay_s + random.uniform(0, jitter_s)))
    # The Retry's own limit is never reached: the wrapper fails the job with
    # a clearer error first. It is kept in step for anyone reading the result.
    return Retry(max=max(1, max_retries), interval=interval)


def rate_limited(
    *,
    limiter: Callable[[], Quota] | None = None,
    url: str | None = None,
    name: str | None = None,
    costs: Costs | None = None,
    actual: Callable[[Any], Mapping[str, object] | None] | None = None,
    wait_s: float = 0.0,
    jitter_s: float = 1.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
    on_budget_exceeded: BudgetPolicy = "fail",
    on_error: ErrorPolicy = "cancel",
    **dimensions: Rate | Budget,
) -> Callable[[Callable[P, R]], Callable[P, R | Retry]]:
    """Make an RQ job function take its cost from a shared quota before it runs.

    The quota is ``limiter()``, a factory called once in each process that
    runs the job (each work horse of a forking worker), or ``Limiter(url,
    name, **dimensions)`` built lazily the same way, so no connection is
    shared across a fork.

    ``costs`` is the run's cost per dimension: a mapping, or a callable given
    the job's arguments that returns one; ``model`` and ``tags`` in it label
    the ledger entry. None: the limiter's defaults (1 request).

    Admission waits in place at most ``wait_s`` seconds (counted in the job's
    timeout). When it would take longer, nothing is consumed and the job
    returns an :class:`rq.Retry` whose interval is the ``retry_after`` seconds
    the quota reported plus a uniformly random ``0..jitter_s`` seconds, rounded
    up to whole seconds (at least 1): RQ's scheduler (``rq worker
    --with-scheduler``) re-enqueues the same job then, and no worker is held.
    Since that scheduler works in whole seconds, a ``wait_s`` of a second or
    so suits quotas whose ``retry_after`` is usually shorter. After
    ``max_retries`` such retries (``job.number_of_retries``) the job fails with
    :class:`~ratelimit.errors.AcquireTimeout`.

    When a budget cannot take the cost, ``on_budget_exceeded="fail"`` fails the
    job at once with :class:`~ratelimit.errors.BudgetExceeded`, and RQ's own
    retry-on-failure (``enqueue(..., retry=Retry(...))``) is switched off for
    this run, since waiting won't help; ``"retry_at_reset"`` retries it when
    the budget's period resets (plus jitter), counting against ``max_retries``.

    After the function returns, the permit is settled with ``actual(result)``
    (a mapping of actual usage for :meth:`Permit.settle`; None or no
    ``actual``: the reservation stands), unless the function already settled
    it through :func:`current_permit`. When the function raises,
    ``on_error="cancel"`` gives the permit back and ``"keep"`` charges the
    reservation. Called outside a worker, a refused admission raises
    :class:`~ratelimit.errors.AcquireTimeout`.
    """
    quota = _LazyQuota(limiter, url, name, dimensions)
    wait = _check_seconds(wait_s, "wait_s")
    jitter = _check_seconds(jitter_s, "jitter_s")
    if on_budget_exceeded not in ("fail", "retry_at_reset"):
        raise InvalidArgument(
            f"on_budget_exceeded must be 'fail' or 'retry_at_reset', got {on_budget_exceeded!r}"
        )
    if on_error not in ("cancel", "keep"):
        raise InvalidArgument(f"on_error must be 'cancel' or 'keep', got {on_error!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise InvalidArgument(f"max_retries must be an int >= 0, got {max_retries!r}")
    settler = _Settler(actual, on_error)

    def decorate(body: Callable[P, R]) -> Callable[P, R | Retry]:
        @functools.wraps(body)
        def run(*args: P.args, **kwargs: P.kwargs) -> R | Retry:
            job = get_current_job()
            cost = _costs_of(costs, args, kwargs)
            try:
                permit = quota.get().acquire(wait, **cost)
            except AcquireTimeout as exc:
                if job is None or (job.number_of_retries or 0) >= max_retries:
                    raise
                return _retry_in(exc.retry_after, jitter, max_retries)
            except BudgetExceeded as exc:
                if job is None:
                    raise
                if on_budget_exceeded == "fail" or (job.number_of_retries or 0) >= max_retries:
                    # RQ would otherwise retry a failed job that was enqueued
                    # with retry=Retry(...): the budget will still say no.
                    job.retries_left = None
                    raise
                until_reset_s = (exc.resets_at - datetime.now(UTC)).total_seconds()
                return _retry_in(until_reset_s, jitter, max_retries)
            return settler.run(permit, cost, functools.partial(body, *args, **kwargs))

        return run

    return decorate
