"""Celery tasks that take their cost from a shared limiter before their body runs.

``rate_limited`` goes under ``@app.task``; what it does is the same as for
RQ and told in :mod:`ratelimit.tasks`::

    from celery import Celery
    from ratelimit import Budget, Rate
    from ratelimit.celery import current_permit, rate_limited

    app = Celery("proj", broker="redis://broker:6379/0")

    @app.task(bind=True, max_retries=None)
    @rate_limited(
        url="redis://limits:6379/0", name="anthropic/sonnet",
        requests=Rate(50, per=60), input_tokens=Rate(40_000, per=60),
        usd=Budget("20.00", per="day"),
        costs=lambda prompt, max_tokens: {"input_tokens": len(prompt) // 3, "usd": 0.05},
    )
    def summarize(self, prompt: str, max_tokens: int) -> str:
        reply = client.messages.create(...)
        current_permit().settle(model=reply.model, usage=reply.usage)
        return reply.content[0].text

What is Celery's own: a run that cannot be admitted now is retried through
Celery (``self.retry(countdown=retry_after + jitter)``), counting against the
task's ``max_retries``, so no worker slot is held while it waits; a bound
task's ``self`` is not passed to ``costs``; and a task run eagerly
(``apply()``, ``task_always_eager``) waits in place for its turn instead,
since Celery would re-run an eager retry at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

from celery import Task
from celery import current_task as _current_task

from ratelimit import tasks
from ratelimit.core.settings import Budget, Rate
from ratelimit.errors import AcquireTimeout, BudgetExceeded, NoCurrentPermit
from ratelimit.limiter import Permit
from ratelimit.tasks import Actual, AnyLimiter, BudgetPolicy, Costs, ErrorPolicy

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

_celery = tasks.Integration("ratelimit.celery", "task")


def current_permit() -> Permit:
    """The permit of the ``rate_limited`` task body running now.

    Settle it with what the call really used (``current_permit().settle(...)``);
    once settled, the decorator does not settle again. Outside a task body it
    raises :class:`NoCurrentPermit`.
    """
    return _celery.current_permit()


def _running_task(args: tuple[Any, ...]) -> tuple[Any, bool]:
    """The Celery task being executed (or None), and whether the body is bound to it."""
    if args and isinstance(args[0], Task):
        return args[0], True
    task = _current_task._get_current_object()
    return task, False


def rate_limited(
    *,
    limiter: Callable[[], AnyLimiter] | None = None,
    url: str | None = None,
    name: str | None = None,
    costs: Costs | None = None,
    actual: Actual | None = None,
    wait_s: float = 0.0,
    jitter_s: float = 1.0,
    max_retries: int | None = None,
    on_budget_exceeded: BudgetPolicy = "fail",
    on_error: ErrorPolicy = "cancel",
    **dimensions: Rate | Budget,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a Celery task take its cost from a shared limiter before its body runs.

    Put it under ``@app.task`` (bound or not). The limiter is ``limiter()``, a
    factory called once in each worker process, or ``Limiter(url, name,
    **dimensions)`` built lazily the same way (prefork children must not share
    a connection made before the fork).

    ``costs`` is the run's cost per dimension: a mapping, or a callable given
    the task's arguments (a bound task's ``self`` left out) that returns one;
    ``model`` and ``tags`` in it label the ledger entry. None: the limiter's
    defaults (1 request).

    Admission waits in place at most ``wait_s`` seconds. When it would take
    longer, nothing is consumed and the task is retried through Celery after
    the ``retry_after`` seconds the limiter reported plus a uniformly random
    ``0..jitter_s`` seconds (so a herd of refused tasks does not return at
    once); the worker slot is free meanwhile. Retries count against
    ``max_retries`` (None: the task's own ``max_retries``, which Celery sets to
    3 unless told otherwise: a task that may queue for its turn usually wants
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
    charges the reservation. Called directly (not through a worker), a
    refused admission raises :class:`~ratelimit.errors.AcquireTimeout`; run
    eagerly (``apply()``, ``task_always_eager``), it waits in place for its
    turn, since Celery would re-run an eager retry at once.
    """
    lazy = tasks.LazyLimiter(limiter, url, name, dimensions)
    admission = tasks.Admission(lazy, costs, wait_s, jitter_s, on_budget_exceeded)
    settler = tasks.Settler(_celery, actual, on_error)
    tasks.check_max_retries(max_retries, none_ok=True)
    retry_options: dict[str, Any] = {} if max_retries is None else {"max_retries": max_retries}

    def decorate(body: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(body)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            task, bound = _running_task(args)
            cost = admission.cost(args[1:] if bound else args, kwargs)
            try:
                permit = admission.acquire(cost)
            except AcquireTimeout as exc:
                if task is None:
                    raise
                if task.request.is_eager:
                    # apply() and task_always_eager re-run a retry at once, in
                    # this thread, ignoring its countdown: a busy loop. There
                    # is no slot to free, so take a place in line instead.
                    permit = lazy.get().acquire(None, **cost)
                else:
                    # retry() raises Retry (or, out of retries, this AcquireTimeout).
                    countdown = exc.retry_after + admission.jitter()
                    raise task.retry(countdown=countdown, exc=exc, **retry_options) from None
            except BudgetExceeded as exc:
                if task is None or admission.on_budget_exceeded == "fail":
                    raise
                eta = exc.resets_at + timedelta(seconds=admission.jitter())
                raise task.retry(eta=eta, exc=exc, **retry_options) from None
            return settler.run(permit, cost, functools.partial(body, *args, **kwargs))

        return run

    return decorate
