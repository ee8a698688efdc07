"""RQ jobs that take their cost from a shared limiter before their function runs.

``rate_limited`` decorates a job function; what it does is the same as for
Celery and told in :mod:`ratelimit.tasks`::

    from redis import Redis
    from rq import Queue
    from ratelimit import Rate
    from ratelimit.rq import current_permit, rate_limited

    @rate_limited(
        url="redis://limits:6379/0", name="anthropic/sonnet",
        requests=Rate(50, per=60), input_tokens=Rate(40_000, per=60),
        costs=lambda prompt: {"input_tokens": len(prompt) // 3},
    )
    def summarize(prompt: str) -> str:
        reply = client.messages.create(...)
        current_permit().settle(input_tokens=reply.usage.input_tokens)
        return reply.content[0].text

    Queue(connection=Redis()).enqueue(summarize, "...")

What is RQ's own: run the workers with ``rq worker --with-scheduler``. A job
that cannot be admitted now returns an :class:`rq.Retry` with an interval in
whole seconds, and RQ's scheduler puts it back on its queue then (same job
id, so its dependents keep waiting for it); no worker is held meanwhile. A
budget's refusal also switches off RQ's own retry-on-failure for that run.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from rq import Retry, get_current_job

from ratelimit import tasks
from ratelimit.core.settings import Budget, Rate
from ratelimit.errors import AcquireTimeout, BudgetExceeded, NoCurrentPermit
from ratelimit.limiter import Permit
from ratelimit.tasks import Actual, AnyLimiter, BudgetPolicy, Costs, ErrorPolicy

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

#: How many times a job may be put back for want of room before it fails.
DEFAULT_MAX_RETRIES = 100

_rq = tasks.Integration("ratelimit.rq", "job")


def current_permit() -> Permit:
    """The permit of the ``rate_limited`` job function running now.

    Settle it with what the call really used (``current_permit().settle(...)``);
    once settled, the decorator does not settle again. Outside a job function
    it raises :class:`NoCurrentPermit`.
    """
    return _rq.current_permit()


def _retry_in(delay_s: float, jitter_s: float, max_retries: int) -> Retry:
    """A Retry that RQ's scheduler carries out ``delay_s`` (+ jitter) seconds from now."""
    # RQ takes whole seconds, and 0 would mean "now" (a busy loop), so the
    # interval is rounded up to at least one second; RQ's scheduler only looks
    # once a second anyway.
    interval = max(1, math.ceil(delay_s + random.uniform(0, jitter_s)))
    # The Retry's own limit is never reached: the wrapper fails the job with
    # a clearer error first. It is kept in step for anyone reading the result.
    return Retry(max=max(1, max_retries), interval=interval)


def _retries(job: Any) -> int:
    """How many times RQ's scheduler has put ``job`` back already."""
    return job.number_of_retries or 0


def rate_limited(
    *,
    limiter: Callable[[], AnyLimiter] | None = None,
    url: str | None = None,
    name: str | None = None,
    costs: Costs | None = None,
    actual: Actual | None = None,
    wait_s: float = 0.0,
    jitter_s: float = 1.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
    on_budget_exceeded: BudgetPolicy = "fail",
    on_error: ErrorPolicy = "cancel",
    **dimensions: Rate | Budget,
) -> Callable[[Callable[P, R]], Callable[P, R | Retry]]:
    """Make an RQ job function take its cost from a shared limiter before it runs.

    The limiter is ``limiter()``, a factory called once in each process that
    runs the job (each work horse of a forking worker), or ``Limiter(url,
    name, **dimensions)`` built lazily the same way, so no connection is
    shared across a fork.

    ``costs`` is the run's cost per dimension: a mapping, or a callable given
    the job's arguments that returns one; ``model`` and ``tags`` in it label
    the ledger entry. None: the limiter's defaults (1 request).

    Admission waits in place at most ``wait_s`` seconds (counted in the job's
    timeout). When it would take longer, nothing is consumed and the job
    returns an :class:`rq.Retry` whose interval is the ``retry_after`` seconds
    the limiter reported plus a uniformly random ``0..jitter_s`` seconds, rounded
    up to whole seconds (at least 1): RQ's scheduler (``rq worker
    --with-scheduler``) re-enqueues the same job then, and no worker is held.
    Since that scheduler works in whole seconds, a ``wait_s`` of a second or
    so suits limiters whose ``retry_after`` is usually shorter. After
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
    lazy = tasks.LazyLimiter(limiter, url, name, dimensions)
    admission = tasks.Admission(lazy, costs, wait_s, jitter_s, on_budget_exceeded)
    settler = tasks.Settler(_rq, actual, on_error)
    tasks.check_max_retries(max_retries, none_ok=False)

    def decorate(body: Callable[P, R]) -> Callable[P, R | Retry]:
        @functools.wraps(body)
        def run(*args: P.args, **kwargs: P.kwargs) -> R | Retry:
            job = get_current_job()
            cost = admission.cost(args, kwargs)
            try:
                permit = admission.acquire(cost)
            except AcquireTimeout as exc:
                if job is None or _retries(job) >= max_retries:
                    raise
                return _retry_in(exc.retry_after, admission.jitter_s, max_retries)
            except BudgetExceeded as exc:
                if job is None:
                    raise
                if admission.on_budget_exceeded == "fail" or _retries(job) >= max_retries:
                    # RQ would otherwise retry a failed job that was enqueued
                    # with retry=Retry(...): the budget will still say no.
                    job.retries_left = None
                    raise
                # RQ schedules by this machine's clock, so the delay is measured on it.
                local_now = datetime.now(UTC)  # client-clock-ok
                until_reset_s = (exc.resets_at - local_now).total_seconds()
                return _retry_in(until_reset_s, admission.jitter_s, max_retries)
            return settler.run(permit, cost, functools.partial(body, *args, **kwargs))

        return run

    return decorate
