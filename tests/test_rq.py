"""``ratelimit.rq``: jobs take the shared quota before they run.

The slow tests start two real ``rq worker --with-scheduler`` processes (each
forks a work horse per job) on the suite's server, enqueue more jobs than the
quota lets through at once, and judge the admissions afterwards on Redis
time: every window between two admissions held no more than ``burst + rate x
window``, every job finished, and the refused ones went back through RQ's
scheduler (a returned ``Retry``) rather than waiting in a worker. The others
run job functions in-process to pin down the paths that need no worker.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis
from rq import Queue, Retry, Worker
from rq.job import Job, JobStatus
from rq_jobs import (
    ADMISSIONS_KEY,
    BUDGET_USD,
    QUEUE,
    RATE,
    WAITING_ADMISSIONS_KEY,
    WAITING_RATE,
)
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

from ratelimit import Budget, BudgetExceeded, Limiter, Rate
from ratelimit.rq import DEFAULT_MAX_RETRIES, NoCurrentPermit, current_permit, rate_limited

#: The database the workers' queues and quotas use: not the one the other
#: tests empty between them.
RQ_DB = 6
#: Jobs retried through the schedule when refused: at 5/s, 4.6 s at least.
JOBS = 25
#: Jobs that wait in place first: at 10/s, 3.8 s at least.
WAITING_JOBS = 40
#: Seconds for all jobs to finish: RQ's scheduler works in whole seconds.
FINISH_TIMEOUT_S = 30.0


# -- real workers ----------------------------------------------------------------


rq_url = module_db_fixture("rq_url", RQ_DB)


@pytest.fixture(scope="module")
def rq_redis(rq_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(rq_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def rq_workers(rq_url: str, rq_redis: redis.Redis) -> Iterator[Workers]:
    """Two ``rq worker`` processes with the scheduler; always stopped.

    ``-c tests.rq_jobs`` makes each worker import the job module before it
    forks a work horse per job (as a settings module; it sets none of RQ's
    settings), so the horses start with the code loaded but no limiter.
    """
    commands = [
        [
            str(BIN / "rq"), "worker", "--url", rq_url, "--with-scheduler",
            "--name", f"w{n}", "-c", "tests.rq_jobs", QUEUE,
        ]
        for n in (1, 2)
    ]  # fmt: skip
    with workers(commands, rq_url) as started:
        started.wait_until(
            lambda: Worker.count(connection=rq_redis) == len(commands),
            lambda: "workers not ready",
            timeout_s=30,
        )
        yield started


def wait_for(jobs: list[Job], workers: Workers, timeout_s: float) -> None:
    """Until every job has finished or failed (at most ``timeout_s`` seconds)."""
    ended = {JobStatus.FINISHED, JobStatus.FAILED}
    workers.wait_until(
        lambda: all(job.get_status() in ended for job in jobs),
        lambda: f"{sum(job.get_status() not in ended for job in jobs)} jobs unfinished",
        timeout_s,
    )


#: ``run_jobs(function, jobs, key, rate)``: see the fixture.
RunJobs = Callable[[str, int, str, Rate], tuple[list[dict[str, Any]], str]]


@pytest.fixture
def run_jobs(rq_workers: Workers, rq_redis: redis.Redis) -> RunJobs:
    """Enqueue ``jobs`` calls of ``function``; check they all finished within ``rate``.

    The function records its admissions in the list at ``key``. Returns each
    admission's record and a summary of the run.
    """
    return functools.partial(_run_jobs, rq_workers=rq_workers, rq_redis=rq_redis)


def _run_jobs(
    function: str, jobs: int, key: str, rate: Rate, *, rq_workers: Workers, rq_redis: redis.Redis
) -> tuple[list[dict[str, Any]], str]:
    queue = Queue(QUEUE, connection=rq_redis)
    started = time.monotonic()
    enqueued = [queue.enqueue(function, i) for i in range(jobs)]
    wait_for(enqueued, rq_workers, FINISH_TIMEOUT_S)
    elapsed = time.monotonic() - started
    records = admissions(rq_redis, key)

    # Every job ran its function exactly once, and finished with its result.
    fetched = Job.fetch_many([job.id for job in enqueued], connection=rq_redis)
    enqueued = [job for job in fetched if job is not None]
    statuses = [job.get_status() for job in enqueued]
    assert statuses == [JobStatus.FINISHED] * jobs, rq_workers.logs()
    assert [job.return_value() for job in enqueued] == list(range(jobs))
    summary = check_admissions(records, jobs, rate, elapsed)
    retries = {record["i"]: record["retries"] for record in records}
    assert [job.number_of_retries or 0 for job in enqueued] == [retries[i] for i in range(jobs)]
    return records, summary


@pytest.mark.slow
def test_workers_share_the_rate(run_jobs: RunJobs) -> None:
    records, summary = run_jobs("tests.rq_jobs.call_api", JOBS, ADMISSIONS_KEY, RATE)
    # No capacity meant a Retry through RQ's scheduler, not a wait in a worker.
    assert sum(1 for record in records if record["retries"]) >= JOBS // 2, summary
    assert all(record["wait_s"] == 0 for record in records), summary


@pytest.mark.slow
def test_jobs_may_wait_in_place_first(run_jobs: RunJobs) -> None:
    records, summary = run_jobs(
        "tests.rq_jobs.call_api_waiting", WAITING_JOBS, WAITING_ADMISSIONS_KEY, WAITING_RATE
    )
    # Jobs took a place in line (a wait of at most wait_s = 1 s) instead of
    # going back to the schedule.
    assert sum(1 for record in records if record["wait_s"] > 0) >= WAITING_JOBS // 2, summary
    assert all(record["wait_s"] <= 1 for record in records), summary


@pytest.mark.slow
def test_budget_exhaustion_fails_without_retry(
    rq_workers: Workers, rq_redis: redis.Redis, rq_url: str
) -> None:
    queue = Queue(QUEUE, connection=rq_redis)
    first = queue.enqueue("tests.rq_jobs.spend", "0.60")
    wait_for([first], rq_workers, 10)
    assert first.return_value() == "0.60"

    # $0.60 + $0.60 > $1.00: this one fails at once with the budget's error,
    # and RQ's retry-on-failure, asked for here, is not used.
    second = queue.enqueue("tests.rq_jobs.spend", "0.60", retry=Retry(max=3))
    wait_for([second], rq_workers, 10)
    assert second.get_status() == JobStatus.FAILED
    result = second.latest_result()
    assert result is not None
    assert result.exc_string is not None
    assert "ratelimit.errors.BudgetExceeded: the $1 per day budget" in result.exc_string
    assert len(second.results()) == 1  # ran once: no retries

    # Asked to, a job waits in RQ's schedule for the budget's next day instead.
    later = queue.enqueue("tests.rq_jobs.spend_later", "0.60")
    rq_workers.wait_until(
        lambda: later.get_status() == JobStatus.SCHEDULED, lambda: f"{later.get_status()}"
    )

    state = usd_budget(rq_url, "rq-budget", BUDGET_USD)
    assert (state.spent, state.reserved) == (Decimal("0.60"), Decimal(0))
    scheduled = queue.scheduled_job_registry.get_scheduled_time(later)
    # The reset, plus up to 1 s of jitter and 1 s of rounding up.
    assert 0 <= (scheduled - state.resets_at).total_seconds() <= 3


# -- in-process -------------------------------------------------------------------


def test_outside_a_worker_a_refusal_raises(redis_url: str) -> None:
    @rate_limited(url=redis_url, name="local", requests=Rate(1, per=60))
    def job() -> str:
        assert current_permit().reserved == {"requests": Decimal(1)}
        return "ran"

    check_refusal_outside_a_worker(job, current_permit, NoCurrentPermit)


@pytest.mark.parametrize(("on_error", "spent"), [("cancel", 0), ("keep", 1)])
def test_an_exception_in_the_function_cancels_unless_kept(
    redis_url: str, on_error: Any, spent: int
) -> None:
    limiter = Limiter(redis_url, "local", usd=Budget(10))

    @rate_limited(limiter=lambda: limiter, costs={"usd": 1}, on_error=on_error)
    def job() -> None:
        raise ValueError("the provider said no")

    with pytest.raises(ValueError, match="provider"):
        job()
    assert budget_state(limiter) == (Decimal(spent), Decimal(0))


def test_costs_and_actual(redis_url: str) -> None:
    limiter = Limiter(redis_url, "local", usd=Budget(1))

    @rate_limited(
        limiter=lambda: limiter,
        costs=lambda usd: {"usd": usd, "model": "claude-test"},
        actual=lambda result: {"usd": result},
    )
    def job(usd: float) -> float:
        return usd / 4

    assert job(0.5) == 0.125
    assert budget_state(limiter) == (Decimal("0.125"), Decimal(0))
    assert [entry.model for entry in limiter.ledger_entries()] == ["claude-test"]
    with pytest.raises(BudgetExceeded):
        job(0.9)


def test_arguments_are_checked_when_decorating() -> None:
    with pytest.raises(TypeError):
        rate_limited(name="no-url", requests=Rate(1))
    with pytest.raises(ValueError, match="not both"):
        rate_limited(limiter=lambda: None, url="redis://x", name="n")  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="max_retries"):
        rate_limited(url="redis://x", name="n", requests=Rate(1), max_retries=-1)
    assert DEFAULT_MAX_RETRIES > 0


def test_a_retry_is_whole_seconds_after_retry_after() -> None:
    from ratelimit.rq import _retry_in

    for delay, jitter, lowest, highest in [(0.01, 0, 1, 1), (0.2, 1.0, 1, 2), (4.5, 0.5, 5, 5)]:
        retry = _retry_in(delay, jitter, 7)
        assert retry.max == 7
        assert lowest <= retry.intervals[0] <= highest
    # A budget reset a day away becomes a day of waiting, to the second.
    day = (datetime(2026, 1, 2, tzinfo=UTC) - datetime(2026, 1, 1, tzinfo=UTC)).total_seconds()
    assert _retry_in(day, 0, 1).intervals == [86_400]
