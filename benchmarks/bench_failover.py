#!/usr/bin/env python3
"""Failover: admissions beyond the quota, and the pause in admission, when Redis fails over.

    python benchmarks/bench_failover.py [--quick] [--case NAME ...] [--json PATH]

Each case starts its own servers (the test suite's ``topology`` helpers: real
``redis-server`` processes, real sentinels, a real cluster), runs four
worker processes on one quota, ``Rate(200, per=1, burst=20)``, breaks the
primary, and keeps the workers going until every one is admitted again:

- ``replica-kill``: a primary and its replica; SIGKILL the primary, ``REPLICAOF
  NO ONE`` on the replica, and point the clients at it (as a DNS name or a
  virtual IP would: each worker reads the address again after an error);
- ``sentinel-failover`` and ``sentinel-failover-min-replicas``: a primary, two
  replicas, three sentinels; ``SENTINEL FAILOVER`` while the old primary is up,
  without and with ``min-replicas-to-write 1`` / ``min-replicas-max-lag 10``
  on every server; clients from ``redis.sentinel.Sentinel.master_for``;
- ``sentinel-kill`` and ``sentinel-kill-min-replicas``: the same with a SIGKILL
  of the primary instead;
- ``cluster-kill``: three primaries with a replica each; SIGKILL the primary
  of the quota's slot; clients are ``redis.cluster.RedisCluster``.

The workers are a fleet's two kinds of process: two keep one client for the
whole run (a long-lived server process), two make a new client every half
second (new processes, short jobs), which ask where the primary is anew.
Each worker calls ``try_acquire`` and ``acquire(timeout=0.5)`` in turn, as
fast as they return. Every admission is recorded at its admission
time by the server's clock (``Permit.admitted_at_us``; every server runs on
this machine, so their clocks agree), whichever server admitted it.

Figures, per case:

- over-admitted: the most admissions, over any window of time [a, b] of the
  run, beyond what the bucket allows in it, ``burst + rate * (b - a)``; 0 when
  the two primaries together never let more through than one would have;
- switch: from the fault until the servers agree the failover is over (for
  ``SENTINEL FAILOVER``, until the old primary is demoted, about ten seconds
  after the switch; for a kill, until a replica is promoted);
- pause: the longest time in which no worker was admitted; and the longest
  one worker went without admission;
- what callers saw meanwhile: refusals by the bucket, ``RedisRefused`` (a
  write refused in the failover, after the limiter's own retries),
  ``RedisUnavailable`` (unreachable: ``on_redis_error`` applies; the workers
  use ``"raise"``), anything else (none expected), and permits admitted
  unmetered (none expected).

``--quick`` keeps each phase short (the test suite runs it). A full run takes
about a minute and a half; the last one is in results/failover-baseline.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import logging
import multiprocessing
import os
import platform
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import redis
import redis.cluster
import redis.sentinel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from common import finish, fmt, package_version, print_conditions, table  # noqa: E402
from topology import ClusterTopology, ReplicaPair, SentinelTopology  # noqa: E402
from workers import mp_context  # noqa: E402

from ratelimit import Limiter, Rate  # noqa: E402
from ratelimit.backend import FAILOVER_WAIT_S, connect  # noqa: E402
from ratelimit.core.keys import ScopeKeys  # noqa: E402
from ratelimit.errors import AcquireTimeout, RedisRefused, RedisUnavailable  # noqa: E402
from ratelimit.server import find_binary  # noqa: E402

MICRO = 1_000_000
NAME = "failover"
RATE = Rate(200, per=1, burst=20)
#: How often a "fresh" worker makes a new client, seconds.
FRESH_EVERY_S = 0.5
#: How long a worker waits after an error before it tries again.
ERROR_PAUSE_S = 0.05
#: Every wait of the run is bounded by this (seconds).
DEADLINE_S = 90.0

MIN_REPLICAS = ("min-replicas-to-write 1", "min-replicas-max-lag 10")

CASES: dict[str, str] = {
    "replica-kill": "SIGKILL primary, REPLICAOF NO ONE, clients re-pointed",
    "sentinel-failover": "SENTINEL FAILOVER, 2 replicas",
    "sentinel-failover-min-replicas": "SENTINEL FAILOVER, 2 replicas, " + ", ".join(MIN_REPLICAS),
    "sentinel-kill": "SIGKILL primary, 2 replicas, Sentinel",
    "sentinel-kill-min-replicas": "SIGKILL primary, 2 replicas, Sentinel, "
    + ", ".join(MIN_REPLICAS),
    "cluster-kill": "SIGKILL the slot's primary, 3 primaries + 3 replicas",
}


# -- where the workers find Redis ---------------------------------------------------


@dataclass(frozen=True)
class Target:
    """How a worker reaches the primary: a port to re-read, sentinels, or cluster nodes."""

    kind: str  # "port", "sentinel" or "cluster"
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    nodes: tuple[int, ...] = ()


def new_client(target: Target, port: int) -> tuple[Any, list[Any]]:
    """A client as the worker's kind of process makes one (1 s socket timeouts), and
    every client it opened (to close when done with it)."""
    if target.kind == "port":
        client: Any = connect(f"redis://127.0.0.1:{port}/0")
        return client, [client]
    if target.kind == "sentinel":
        timeouts = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), sentinel_kwargs=timeouts, **timeouts
        )
        client = sentinel.master_for(target.master_name, **timeouts)  # type: ignore[no-untyped-call]
        return client, [client, *sentinel.sentinels]
    nodes = [redis.cluster.ClusterNode("127.0.0.1", p) for p in target.nodes]  # type: ignore[no-untyped-call]
    client = redis.cluster.RedisCluster(
        startup_nodes=nodes, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    return client, [client]


def close_all(clients: list[Any]) -> None:
    for client in clients:
        with contextlib.suppress(redis.exceptions.RedisError):
            client.close()


# -- the workers --------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: its place in the fleet, and whether it makes a new client often."""

    index: int
    fresh: bool


@dataclass
class WorkerRecord:
    """What one worker saw."""

    spec: WorkerSpec
    admitted_us: list[int] = field(default_factory=list)
    refused: int = 0
    redis_refused: int = 0
    unavailable: int = 0
    unmetered: int = 0
    other_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Shared:
    """What the fleet's processes share with the benchmark."""

    port: Any
    """The primary's port, for ``Target("port")``: set by the benchmark after a switch."""
    progress: Any
    """Each worker's latest admission time (server clock, µs; 0 = none yet)."""
    stop: Event
    results: multiprocessing.Queue[WorkerRecord]


def _work(spec: WorkerSpec, target: Target, shared: Shared) -> None:
    logging.getLogger("ratelimit").setLevel(logging.ERROR)  # the check's replica warnings
    record = WorkerRecord(spec)
    opened: list[Any] = []
    renew_at = 0.0
    seen_port = -1
    tries = False
    try:
        while not shared.stop.is_set():
            now = time.monotonic()
            moved = target.kind == "port" and shared.port.value != seen_port
            if not opened or (spec.fresh and now >= renew_at) or moved:
                close_all(opened)
                seen_port = shared.port.value
                client, opened = new_client(target, seen_port)
                limiter = Limiter(client, NAME, requests=RATE)
                renew_at = now + FRESH_EVERY_S
            try:
                # Alternately: the call that never waits, and the one that books a place.
                tries = not tries
                permit = limiter.try_acquire() if tries else limiter.acquire(timeout=0.5)
            except AcquireTimeout:
                record.refused += 1
                continue
            except RedisRefused:
                record.redis_refused += 1
                time.sleep(ERROR_PAUSE_S)
                continue
            except RedisUnavailable:
                record.unavailable += 1
                time.sleep(ERROR_PAUSE_S)
                continue
            except Exception as exc:
                record.other_errors.append(repr(exc))
                time.sleep(ERROR_PAUSE_S)
                continue
            if permit is None:
                record.refused += 1
            elif not permit.backed:
                record.unmetered += 1
            else:
                record.admitted_us.append(permit.admitted_at_us)
                shared.progress[spec.index] = permit.admitted_at_us
    finally:
        close_all(opened)
        shared.results.put(record)


class Fleet:
    """Four worker processes on one quota: a context manager that starts them, and
    stops any still running on exit."""

    SPECS = (
        WorkerSpec(0, fresh=False),
        WorkerSpec(1, fresh=False),
        WorkerSpec(2, fresh=True),
        WorkerSpec(3, fresh=True),
    )

    def __init__(self, target: Target, port: int = 0) -> None:
        ctx = mp_context()
        self.shared = Shared(
            ctx.Value("i", port), ctx.Array("q", len(self.SPECS)), ctx.Event(), ctx.Queue()
        )
        self.processes = [
            ctx.Process(target=_work, args=(spec, target, self.shared), daemon=True)
            for spec in self.SPECS
        ]

    def __enter__(self) -> Fleet:
        for process in self.processes:
            process.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shared.stop.set()
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join()

    def last_admissions(self) -> list[int]:
        """Each worker's latest admission time (server clock, µs; 0 = none yet)."""
        return [int(t) for t in self.shared.progress]

    def wait_all_admitted_after(self, t_us: int, what: str) -> None:
        """Wait until every worker has been admitted at or after ``t_us``."""
        deadline = time.monotonic() + DEADLINE_S
        while min(self.last_admissions()) < t_us:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every worker was admitted {what} within {DEADLINE_S} s")
            if not all(p.is_alive() for p in self.processes):
                raise RuntimeError("a worker process died")
            time.sleep(0.05)

    def collect(self) -> list[WorkerRecord]:
        """Stop the workers and return what each saw."""
        self.shared.stop.set()
        # A call in progress may be retrying through a failover: FAILOVER_WAIT_S at most.
        grace = FAILOVER_WAIT_S + DEADLINE_S
        try:
            records = [self.shared.results.get(timeout=grace) for _ in self.processes]
        except queue.Empty:
            raise RuntimeError("the workers did not report") from None
        finally:
            for process in self.processes:
                process.join(timeout=10)
                if process.is_alive():
                    process.kill()
                    process.join()
        return sorted(records, key=lambda r: r.spec.index)


# -- what the admissions show -------------------------------------------------------


def over_admitted(times_us: list[int], rate: Rate = RATE) -> int:
    """The most admissions beyond ``burst + rate * (b - a)`` over any window [a, b].

    Exact integers: with admissions t_1 <= ... <= t_n, the excess of window
    [t_i, t_j] is (j - i + 1) - burst - rate * (t_j - t_i); its maximum over
    i <= j is found in one pass, keeping the best start seen so far.
    """
    num, den = rate.refill_fraction()  # micro-units per µs
    cost, cap = MICRO, rate.capacity_micro
    best_start: int | None = None
    worst = 0
    for j, at in enumerate(sorted(times_us), 1):
        start = at * num - (j - 1) * cost * den
        best_start = start if best_start is None else max(best_start, start)
        excess = j * cost * den - at * num + best_start - cap * den
        worst = max(worst, excess)
    return -(-worst // (cost * den))


def longest_gap_s(times_us: list[int]) -> float:
    """The longest time between two consecutive admissions, seconds."""
    ordered = sorted(times_us)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    return max(gaps, default=0) / MICRO


@dataclass(frozen=True)
class CaseResult:
    """One case's figures."""

    case: str
    settings: str
    admitted: int
    over_admitted: int
    burst: int
    pause_s: float
    worker_pause_s: float
    fault_to_switch_s: float
    refused: int
    redis_refused: int
    unavailable: int
    unmetered: int
    other_errors: list[str]
    admitted_between: int
    """Admissions between the fault and the end of the failover (by server time)."""


def summarize(
    case: str, records: list[WorkerRecord], fault_us: int, switched_us: int
) -> CaseResult:
    times = [t for r in records for t in r.admitted_us]
    return CaseResult(
        case=case,
        settings=CASES[case],
        admitted=len(times),
        over_admitted=over_admitted(times),
        burst=int(RATE.capacity),
        pause_s=longest_gap_s(times),
        worker_pause_s=max(longest_gap_s(r.admitted_us) for r in records),
        fault_to_switch_s=(switched_us - fault_us) / MICRO,
        refused=sum(r.refused for r in records),
        redis_refused=sum(r.redis_refused for r in records),
        unavailable=sum(r.unavailable for r in records),
        unmetered=sum(r.unmetered for r in records),
        other_errors=[e for r in records for e in r.other_errors],
        admitted_between=sum(1 for t in times if fault_us <= t <= switched_us),
    )


# -- the cases ------------------------------------------------------------------------


def server_time_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * MICRO + int(micros)


@dataclass(frozen=True)
class Phases:
    """How long the workers run before the fault and after every one is admitted again."""

    before_s: float
    after_s: float


@contextmanager
def running(fleet: Fleet, clock: Callable[[], int], phases: Phases) -> Iterator[None]:
    """Start the fleet, let it run ``before_s`` after its first admissions, then yield."""
    with fleet:
        fleet.wait_all_admitted_after(1, "at first")
        warm_until = clock() + int(phases.before_s * MICRO)
        fleet.wait_all_admitted_after(warm_until, "before the fault")
        yield


def run_case(case: str, phases: Phases) -> CaseResult:
    if case == "replica-kill":
        return _replica_kill(phases)
    if case.startswith("sentinel"):
        return _sentinel(case, phases)
    return _cluster_kill(phases)


def _finish_run(
    case: str, fleet: Fleet, clock: Callable[[], int], fault_us: int, phases: Phases
) -> CaseResult:
    switched_us = clock()
    fleet.wait_all_admitted_after(switched_us, "after the failover")
    end = clock() + int(phases.after_s * MICRO)
    fleet.wait_all_admitted_after(end, "to the end of the run")
    return summarize(case, fleet.collect(), fault_us, switched_us)


def _replica_kill(phases: Phases) -> CaseResult:
    with ReplicaPair() as pair:
        fleet = Fleet(Target("port"), pair.primary.port)
        replica_admin = pair.replica.admin

        def clock() -> int:
            return server_time_us(replica_admin)

        with running(fleet, clock, phases):
            fault_us = clock()
            pair.kill_primary()
            pair.promote_replica()
            fleet.shared.port.value = pair.replica.port
            return _finish_run("replica-kill", fleet, clock, fault_us, phases)


def _sentinel(case: str, phases: Phases) -> CaseResult:
    min_replicas = 1 if case.endswith("min-replicas") else 0
    with SentinelTopology(replicas=2, min_replicas_to_write=min_replicas) as topology:
        fleet = Fleet(
            Target("sentinel", tuple(topology.sentinels), topology.master_name),
        )
        # Any server's clock will do (one machine): the last replica is never the one killed.
        admin = topology.servers[-1].admin

        def clock() -> int:
            return server_time_us(admin)

        with running(fleet, clock, phases):
            fault_us = clock()
            if "failover" in case:
                topology.failover()
            else:
                topology.kill_primary()
            return _finish_run(case, fleet, clock, fault_us, phases)


def _cluster_kill(phases: Phases) -> CaseResult:
    with ClusterTopology() as cluster:
        fleet = Fleet(Target("cluster", nodes=tuple(n.port for n in cluster.nodes)))
        key = ScopeKeys(NAME, NAME).rates

        def clock() -> int:
            node = cluster.running_nodes()[0]
            return server_time_us(node.admin)

        with running(fleet, clock, phases):
            fault_us = clock()
            cluster.kill_primary_of(key)
            return _finish_run("cluster-kill", fleet, clock, fault_us, phases)


# -- report ---------------------------------------------------------------------------


def conditions(quick: bool, phases: Phases) -> dict[str, str]:
    binary = find_binary("redis")[1]
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    return {
        "server": f"{version}; started per case (tests/topology)",
        "client": f"redis-py {redis.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()}",
        "package": f"llm-quota-guard {package_version()}",
        "machine": f"{platform.platform()}, os.cpu_count()={os.cpu_count()}",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quota": f"Rate(200, per=1, burst=20); 4 workers (2 long-lived, 2 new client every "
        f"{FRESH_EVERY_S} s), each try_acquire and acquire(timeout=0.5) in turn; "
        "on_redis_error='raise'",
        "phases": f"{phases.before_s} s before the fault, {phases.after_s} s after every "
        "worker is admitted again",
        "mode": "quick" if quick else "full",
    }


def print_results(results: list[CaseResult]) -> None:
    headers = [
        "case", "admitted", "over-admitted", "switch s", "pause s", "worker pause s",
        "RedisRefused", "RedisUnavailable", "other", "unmetered",
    ]  # fmt: skip
    rows = [
        [
            r.case,
            str(r.admitted),
            str(r.over_admitted),
            fmt(r.fault_to_switch_s, ".2f"),
            fmt(r.pause_s, ".2f"),
            fmt(r.worker_pause_s, ".2f"),
            str(r.redis_refused),
            str(r.unavailable),
            str(len(r.other_errors)),
            str(r.unmetered),
        ]
        for r in results
    ]
    print(table(headers, rows))
    print()
    for r in results:
        print(f"  {r.case}: {r.settings}")
        for error in sorted(set(r.other_errors))[:5]:
            print(f"    error: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (the test suite)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="only these")
    parser.add_argument("--json", type=Path, help="also save the results to this file")
    args = parser.parse_args(argv)
    began = time.monotonic()
    phases = Phases(before_s=0.5, after_s=0.5) if args.quick else Phases(2.0, 3.0)
    conditions_ = conditions(args.quick, phases)
    print_conditions("llm-quota-guard failover benchmark", conditions_)
    results = []
    for case in args.case or list(CASES):
        result = run_case(case, phases)
        print(f"  {case}: done", flush=True)
        results.append(result)
    print()
    print_results(results)
    report = {"conditions": conditions_, "cases": [asdict(r) for r in results]}
    finish(began, report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
