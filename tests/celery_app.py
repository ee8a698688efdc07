"""The Celery app that the workers of ``test_celery.py`` run (``-A tests.celery_app``).

Broker, result backend and quotas all live on the server at
``$RATELIMIT_TEST_URL``, which the test sets for the workers it starts.
Each admitted run records itself in a Redis list, stamped with the permit's
``admitted_at_us`` (Redis time), for the test to judge afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from celery import Celery

from ratelimit import Budget, Limiter, Rate
from ratelimit.celery import current_permit, rate_limited

URL = os.environ.get("RATELIMIT_TEST_URL", "redis://127.0.0.1:6379/0")

#: The shared request rate: 10 per second, 2 at once.
RATE = Rate(10, per=1, burst=2)
ADMISSIONS_KEY = "test:celery:admissions"
BUDGET_USD = Decimal("1.00")


def configure(app: Celery, url: str) -> None:
    """The settings the workers and the test's client app share."""
    app.conf.update(
        broker_url=url,
        result_backend=url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # The retries and arguments of a task are kept with its result.
        result_extended=True,
        # A task is acknowledged after it ran; a retry acknowledges it once
        # the retried message is sent.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )


app = Celery("tests.celery_app")
configure(app, URL)


def task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.task(**options)``, typed for mypy: Celery ships no type hints."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(**options)
    return decorator


@task(bind=True, max_retries=None, name="tests.celery_app.call_api")
@rate_limited(url=URL, name="celery-rate", requests=RATE, jitter_s=0.5)
def call_api(self: Any, i: int) -> int:
    """An admitted call: record when, where and after how many retries."""
    permit = current_permit()
    record = {
        "i": i,
        "admitted_at_us": permit.admitted_at_us,
        "wait_s": permit.wait_s,
        "retries": self.request.retries,
        "worker": self.request.hostname,
        "pid": os.getpid(),
    }
    permit.limiter.client.rpush(ADMISSIONS_KEY, json.dumps(record))
    return i


def _budget() -> Limiter:
    # A factory: called in the worker child that first runs a budget task.
    return Limiter(URL, "celery-budget", usd=Budget(BUDGET_USD))


@task(bind=True, max_retries=3, name="tests.celery_app.spend")
@rate_limited(
    limiter=_budget,
    costs=lambda usd: {"usd": usd},
    # The "call" reports what it really cost: its argument, as a string.
    actual=lambda spent: {"usd": Decimal(spent)},
)
def spend(self: Any, usd: str) -> str:
    """Spend ``usd`` dollars of the daily budget; fails when the budget can't take it."""
    return usd


@task(bind=True, max_retries=3, name="tests.celery_app.spend_later")
@rate_limited(limiter=_budget, costs=lambda usd: {"usd": usd}, on_budget_exceeded="retry_at_reset")
def spend_later(self: Any, usd: str) -> str:
    """Like :func:`spend`, but retried when the budget's day resets."""
    return usd
