"""The job functions that the workers of ``test_rq.py`` run (``tests.rq_jobs.*``).

The quotas live on the server at ``$RATELIMIT_TEST_URL``, which the test sets
for the workers it starts. Each admitted run records itself in a Redis list,
stamped with the permit's ``admitted_at_us`` (Redis time).
"""

from __future__ import annotations

import json
import os
from decimal import Decimal

from rq import get_current_job

from ratelimit import Budget, Limiter, Rate
from ratelimit.rq import current_permit, rate_limited

URL = os.environ.get("RATELIMIT_TEST_URL", "redis://127.0.0.1:6379/0")
QUEUE = "ratelimit-test"

#: The shared request rate of jobs that go back to RQ's schedule when refused:
#: 5 per second, 2 at once. RQ's scheduler works in whole seconds, so a herd
#: of refused jobs comes back together, once a second, to a bucket of 2.
RATE = Rate(5, per=1, burst=2)
ADMISSIONS_KEY = "test:rq:admissions"
#: The rate of jobs that may wait in place up to a second first.
WAITING_RATE = Rate(10, per=1, burst=2)
WAITING_ADMISSIONS_KEY = "test:rq:admissions:waiting"
BUDGET_USD = Decimal("1.00")


def _record(key: str, i: int) -> int:
    """Record when, where and after how many retries the current job was admitted."""
    permit = current_permit()
    job = get_current_job()
    assert job is not None
    record = {
        "i": i,
        "admitted_at_us": permit.admitted_at_us,
        "wait_s": permit.wait_s,
        "retries": job.number_of_retries or 0,
        "worker": job.worker_name,
        "pid": os.getpid(),
    }
    permit.limiter.client.rpush(key, json.dumps(record))
    return i


@rate_limited(url=URL, name="rq-rate", requests=RATE, jitter_s=1.0)
def call_api(i: int) -> int:
    """An admitted call, refused ones retried through RQ's scheduler."""
    return _record(ADMISSIONS_KEY, i)


@rate_limited(url=URL, name="rq-rate-waiting", requests=WAITING_RATE, wait_s=1.0)
def call_api_waiting(i: int) -> int:
    """An admitted call that waited in place for its turn, up to a second."""
    return _record(WAITING_ADMISSIONS_KEY, i)


def _budget() -> Limiter:
    # A factory: called in the work horse that runs a budget job.
    return Limiter(URL, "rq-budget", usd=Budget(BUDGET_USD))


@rate_limited(
    limiter=_budget, costs=lambda usd: {"usd": usd}, actual=lambda spent: {"usd": Decimal(spent)}
)
def spend(usd: str) -> str:
    """Spend ``usd`` dollars of the daily budget; fails when the budget can't take it."""
    return usd


@rate_limited(limiter=_budget, costs=lambda usd: {"usd": usd}, on_budget_exceeded="retry_at_reset")
def spend_later(usd: str) -> str:
    """Like :func:`spend`, but retried when the budget's day resets."""
    return usd
