"""A Redis restart in the middle of a budget period, while four worker processes settle.

The issue measured, with persistence off: spend went from $3.37 to $0 and the
workers spent $7.18 on a $5 budget. Now each process remembers the highest
spend it has seen this period and sends it with every call; a budget found
missing (or lower) is restored to that floor, with an ERROR log. What the
restart still loses are the reservations in flight (their permits are gone,
so their settles are not recorded): the bound is the limit plus one
reservation per worker. With an AOF (``appendfsync always`` and a crash, or
``everysec`` and a graceful restart) nothing is lost at all.

The workers are real processes with their own clients. They spend until 90%
of the budget, then each acquires one more permit and holds it while the
server restarts (the worst case: every worker has a reservation in flight),
then settles it and spends on until the budget refuses. What they spent is
counted from their own records: every settled cost, recorded by Redis or not.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.synchronize
import random
import time
import traceback
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import redis
from topology import Server, ServerFactory

from ratelimit import Budget, BudgetExceeded, Limiter, RedisUnavailable
from ratelimit.core.keys import ScopeKeys
from ratelimit.core.numbers import NANO

pytestmark = pytest.mark.slow

LIMIT = Decimal(5)
RESERVE = Decimal("0.05")
#: Where the workers stop to hold a permit over the restart: 90% of the budget.
RESTART_AT = LIMIT * Decimal("0.9")
WORKERS = 4
NAME = "restart"
#: Every wait of the test is bounded by this, in seconds.
DEADLINE_S = 60.0


@dataclass
class WorkerReport:
    """What one worker spent, and what the library told it."""

    spent: Decimal = Decimal(0)
    settles: int = 0
    recorded: int = 0
    """Settles Redis applied (status "settled"); the rest found their permit gone."""
    refusals: int = 0
    errors: list[str] = field(default_factory=list)
    logs: list[tuple[str, str]] = field(default_factory=list)
    """(level, message) of the ``ratelimit`` logger's WARNING and ERROR records."""


class _Collect(logging.Handler):
    def __init__(self, into: list[tuple[str, str]]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append((record.levelname, record.getMessage()))


def _settle(limiter: Limiter, permit_id: str, report: WorkerReport, cost: Decimal) -> None:
    """Settle, trying again while the server is away: the call did cost ``cost``."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            settlement = limiter.settle(permit_id, usd=cost)
        except RedisUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        break
    report.spent += cost
    report.settles += 1
    report.recorded += settlement.applied


@dataclass(frozen=True)
class Rendezvous:
    """What the workers and the test share."""

    total_nano: Any
    """What every worker has settled so far, nano-dollars (a shared integer)."""
    holding: multiprocessing.synchronize.Barrier
    """Passed when every worker holds a permit at 90%: the server restarts then."""
    resume: multiprocessing.synchronize.Event
    """Set once the server has restarted."""
    results: multiprocessing.Queue[tuple[int, WorkerReport]]


def _worker(index: int, url: str, meet: Rendezvous) -> None:
    total_nano, holding, resume = meet.total_nano, meet.holding, meet.resume
    report = WorkerReport()
    logger = logging.getLogger("ratelimit")
    logger.addHandler(_Collect(report.logs))
    rng = random.Random(index)
    try:
        limiter = Limiter(url, NAME, usd=Budget(LIMIT))
        held = False
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                permit = limiter.acquire(usd=RESERVE)
            except BudgetExceeded:
                report.refusals += 1
                if held:
                    break  # the budget is spent (before the restart it cannot be)
                raise
            # What the call really cost: at most its reservation.
            cost = RESERVE * rng.randint(40, 100) / 100
            if not held and Decimal(total_nano.value) / NANO >= RESTART_AT:
                held = True
                holding.wait(timeout=DEADLINE_S)  # every worker holds a permit
                resume.wait(timeout=DEADLINE_S)  # the server has restarted
            _settle(limiter, permit.id, report, cost)
            with total_nano.get_lock():
                total_nano.value += int(cost * NANO)
        else:
            report.errors.append("the budget never ran out")
    except Exception:
        report.errors.append(traceback.format_exc())
        holding.abort()
    meet.results.put((index, report))


def run_restart(server: Server, *, graceful: bool) -> tuple[list[WorkerReport], redis.Redis]:
    """Four workers spend; at 90% the server restarts under them; they spend to the end."""
    ctx = multiprocessing.get_context("forkserver")
    # Not fork: this process may have threads by now (earlier tests'), and a
    # child forked while one held a lock would wait for it forever.
    ctx.set_forkserver_preload(["pytest", "redis", "ratelimit"])
    meet = Rendezvous(ctx.Value("q", 0), ctx.Barrier(WORKERS + 1), ctx.Event(), ctx.Queue())
    workers = [ctx.Process(target=_worker, args=(i, server.url, meet)) for i in range(WORKERS)]
    for worker in workers:
        worker.start()
    try:
        meet.holding.wait(timeout=DEADLINE_S)
        server.restart(graceful=graceful)
        meet.resume.set()
        reports = dict(meet.results.get(timeout=DEADLINE_S) for _ in workers)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            worker.kill()  # nothing, once it has exited
            worker.join()
    ordered = [reports[i] for i in range(WORKERS)]
    for report in ordered:
        assert not report.errors, report.errors[0]
    return ordered, server.client()


def test_a_restart_without_persistence_restores_the_spend_floor(
    start_server: ServerFactory,
) -> None:
    server = start_server()  # --save "" --appendonly no
    reports, client = run_restart(server, graceful=False)

    spent = sum((r.spent for r in reports), Decimal(0))
    # Only the reservations in flight at the restart escape the budget: one per worker.
    assert spent <= LIMIT + WORKERS * RESERVE, spent
    assert spent > LIMIT - RESERVE  # and the budget was spent to the end
    # Their settles found nothing to settle: the restart took their permits.
    assert sum(r.settles - r.recorded for r in reports) == WORKERS

    logs = [entry for r in reports for entry in r.logs]
    restored = [message for level, message in logs if level == "ERROR"]
    assert restored, logs
    assert all("lost its spend" in m and "ratelimit restore" in m for m in restored)
    # The deployment check had said why: budgets on a server without an AOF.
    assert any(level == "WARNING" and "appendonly no" in message for level, message in logs), logs

    # Redis records when it lost the budget: the string's eighth token.
    raw = client.get(ScopeKeys(NAME, NAME).budget)
    assert isinstance(raw, bytes)
    tokens = raw.split(b" ")
    assert len(tokens) == 8
    assert int(tokens[7]) > 0
    # What Redis holds now is the restored floor plus what was settled after it.
    state = Limiter(client, NAME, usd=Budget(LIMIT)).state().budget("usd")
    assert RESTART_AT <= state.spent <= LIMIT
    client.close()


@pytest.mark.parametrize(
    ("fsync", "graceful"),
    [("always", False), ("everysec", True)],
    ids=["appendfsync-always-crash", "appendfsync-everysec-graceful"],
)
def test_a_restart_with_an_aof_loses_nothing(
    start_server: ServerFactory, fsync: str, graceful: bool
) -> None:
    server = start_server("--appendonly", "yes", "--appendfsync", fsync)
    reports, client = run_restart(server, graceful=graceful)

    spent = sum((r.spent for r in reports), Decimal(0))
    assert spent <= LIMIT
    assert all(r.settles == r.recorded for r in reports)  # every permit survived
    assert not [m for r in reports for level, m in r.logs if level == "ERROR"]

    limiter = Limiter(client, NAME, usd=Budget(LIMIT))
    # Redis, its ledger and the workers agree to the nano-dollar.
    assert limiter.state().budget("usd").spent == spent
    entries = limiter.ledger_entries()
    assert len(entries) == sum(r.settles for r in reports)
    assert sum((e.cost_usd for e in entries), Decimal(0)) == spent
    assert sum(sum(models.values(), Decimal(0)) for models in limiter.spend().values()) == spent
    raw = client.get(ScopeKeys(NAME, NAME).budget)
    assert isinstance(raw, bytes)
    assert raw.split(b" ")[7] == b"0"  # never lost
    client.close()
