"""The shared machinery of the task-queue integrations, ratelimit.celery and ratelimit.rq.

Each of them offers ``rate_limited``, which decorates a task (a Celery task
or an RQ job function) so that each run first takes its cost from a shared
limiter, then runs the body, then settles, and ``current_permit()``, the
permit of the body running now. Only what becomes of a run that cannot be
admitted now belongs to the queue (a Celery ``self.retry``, an RQ
``Retry``): either way it comes back later and holds no worker meanwhile.
Everything else is here, and behaves the same in both:

- the limiter, ``limiter()`` (a factory) or ``Limiter(url, name,
  **dimensions)``, built lazily once per process and afresh after a fork,
  since a connection opened before a fork must not be shared across it;
- the run's cost (``costs``: a mapping, or a callable given the task's
  arguments; ``model`` and ``tags`` in it label the ledger entry), how long
  admission may wait in place (``wait_s``) and the random delay added to a
  retry (``jitter_s``);
- a budget that cannot take the cost fails the run at once with
  :class:`~ratelimit.errors.BudgetExceeded`, or, with
  ``on_budget_exceeded="retry_at_reset"``, retries it when the period resets;
- once the body returns, its permit is settled with ``actual(result)``
  unless the body settled it itself; when the body raises, ``on_error``
  cancels the permit or keeps its reservation as the charge.

Importing :mod:`ratelimit` imports neither integration, and this module
imports neither Celery nor RQ.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, Literal, TypeVar

from ratelimit.core.settings import Budget, Rate
from ratelimit.errors import InvalidArgument, InvalidArgumentType, NoCurrentPermit
from ratelimit.limiter import Limiter, LimiterGroup, Permit

R = TypeVar("R")

#: What a task takes its cost from: one limiter, or a group checked as one.
AnyLimiter = Limiter | LimiterGroup
#: What a task costs: a mapping of dimension name to amount (``model`` and
#: ``tags`` label the ledger entry), or a callable that computes one from the
#: task's arguments (without a bound Celery task's ``self``).
Costs = Mapping[str, object] | Callable[..., Mapping[str, object]]
#: What a task does when a budget cannot take its cost: fail at once, or retry
#: when the budget's period resets.
BudgetPolicy = Literal["fail", "retry_at_reset"]
#: What a permit becomes when the body raises: ``"cancel"`` gives everything
#: back (the call is taken not to have gone out), ``"keep"`` charges the
#: reservation as if the call had gone out.
ErrorPolicy = Literal["cancel", "keep"]
#: What the body's result really used, for :meth:`Permit.settle`.
Actual = Callable[[Any], Mapping[str, object] | None]


class Integration:
    """What each queue's module keeps to itself: a logger, and the current permit.

    ``module`` names both (``"ratelimit.celery"``: the logger
    ``ratelimit.celery``, the context variable ``ratelimit_celery_permit``),
    so a Celery task's permit is never an RQ job's; ``task`` is what the queue
    calls a task, for messages.
    """

    def __init__(self, module: str, task: str) -> None:
        self.log = logging.getLogger(module)
        self.permit: ContextVar[Permit | None] = ContextVar(
            f"{module.replace('.', '_')}_permit", default=None
        )
        self._task = task

    def current_permit(self) -> Permit:
        """The permit of the body running now; :class:`NoCurrentPermit` outside one."""
        permit = self.permit.get()
        if permit is None:
            raise NoCurrentPermit(
                f"current_permit() is only available inside a rate_limited {self._task}"
            )
        return permit


# -- the limiter, built once per process --------------------------------------


class _ProcessLimiters:
    """Limiters built from a URL in this process, by scope.

    Every task of the process that names the same scope shares one limiter
    (one connection pool); after a fork the child starts afresh, since the
    parent's connections are not its to use.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._pid = os.getpid()
        self._limiters: dict[str, AnyLimiter] = {}

    def get(self, key: str, build: Callable[[], AnyLimiter]) -> AnyLimiter:
        """The limiter for ``key``, made by ``build`` if this process has none (lock held)."""
        if self._pid != os.getpid():
            self._limiters.clear()
            self._pid = os.getpid()
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = build()
        return limiter


_process_limiters = _ProcessLimiters()


class LazyLimiter:
    """A limiter made on first use in each process, never inherited across a fork.

    Celery's prefork children are forked from the main worker process after it
    imported the tasks, and RQ's default worker forks a work horse for each
    job; a connection opened before a fork would be shared across it, so the
    limiter is only built inside the process that uses it.
    """

    def __init__(
        self,
        factory: Callable[[], AnyLimiter] | None,
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
        self._built: tuple[int, AnyLimiter] | None = None

    def get(self) -> AnyLimiter:
        """This process's limiter, built now if it has none yet."""
        pid = os.getpid()
        built = self._built
        if built is not None and built[0] == pid:
            return built[1]
        with _process_limiters.lock:
            if self._factory is not None:
                limiter = self._factory()
            else:
                limiter = _process_limiters.get(self._key, self._from_url)
            self._built = (pid, limiter)
        return limiter

    def _from_url(self) -> AnyLimiter:
        return Limiter(self._url, self._name, **self._dimensions)


# -- the options of rate_limited --------------------------------------------------


def check_seconds(value: float, what: str) -> float:
    """``value`` as a float, if it is a finite, non-negative number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentType(f"{what} must be a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{what} must be finite and >= 0, got {value!r}")
    return float(value)


def check_max_retries(value: int | None, *, none_ok: bool) -> None:
    """Refuse a ``max_retries`` that is not an int >= 0 (or None, where ``none_ok``)."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        allowed = "None or an int" if none_ok else "an int"
        raise InvalidArgument(f"max_retries must be {allowed} >= 0, got {value!r}")


# -- one run of a task ----------------------------------------------------------


class Admission:
    """How a run of a task is admitted: its cost, and how long it may wait.

    What a refused run becomes (a retry later) is the queue's own business;
    this only says how long it may wait in place (``wait_s``), how much random
    delay to add to a retry (``jitter_s``), and what a budget's refusal calls
    for (``on_budget_exceeded``).
    """

    def __init__(
        self,
        limiter: LazyLimiter,
        costs: Costs | None,
        wait_s: float,
        jitter_s: float,
        on_budget_exceeded: BudgetPolicy,
    ) -> None:
        self.limiter = limiter
        self.costs = costs
        self.wait_s = check_seconds(wait_s, "wait_s")
        self.jitter_s = check_seconds(jitter_s, "jitter_s")
        if on_budget_exceeded not in ("fail", "retry_at_reset"):
            raise InvalidArgument(
                f"on_budget_exceeded must be 'fail' or 'retry_at_reset', got {on_budget_exceeded!r}"
            )
        self.on_budget_exceeded = on_budget_exceeded

    def cost(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """What a run with these arguments costs (a bound task's ``self`` left out)."""
        if self.costs is None:
            return {}
        got = self.costs(*args, **kwargs) if callable(self.costs) else self.costs
        if not isinstance(got, Mapping):
            raise InvalidArgumentType(f"costs must give a mapping, got {type(got).__name__}")
        return dict(got)

    def acquire(self, cost: Mapping[str, Any]) -> Permit:
        """Take ``cost`` from this process's limiter, waiting in place at most ``wait_s``."""
        return self.limiter.get().acquire(self.wait_s, **cost)

    def jitter(self) -> float:
        """A uniformly random ``0..jitter_s`` seconds, to spread out a herd of retries."""
        return random.uniform(0, self.jitter_s)


class Settler:
    """What becomes of a permit once the body has run."""

    def __init__(
        self, integration: Integration, actual: Actual | None, on_error: ErrorPolicy
    ) -> None:
        if on_error not in ("cancel", "keep"):
            raise InvalidArgument(f"on_error must be 'cancel' or 'keep', got {on_error!r}")
        self._integration = integration
        self._log = integration.log
        self._actual = actual
        self._on_error = on_error

    def run(self, permit: Permit, cost: Mapping[str, Any], body: Callable[[], R]) -> R:
        """Run ``body`` with ``permit`` as the current permit, then settle or cancel it."""
        token = self._integration.permit.set(permit)
        try:
            result = body()
        except BaseException:
            if permit.settlement is None:
                try:
                    if self._on_error == "cancel":
                        permit.cancel()
                    else:
                        permit.settle()
                except Exception:
                    self._log.exception("could not %s permit %s", self._on_error, permit.id)
            raise
        finally:
            self._integration.permit.reset(token)
        if permit.settlement is None:
            self._settle(permit, result, cost)
        return result

    def _settle(self, permit: Permit, result: Any, cost: Mapping[str, Any]) -> None:
        try:
            given: dict[str, Any] = dict(self._actual(result) or {}) if self._actual else {}
        except Exception:
            # The call went out; a bug in the mapping must not fail (and so
            # re-run) the task: the reservation stands as the charge.
            self._log.exception(
                "actual() failed for permit %s; charging its reservation", permit.id
            )
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
            self._log.exception("could not settle permit %s; its lease will reclaim it", permit.id)
