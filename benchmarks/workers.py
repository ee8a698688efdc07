"""Worker processes that start a measured run together, and what their admissions show.

A benchmark describes what each worker does as a :class:`Task`: a picklable
object whose ``prepare`` runs in the worker (connect, warm up) and returns the
function that then runs until the shared deadline. :func:`run_workers` starts
the workers, waits until every one is prepared, lets them go at one instant and
collects what each returned.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import ForkContext, SpawnContext
from typing import Any, Generic, Protocol, TypeVar

from common import MICRO

from ratelimit import Rate

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

#: Workers start this long after the last one said it was ready, all at once.
START_DELAY_S = 0.05


class Task(Protocol[R_co]):
    """What one worker process does; picklable where workers are spawned."""

    @property
    def duration_s(self) -> float: ...

    def prepare(self) -> Callable[[float], R_co]:
        """In the worker: get ready, and return what runs until a ``time.monotonic`` deadline."""
        ...


@dataclass(frozen=True)
class Done(Generic[R]):
    """What one worker returned, and how long it ran (from the common start)."""

    value: R
    elapsed_s: float


def mp_context() -> ForkContext | SpawnContext:
    """Fork where there is one (fast to start 16 workers), else spawn."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _worker(
    task: Task[R],
    ready: multiprocessing.Queue[str | None],
    go: Any,
    start_at: Any,
    results: multiprocessing.Queue[tuple[Done[R] | None, str | None]],
) -> None:
    try:
        run = task.prepare()
    except Exception as exc:
        ready.put(f"worker {os.getpid()} could not start: {exc!r}")
        return
    ready.put(None)
    try:
        go.wait()
        start = float(start_at.value)
        time.sleep(max(0.0, start - time.monotonic()))
        value = run(start + task.duration_s)
        results.put((Done(value, time.monotonic() - start), None))
    except Exception as exc:
        results.put((None, f"worker {os.getpid()}: {exc!r}"))


def run_workers(
    task: Task[R],
    count: int,
    before_go: Callable[[], None] = lambda: None,
    *,
    grace_s: float = 60.0,
) -> list[Done[R]]:
    """Start ``count`` workers on ``task``, let them go together, collect their results.

    ``before_go`` runs once every worker is prepared, just before they start
    (to reset the server's counters). Each wait is bounded: a worker that does
    not report within its run plus ``grace_s`` fails the run.
    """
    ctx = mp_context()
    ready: multiprocessing.Queue[str | None] = ctx.Queue()
    results: multiprocessing.Queue[tuple[Done[R] | None, str | None]] = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    workers = [
        ctx.Process(target=_worker, args=(task, ready, go, start_at, results), daemon=True)
        for _ in range(count)
    ]
    for worker in workers:
        worker.start()
    try:
        problems = [ready.get(timeout=grace_s) for _ in workers]
        failed = [p for p in problems if p is not None]
        if failed:
            raise RuntimeError("; ".join(failed))
        before_go()
        start_at.value = time.monotonic() + START_DELAY_S
        go.set()
        collected = [results.get(timeout=task.duration_s + grace_s) for _ in workers]
    except BaseException as exc:
        for worker in workers:  # some may wait forever for a go that will not come
            worker.terminate()
        if isinstance(exc, queue.Empty):
            raise RuntimeError(f"workers of {task!r} did not report in time") from None
        raise
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
    errors = [error for _, error in collected if error]
    if errors:
        raise RuntimeError("; ".join(errors))
    return [done for done, _ in collected if done is not None]


# -- what the admissions show -------------------------------------------------------


def admission_check(times_us: list[int], rate: Rate, cost_micro: int) -> dict[str, Any]:
    """Admissions against what the bucket allows, by server TIME.

    The quota is fresh (full) at the first admission t0; by the i-th admission
    at t_i at most ``burst + rate * (t_i - t0)`` may have gone ahead.
    ``over_admitted`` is the worst excess over every such prefix (0 = exact).
    """
    if not times_us:
        return {"elapsed_s": 0.0, "allowed": 0, "over_admitted": 0, "utilisation": 0.0}
    ordered = sorted(times_us)
    num, den = rate.refill_fraction()
    cap = rate.capacity_micro
    first = ordered[0]
    worst = 0
    for index, at in enumerate(ordered, 1):
        excess = index * cost_micro - (cap + (at - first) * num // den)
        if excess > 0:
            worst = max(worst, -(-excess // cost_micro))
    elapsed_us = ordered[-1] - first
    allowed = (cap + elapsed_us * num // den) // cost_micro
    return {
        "elapsed_s": elapsed_us / MICRO,
        "allowed": allowed,
        "over_admitted": worst,
        "utilisation": len(ordered) / allowed if allowed else 0.0,
    }


def jain_index(shares: Sequence[float]) -> float:
    """Jain's fairness index of ``shares``: 1 when all are equal, 1/n when one takes all."""
    total = sum(shares)
    squares = sum(share * share for share in shares)
    if not shares or squares == 0:
        return math.nan
    return total * total / (len(shares) * squares)
