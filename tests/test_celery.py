"""``ratelimit.celery``: tasks take the shared quota before they run.

The slow tests start two real Celery workers (prefork, two children each) on
the suite's server, send them more tasks than the quota lets through at once,
and judge the admissions afterwards on Redis time: every window between two
admissions held no more than ``burst + rate x window``, every task completed,
and the refused ones were retried through the broker rather than waiting in a
worker slot. The others run tasks in-process (``Task.apply``) to pin down
settling, cancelling and the per-process limiter.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from celery import Celery
from celery_app import ADMISSIONS_KEY, BUDGET_USD, RATE, configure
from task_queue_helpers import (
    BIN,
    Workers,
    admissions,
    budget_state,
    check_admissions,
    check_refusal_outside_a_worker,
    module_db_fixture,
    usd_budget,
    workers,
)

from ratelimit import Budget, Limiter, Rate
from ratelimit.celery import NoCurrentPermit, current_permit, rate_limited
from ratelimit.tasks import LazyLimiter

#: The database the workers' broker, results and quotas use: not the one the
#: other tests empty between them.
CELERY_DB = 5
TASKS = 40
#: Seconds for all tasks to complete: 40 at 10/s need 3.8 s, retries add some.
COMPLETE_TIMEOUT_S = 25.0


# -- real workers ----------------------------------------------------------------


celery_url = module_db_fixture("celery_url", CELERY_DB)


@pytest.fixture(scope="module")
def client_app(celery_url: str) -> Iterator[Celery]:
    """The sending side: a Celery app of its own, naming the tasks by name."""
    app = Celery("test-client", set_as_current=False)
    configure(app, celery_url)
    yield app
    app.close()


@pytest.fixture(scope="module")
def celery_workers(celery_url: str, client_app: Celery) -> Iterator[Workers]:
    """Two worker processes, each a prefork pool of two children; always stopped."""
    commands = [
        [
            str(BIN / "celery"), "-A", "tests.celery_app", "worker",
            "--pool", "prefork", "--concurrency", "2", "--loglevel", "INFO",
            "--hostname", f"w{n}@%h",
            # No waiting for other nodes at start-up: the test pings them.
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
        for n in (1, 2)
    ]  # fmt: skip
    with workers(commands, celery_url) as started:

        def ready() -> bool:
            replies = client_app.control.ping(timeout=0.5)
            return len({name for reply in replies for name in reply}) == len(commands)

        started.wait_until(ready, lambda: "workers not ready", timeout_s=30)
        yield started


@pytest.mark.slow
def test_workers_share_the_rate(
    client_app: Celery, celery_workers: Workers, celery_url: str
) -> None:
    started = time.monotonic()
    results = [client_app.send_task("tests.celery_app.call_api", args=[i]) for i in range(TASKS)]
    try:
        done = [result.get(timeout=COMPLETE_TIMEOUT_S) for result in results]
    except Exception:
        print(celery_workers.logs())
        raise
    elapsed = time.monotonic() - started
    r = redis.Redis.from_url(celery_url)
    records = admissions(r, ADMISSIONS_KEY)
    r.close()

    # Every task ran its body exactly once, and completed, within the rate.
    assert sorted(done) == list(range(TASKS))
    summary = check_admissions(records, TASKS, RATE, elapsed)
    retries = [record["retries"] for record in records]
    # No capacity meant a retry through the broker, not a wait in the slot.
    assert sum(1 for n in retries if n) >= TASKS // 4, summary
    assert all(record["wait_s"] == 0 for record in records), summary


@pytest.mark.slow
def test_budget_exhaustion_fails_without_retry(
    client_app: Celery, celery_workers: Workers, celery_url: str
) -> None:
    first = client_app.send_task("tests.celery_app.spend", args=["0.60"])
    assert first.get(timeout=10) == "0.60"

    # $0.60 + $0.60 > $1.00: this one fails at once, with the budget's error.
    second = client_app.send_task("tests.celery_app.spend", args=["0.60"])
    second.get(timeout=10, propagate=False)
    assert second.state == "FAILURE"
    assert "budget of 'celery-budget' cannot take this" in str(second.result)
    # The budget's own error came back from the pool child (pickled).
    assert "ratelimit.errors.BudgetExceeded: the $1 per day budget" in second.traceback
    assert second.retries == 0  # not retried, though the task allows 3

    # Asked to, a task waits for the budget's next day instead.
    later = client_app.send_task("tests.celery_app.spend_later", args=["0.60"])
    celery_workers.wait_until(lambda: later.state == "RETRY", lambda: f"state {later.state}")

    state = usd_budget(celery_url, "celery-budget", BUDGET_USD)
    assert (state.spent, state.reserved) == (Decimal("0.60"), Decimal(0))


# -- in-process -------------------------------------------------------------------


@pytest.fixture
def local_app() -> Iterator[Celery]:
    """An app that runs tasks in this process only (``Task.apply``), no broker."""
    app = Celery("test-local", set_as_current=False)
    yield app
    app.close()


def _task(app: Celery, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.task(**options)``, typed for mypy: Celery ships no type hints."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(**options)
    return decorator


def test_costs_come_from_the_arguments_and_actual_settles(
    local_app: Celery, redis_url: str
) -> None:
    limiter = Limiter(redis_url, "local", usd=Budget(10))
    seen: list[Any] = []

    @_task(local_app, bind=True)
    @rate_limited(
        limiter=lambda: limiter,
        costs=lambda usd, *, note: {"usd": usd},
        actual=lambda result: {"usd": result / 2},
    )
    def task(self: Any, usd: float, *, note: str) -> float:
        seen.append((self.name, note, current_permit().reserved["usd"]))
        assert budget_state(limiter) == (Decimal(0), Decimal("0.5"))
        return usd

    assert task.apply(args=[0.5], kwargs={"note": "hi"}).get() == 0.5
    # The bound self was not passed to costs; the actual charge was half.
    assert seen == [(task.name, "hi", Decimal("0.5"))]
    assert budget_state(limiter) == (Decimal("0.25"), Decimal(0))


def test_the_body_may_settle_itself(local_app: Celery, redis_url: str) -> None:
    limiter = Limiter(redis_url, "local", usd=Budget(10))

    @_task(local_app)
    @rate_limited(limiter=lambda: limiter, costs={"usd": 1}, actual=lambda _: {"usd": 5})
    def task() -> None:
        current_permit().settle(usd=0.125)

    task.apply().get()
    assert budget_state(limiter) == (Decimal("0.125"), Decimal(0))  # actual() was not used


@pytest.mark.parametrize(("on_error", "spent"), [("cancel", 0), ("keep", 1)])
def test_an_exception_in_the_body_cancels_unless_kept(
    local_app: Celery, redis_url: str, on_error: Any, spent: int
) -> None:
    limiter = Limiter(redis_url, "local", usd=Budget(10))

    @_task(local_app)
    @rate_limited(limiter=lambda: limiter, costs={"usd": 1}, on_error=on_error)
    def task() -> None:
        raise ValueError("the provider said no")

    result = task.apply()
    assert isinstance(result.result, ValueError)
    assert budget_state(limiter) == (Decimal(spent), Decimal(0))


def test_outside_a_worker_a_refusal_raises(local_app: Celery, redis_url: str) -> None:
    @_task(local_app)
    @rate_limited(url=redis_url, name="local", requests=Rate(1, per=60))
    def task() -> str:
        return "ran"

    check_refusal_outside_a_worker(task, current_permit, NoCurrentPermit)


def test_an_eager_run_waits_in_place(local_app: Celery, redis_url: str) -> None:
    @_task(local_app, bind=True, max_retries=0)
    @rate_limited(url=redis_url, name="local", requests=Rate(1, per=1, burst=1))
    def task(self: Any) -> float:
        return current_permit().wait_s

    waits = [task.apply().get() for _ in range(3)]
    # The first had the bucket's one unit; each later one waited in place for
    # the next (a second apart, less what the run between them took) instead of
    # retrying (which max_retries=0 would have turned into a failure).
    assert waits[0] == 0
    assert all(0 < wait <= 1 for wait in waits[1:]), waits


def test_the_limiter_is_built_once_per_process(redis_url: str) -> None:
    built: list[int] = []

    def factory() -> Limiter:
        built.append(os.getpid())
        return Limiter(redis_url, "local", requests=Rate(10))

    lazy = LazyLimiter(factory, None, None, {})
    parent = lazy.get()
    assert lazy.get() is parent
    pid = os.fork()
    if pid == 0:  # the child: a limiter of its own, not the parent's
        os._exit(0 if lazy.get() is not parent and lazy.get() is lazy.get() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert built == [os.getpid()]


def test_limiters_from_one_url_are_shared_in_a_process(redis_url: str) -> None:
    one = LazyLimiter(None, redis_url, "shared", {"requests": Rate(10)})
    two = LazyLimiter(None, redis_url, "shared", {"requests": Rate(10)})
    other = LazyLimiter(None, redis_url, "other", {"requests": Rate(10)})
    assert one.get() is two.get()
    assert other.get() is not one.get()
