"""What the Celery and RQ worker tests share: worker processes and the checks.

Workers run as real command-line processes (``celery worker``, ``rq worker``)
in sessions of their own, so that stopping one stops everything it forked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from ratelimit import AcquireTimeout, Budget, BudgetState, Limiter, Rate

ROOT = Path(__file__).resolve().parent.parent
#: The venv's scripts (``celery``, ``rq``) sit next to its python.
BIN = Path(sys.executable).parent
#: Seconds a worker gets for a warm shutdown before it is killed.
STOP_TIMEOUT_S = 8.0

MICRO = 1_000_000


def url_with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db`` of the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def empty_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db`` of the same server, emptied first."""
    url = url_with_db(url, db)
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


def module_db_fixture(name: str, db: int) -> Callable[[str], str]:
    """A module-scoped fixture ``name``: the URL of database ``db`` of the suite's server.

    Emptied once, when the module starts: the workers' broker, queues and quotas
    live there, apart from the database the other tests empty between them.
    """

    def url(server_url: str) -> str:
        return empty_db(server_url, db)

    return pytest.fixture(scope="module", name=name)(url)


def budget_state(limiter: Limiter) -> tuple[Decimal, Decimal]:
    """What the limiter's ``usd`` budget has spent and holds reserved."""
    state = limiter.state().budget("usd")
    return state.spent, state.reserved


def usd_budget(url: str, name: str, usd: Decimal) -> BudgetState:
    """The state of the ``usd`` budget of quota ``name`` on ``url``, read afresh."""
    limiter = Limiter(url, name, usd=Budget(usd))
    try:
        return limiter.state().budget("usd")
    finally:
        limiter.client.close()


def check_refusal_outside_a_worker(
    call: Callable[[], object],
    current_permit: Callable[[], object],
    no_current_permit: type[Exception],
) -> None:
    """``call`` (limited to 1 a minute, run directly rather than by a worker) runs,
    then is refused: it raises :class:`AcquireTimeout` with the minute's wait, and
    no permit is left current.
    """
    assert call() == "ran"
    with pytest.raises(AcquireTimeout) as refused:
        call()
    assert 59 < refused.value.retry_after <= 60
    with pytest.raises(no_current_permit):
        current_permit()


@dataclass
class Workers:
    """Worker processes started by :func:`workers`, with their logs."""

    processes: list[subprocess.Popen[bytes]]
    log_paths: list[Path]

    def logs(self, tail_chars: int = 3000) -> str:
        """The end of every worker's log, to explain a failure."""
        out = []
        for path in self.log_paths:
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {path.name}\n{text[-tail_chars:]}")
        return "\n".join(out)

    def check_alive(self) -> None:
        """Fail with the logs if a worker has exited."""
        for process, path in zip(self.processes, self.log_paths, strict=True):
            if process.poll() is not None:
                raise AssertionError(f"{path.name} exited with {process.returncode}\n{self.logs()}")

    def wait_until(
        self, done: Callable[[], bool], what: Callable[[], str], timeout_s: float = 10.0
    ) -> None:
        """Poll ``done`` until it holds; fail with ``what()`` and the logs after ``timeout_s``.

        Fails at once, with the logs, if a worker exits meanwhile.
        """
        deadline = time.monotonic() + timeout_s
        while not done():
            self.check_alive()
            assert time.monotonic() < deadline, f"{what()}\n{self.logs()}"
            time.sleep(0.1)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The worker leads its own session: its group id is its pid.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


@contextmanager
def workers(commands: Sequence[Sequence[str]], url: str) -> Iterator[Workers]:
    """Run each command as a worker on ``url``; always stop them all on exit.

    The workers import the test helper modules as ``tests.<module>`` from the
    repository root, and find the server in ``$RATELIMIT_TEST_URL``.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), RATELIMIT_TEST_URL=url)
    with tempfile.TemporaryDirectory(prefix="ratelimit-workers-") as logdir:
        started = Workers([], [])
        try:
            for i, command in enumerate(commands):
                path = Path(logdir) / f"worker-{i}.log"
                with path.open("wb") as log:
                    started.processes.append(
                        subprocess.Popen(
                            list(command),
                            cwd=ROOT,
                            env=env,
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                started.log_paths.append(path)
            yield started
        finally:
            for process in started.processes:
                _signal_group(process, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for process in started.processes:
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                # Whatever the worker left behind (pool children, a work
                # horse, the scheduler) goes too.
                _signal_group(process, signal.SIGKILL)
                process.wait()


@dataclass(frozen=True)
class RateCheck:
    """How a list of unit-cost admissions compares with a :class:`Rate`."""

    windows_over: int
    """Windows (between two admissions) holding more than the rate allowed."""
    worst_excess: float
    """The largest excess over all windows, in admissions (<= 0 when none)."""


def check_rate(admitted_at_us: Sequence[int], rate: Rate) -> RateCheck:
    """Every window [t_i, t_j] between two admissions of cost 1, on server time.

    The window from the i-th to the j-th admission (sorted, i <= j) holds
    j - i + 1 of them and may hold ``burst + rate * (t_j - t_i)``; in exact
    integers, with the rate as num/den micro-units per microsecond:

        (j - i + 1) * MICRO * den <= capacity_micro * den + num * (t_j - t_i)
    """
    num, den = rate.refill_fraction()
    cap = rate.capacity_micro
    times = sorted(admitted_at_us)
    over = 0
    worst = -float("inf")
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            excess = (j - i + 1) * MICRO * den - (cap * den + num * (times[j] - start))
            if excess > 0:
                over += 1
            worst = max(worst, excess / den / MICRO)
    return RateCheck(over, worst)


def admissions(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    """The admissions the tasks recorded in the list at ``key``."""
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def check_admissions(
    records: Sequence[dict[str, Any]], tasks: int, rate: Rate, elapsed_s: float
) -> str:
    """Check ``tasks`` unit-cost runs were each admitted once, within ``rate``, on two workers.

    Returns a summary of the run, to print and to explain a later failure.
    """
    assert sorted(record["i"] for record in records) == list(range(tasks))
    times = [record["admitted_at_us"] for record in records]
    check = check_rate(times, rate)
    retries = [record["retries"] for record in records]
    summary = (
        f"{tasks} tasks in {elapsed_s:.1f}s (admissions spanning "
        f"{(max(times) - min(times)) / 1e6:.2f}s, at least "
        f"{(tasks - rate.capacity) / rate.rate_per_s:.1f}s allowed); "
        f"{sum(retries)} retries, {sum(1 for n in retries if n)} tasks retried, "
        f"at most {max(retries)}; {sum(1 for r in records if r['wait_s'] > 0)} waited "
        f"in place; windows over the rate {check.windows_over}, worst excess "
        f"{check.worst_excess:+.3f}; workers {sorted({r['worker'] for r in records})}, "
        f"{len({r['pid'] for r in records})} processes"
    )
    print(summary)
    # The rate held across both workers and all their processes, on Redis time.
    assert check.windows_over == 0, summary
    # Both workers took part, so the quota really was shared.
    assert len({record["worker"] for record in records}) == 2, summary
    return summary
