"""Worker processes that count client metrics in prometheus_client's multiprocess mode.

Run as ``python metrics_workers.py REDIS_URL WORKERS`` with
``PROMETHEUS_MULTIPROC_DIR`` set: the parent enables the metrics and then
forks its workers, as Celery's prefork pool does, and each worker books on
shared limiters; the limiters report what happened to the metrics.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from typing import Any

from ratelimit import Budget, BudgetExceeded, Limiter, Rate, metrics

RATES: dict[str, Any] = {"requests": Rate(5, per=3600)}
BUDGET: dict[str, Any] = {"usd": Budget("1")}
TRIES_PER_WORKER = 3


def booked(limiter: Limiter, **costs: Any) -> None:
    """try_acquire: the limiter reports its outcome to the metrics itself."""
    with contextlib.suppress(BudgetExceeded):
        limiter.try_acquire(**costs)


def work(url: str) -> None:
    rates = Limiter(url, "mp", **RATES)
    budget = Limiter(url, "mp-budget", **BUDGET)
    for _ in range(TRIES_PER_WORKER):
        booked(rates)
    booked(budget, usd="0.3")
    # Redis unreachable, and the limiter told to let calls through unmetered.
    down = Limiter("redis://127.0.0.1:1/0", "mp-down", on_redis_error="allow", **RATES)
    booked(down)
    metrics.provider_429("mp")
    metrics.cache_hit("mp")
    metrics.cache_hit("mp")


def main() -> None:
    url, workers = sys.argv[1], int(sys.argv[2])
    metrics.enable()  # in the parent, before the fork
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=work, args=(url,)) for _ in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        if process.exitcode != 0:
            raise SystemExit(f"a worker failed: {process.exitcode}")


if __name__ == "__main__":
    main()
