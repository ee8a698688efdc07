"""Celery tasks that take the shared quota before their body runs.

``rate_limited`` goes under ``@app.task``: each run of the task first takes
its cost from the quota, then runs the body, then settles::

    from celery import Celery
    from ratelimit import Budget, Rate
    from ratelimit.celery import current_permit, rate_limited

    app = Celery("proj", broker="redis://broker:6379/0")

    @app.task(bind=True, max_retries=None)
    @rate_limited(
        url="redis://quota:6379/0", name="anthropic/sonnet",
        requests=Rate(50, per=60), input_tokens=Rate(40_000, per=60),
        usd=Budget("20.00", per="day"),
        costs=lambda prompt, max_tokens: {"input_tokens": len(prompt) // 3, "usd": 0.05},
    )
    def summarize(self, prompt: str, max_tokens: int) -> str:
        reply = client.messages.create(...)
        current_permit().settle(model=reply.model, usage=reply.usage)
        return reply.content[0].text

When the quota has no room now, the task is retried later through Celery
(``self.retry(countdown=retry_after + jitter)``), so no worker slot is held
while waiting; a budget that cannot take the cost fails the task at once with
:class:`~ratelimit.errors.BudgetExceeded` (or, on request, retries it when the
budget's period resets).

Importing :mod:`ratelimit` never imports this module or Celery.
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
from datetime import timedelta
from typing import Any, Literal, ParamSpec, TypeVar

from celery import Task
from celery import current_task as _current_task

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
#: What a task costs: a mapping of dimension name to amount (``model`` and
#: ``tags`` label the ledger entry), or a callable that computes one from the
#: task's arguments (without a bound task's ``self``).
Costs = Mapping[str, object] | Callable[..., Mapping[str, object]]
#: What a task does when a budget cannot take its cost: fail at once, or retry
#: when the budget's period resets.
BudgetPolicy = Literal["fail", "retry_at_reset"]
#: What a permit becomes when the body raises: ``"cancel"`` gives everything
#: back (the call is taken not to have gone out), ``"keep"`` charges the
#: reservation as if the call had gone out.
ErrorPolicy = Literal["cancel", "keep"]

log = logging.getLogger("ratelimit.celery")


class NoCurrentPermit(LimiterError, LookupError):
    """:func:`current_permit` was called outside the body of a ``rate_limited`` task."""


_permit: ContextVar[Permit | None] = ContextVar("ratelimit_celery_permit", default=None)


def current_permit() -> Permit:
    """The permit of the ``rate_limited`` task body running now.

    Settle it with what the call really used (``current_permit().settle(...)``);
    once settled, the decorator does not settle again.
    """
    permit = _permit.get()
    if permit is None:
        raise NoCurrentPermit("current_permit() is only available inside a rate_limited task")
    return permit


# -- the quota, built once per process ----------------------------------------


class _ProcessLimiters:
    """Limiters built from a URL in this process, by quota.

    Every task of the process that names the same quota shares one limiter
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

    Celery's prefork children are forked from the main worker process after it
    imported the tasks; a connection opened before the fork would be shared by
    every child, so the limiter is only built inside the process that uses it.
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
            # re-run) the task: the reservation stands as the charge.
            log.exception("actual() failed for permit %s; charging its reservation", permit.id)
            given = {}
        # The ledger entry keeps the model and tags the costs named.
        for label in ("model", "tags"):
            if label in cost:
                given.setdefault(label, cost[label])
        try:
            permit.settle(**given)
        except Exception:
            # The work is done: failing the task now would invite a second
            # call. An unsettled permit is reclaimed when its lease runs out.
            log.exception("could not settle permit %s; its lease will reclaim it", permit.id)


def _check_seconds(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentType(f"{what} must be a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{what} must be finite and >= 0, got {value!r}")
    return float(value)


def _running_task(args: tuple[Any, ...]) -> tuple[Any, bool]:
    """The Celery task being executed (or None), and whether the body is bound to it."""
    if args and isinstance(args[0], Task):
        return args[0], True
    task = _current_task._get_current_object()
    return task, False


def rate_limited(
    *,
    limiter: Callable[[], Quota] | None = None,
    url: str | None = None,
    name: str | None = None,
    costs: Costs | None = None,
    actual: Callable[[Any], Mapping[str, object] | None] | None = None,
    wait_s: float = 0.0,
    jitter_s: float = 1.0,
    max_retries: int | None = None,
    on_budget_exceeded: BudgetPolicy = "fail",
    on_error: ErrorPolicy = "cancel",
    **dimensions: Rate | Budget,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a Celery task take its cost from a shared quota before its body runs.

    Put it under ``@app.task`` (bound or not). The quota is ``limiter()``, a
    factory called once in each worker process, or ``Limiter(url, name,
    **dimensions)`` built lazily the same way (prefork children must not share
    a connection made before the fork).

    ``costs`` is the run's cost per dimension: a mapping, or a callable given
    the task's arguments (a bound task's ``self`` left out) that returns one;
    ``model`` and ``tags`` in it label the ledger entry. None: the limiter's
    defaults (1 request).

    Admission waits in place at most ``wait_s`` seconds. When it would take
    longer, nothing is consumed and the task is retried through Celery after
    the ``retry_after`` seconds the quota reported plus a uniformly random
    ``0..jitter_s`` seconds (so a herd of refused tasks does not return at
    once); the worker slot is free meanwhile. Retries count against
    ``max_retries`` (None: the task's own ``max_retries``, which Celery sets to
    3 unless told otherwise: a task that may queue for its quota usually wants
    more, or None for no limit); when they run out the task fails with
    :class:`~ratelimit.errors.AcquireTimeout`.

    When a budget cannot take the cost, ``on_budget_exceeded="fail"`` fails the
    task at once with :class:`~ratelimit.errors.BudgetExceeded`;
    ``"retry_at_reset"`` retries it when the budget's period resets (plus
    jitter), which also counts against ``max_retries``.

    After the body returns, the permit is settled with ``actual(result)`` (a
    mapping of actual usage for :meth:`Permit.settle`; None or no ``actual``:
    the reservation stands), unless the body already settled it through
    :func:`current_permit`. When the body raises, ``on_error="cancel"`` gives
    the permit back (the call is taken not to have gone out) and ``"keep"``
    charges the reservation. Called outside a worker, a refused admission
    raises :class:`~ratelimit.errors.AcquireTimeout`.
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
    if max_retries is not None and (
        isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0
    ):
        raise InvalidArgument(f"max_retries must be None or an int >= 0, got {max_retries!r}")
    settler = _Settler(actual, on_error)
    retry_options: dict[str, Any] = {} if max_retries is None else {"max_retries": max_retries}

    def decorate(body: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(body)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            task, bound = _running_task(args)
            cost = _costs_of(costs, args[1:] if bound else args, kwargs)
            try:
                permit = quota.get().acquire(wait, **cost)
            except AcquireTimeout as exc:
                if task is None:
                    raise
                # retry() raises Retry (or, out of retries, this AcquireTimeout).
                countdown = exc.retry_after + random.uniform(0, jitter)
                raise task.retry(countdown=countdown, exc=exc, **retry_options) from None
            except BudgetExceeded as exc:
                if task is None or on_budget_exceeded == "fail":
                    raise
                eta = exc.resets_at + timedelta(seconds=random.uniform(0, jitter))
                raise task.retry(eta=eta, exc=exc, **retry_options) from None
            return settler.run(permit, cost, functools.partial(body, *args, **kwargs))

        return run

    return decorate
