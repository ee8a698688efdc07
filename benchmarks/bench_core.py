#!/usr/bin/env python3
"""Core benchmark of the limiter against a real Redis-compatible server.

    python benchmarks/bench_core.py [--redis-url URL] [--engine redis|valkey]
                                    [--quick] [--processes N] [--json PATH]

Without ``--redis-url`` it starts its own private server (``EmbeddedServer``).
Against a given URL it only touches keys of its own quotas (``bench-<id>-*``,
deleted at the end), but it does reset the server's statistics
(``CONFIG RESETSTAT``) before each contention run.

Sections:

1. Latency of ``try_acquire``, ``acquire`` and ``settle`` in one process, on
   quotas that never run out (one script round trip each), for a 3-dimension
   and a 1-dimension quota.
2. Throughput of ``try_acquire`` (admissions/s) from 1 and from N processes on
   one shared quota that never runs out.
3. Script calls per admitted request under 16-way blocking contention on a
   saturated quota, counted by the server (``INFO commandstats``), with the
   over-admission and the utilisation of that run.
4. The same contention with a naive polling client (``try_acquire`` in a
   sleep-and-retry loop), for comparison in the same run.

``--quick`` shrinks every section so the whole run takes a few seconds (CI).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis
from common import (
    ACTUAL_3,
    COSTS_3,
    MICRO,
    ONE_DIM,
    THREE_DIM,
    Costs,
    ScriptStats,
    bench_parser,
    finish,
    fmt,
    parse_bench_args,
    percentile_us,
    preload_scripts,
    print_conditions,
    quota,
    reset_stats,
    script_stats,
    server_counts,
    server_time_us,
    session,
    table,
)
from workers import admission_check, jain_index, mp_context, run_workers

from ratelimit import AcquireTimeout, Limiter, Permit, Rate

Mode = Literal["throughput", "booked", "polling"]


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run."""

    quick: bool
    latency_calls: int
    warmup_calls: int
    throughput_s: float
    processes: int
    contention_s: float
    contenders: int
    contention_rate: Rate
    acquire_timeout_s: float
    poll_sleep_s: float

    @classmethod
    def build(cls, quick: bool, processes: int, contenders: int) -> Plan:
        return cls(
            quick=quick,
            latency_calls=200 if quick else 5000,
            warmup_calls=20 if quick else 200,
            throughput_s=0.3 if quick else 3.0,
            processes=processes,
            contention_s=0.5 if quick else 5.0,
            contenders=contenders,
            contention_rate=Rate(200, per=1, burst=10),
            acquire_timeout_s=5.0,
            poll_sleep_s=0.010,
        )


# -- 1. latency -------------------------------------------------------------------


def latency_row(shape: str, op: str, samples_ns: list[int], server: ScriptStats) -> dict[str, Any]:
    ordered = sorted(samples_ns)
    return {
        "quota": shape,
        "op": op,
        "calls": len(ordered),
        "p50_us": percentile_us(ordered, 0.50),
        "p99_us": percentile_us(ordered, 0.99),
        "mean_us": sum(ordered) / len(ordered) / 1000,
        "server_us_per_call": server.usec / server.calls if server.calls else None,
        "server_calls_per_op": server.calls / len(ordered),
    }


def measure_latency(client: redis.Redis, run_id: str, plan: Plan) -> list[dict[str, Any]]:
    """Each operation timed alone: N admissions in a row, then N settles of them."""
    rows: list[dict[str, Any]] = []
    shapes: tuple[tuple[str, dict[str, Rate], Costs, Costs], ...] = (
        ("3-dim", THREE_DIM, COSTS_3, ACTUAL_3),
        ("1-dim", ONE_DIM, {}, {"requests": 1}),
    )
    clock = time.perf_counter_ns
    for _ in range(plan.warmup_calls):
        client.ping()
    pings: list[int] = []
    before = script_stats(client, ("cmdstat_ping",))
    for _ in range(plan.latency_calls):
        start = clock()
        client.ping()
        pings.append(clock() - start)
    rows.append(latency_row("-", "PING", pings, script_stats(client, ("cmdstat_ping",)) - before))
    for shape, rates, costs, actual in shapes:
        limiter = quota(client, f"{run_id}-lat-{shape}", rates)
        for _ in range(plan.warmup_calls):
            warm = limiter.try_acquire(**costs)
            assert warm is not None
            warm.settle(**actual)
        settle_ns: list[int] = []
        settle_server = ScriptStats(0, 0)
        for op in ("try_acquire", "acquire"):
            permits: list[Permit | None] = []
            samples: list[int] = []
            before = script_stats(client)
            for _ in range(plan.latency_calls):
                if op == "try_acquire":
                    start = clock()
                    permit = limiter.try_acquire(**costs)
                else:
                    start = clock()
                    permit = limiter.acquire(timeout=1, **costs)
                samples.append(clock() - start)
                permits.append(permit)
            rows.append(latency_row(shape, op, samples, script_stats(client) - before))
            assert all(p is not None for p in permits), f"{shape} quota ran out"
            before = script_stats(client)
            for permit in permits:
                assert permit is not None
                start = clock()
                permit.settle(**actual)
                settle_ns.append(clock() - start)
            settle_server = settle_server + (script_stats(client) - before)
        rows.append(latency_row(shape, "settle", settle_ns, settle_server))
    return rows


# -- worker processes -------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What one worker process does (a ``workers.Task``)."""

    mode: Mode
    url: str
    name: str
    rates: dict[str, Rate]
    costs: Costs
    duration_s: float
    timeout_s: float = 5.0
    poll_sleep_s: float = 0.010

    def prepare(self) -> Callable[[float], WorkerResult]:
        limiter = quota(self.url, self.name, self.rates)
        limiter.check_deployment()  # before the measured window: it is one call more
        return functools.partial(_work, self, limiter=limiter)


@dataclass
class WorkerResult:
    admitted: int = 0
    calls: int = 0
    refused: int = 0
    admitted_at_us: list[int] = field(default_factory=list)
    go_ahead_ms: list[float] = field(default_factory=list)


def _work(job: Job, deadline: float, limiter: Limiter) -> WorkerResult:
    out = WorkerResult()
    now = time.monotonic
    if job.mode == "throughput":
        while now() < deadline:
            out.calls += 1
            if limiter.try_acquire(**job.costs) is None:
                out.refused += 1
            else:
                out.admitted += 1
    elif job.mode == "booked":
        while now() < deadline:
            asked = now()
            out.calls += 1
            try:
                permit = limiter.acquire(timeout=job.timeout_s, **job.costs)
            except AcquireTimeout as exc:
                out.refused += 1
                time.sleep(min(max(exc.retry_after, 0.0), 0.1))
                continue
            out.admitted += 1
            out.admitted_at_us.append(permit.admitted_at_us)
            out.go_ahead_ms.append((now() - asked) * 1000)
    else:
        while now() < deadline:
            asked = now()
            while True:
                out.calls += 1
                polled = limiter.try_acquire(**job.costs)
                if polled is not None or now() >= deadline:
                    break
                out.refused += 1
                time.sleep(job.poll_sleep_s)
            if polled is None:
                break
            out.admitted += 1
            out.admitted_at_us.append(polled.admitted_at_us)
            out.go_ahead_ms.append((now() - asked) * 1000)
    return out


# -- 2. throughput ----------------------------------------------------------------


def measure_throughput(url: str, run_id: str, plan: Plan) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for count in sorted({1, plan.processes}):
        job = Job("throughput", url, f"{run_id}-tp-{count}", THREE_DIM, COSTS_3, plan.throughput_s)
        done = run_workers(job, count)
        results = [d.value for d in done]
        admitted = sum(r.admitted for r in results)
        elapsed = max(d.elapsed_s for d in done)
        rows.append(
            {
                "processes": count,
                "seconds": elapsed,
                "admitted": admitted,
                "refused": sum(r.refused for r in results),
                "admissions_per_s": admitted / elapsed,
                "per_process_per_s": admitted / elapsed / count,
            }
        )
    return rows


# -- 3./4. contention ---------------------------------------------------------------


def measure_contention(
    client: redis.Redis, url: str, run_id: str, plan: Plan, mode: Literal["booked", "polling"]
) -> dict[str, Any]:
    """``plan.contenders`` processes on one saturated quota; counts from the server.

    Besides script calls, every command the server ran is counted (those inside
    the scripts too), and Jain's index says how evenly the processes were served.
    """
    job = Job(
        mode,
        url,
        f"{run_id}-{mode}",
        {"requests": plan.contention_rate},
        {},
        plan.contention_s,
        timeout_s=plan.acquire_timeout_s,
        poll_sleep_s=plan.poll_sleep_s,
    )
    marks: dict[str, Any] = {}

    def before_go() -> None:
        marks["start_us"] = server_time_us(client)
        marks["resetstat"] = reset_stats(client)
        marks["stats"] = server_counts(client)

    done = run_workers(job, plan.contenders, before_go, grace_s=job.timeout_s + 60)
    server = server_counts(client) - marks["stats"]
    end_us = server_time_us(client)
    results = [d.value for d in done]
    admitted = sum(r.admitted for r in results)
    client_calls = sum(r.calls for r in results)
    times = [t for r in results for t in r.admitted_at_us]
    waits = sorted(w for r in results for w in r.go_ahead_ms)
    check = admission_check(times, plan.contention_rate, MICRO)
    per_process = [r.admitted for r in results]
    return {
        "mode": mode,
        "processes": plan.contenders,
        "seconds": plan.contention_s,
        "server_seconds": (end_us - marks["start_us"]) / MICRO,
        "admitted": admitted,
        "script_calls": server.scripts.calls,
        "client_calls": client_calls,
        "calls_per_admission": server.scripts.calls / admitted if admitted else math.inf,
        "commands": server.commands.calls,
        "commands_per_admission": server.commands.calls / admitted if admitted else math.inf,
        "server_us_per_call": server.scripts.usec / server.scripts.calls
        if server.scripts.calls
        else None,
        "refused": sum(r.refused for r in results),
        "resetstat": marks["resetstat"],
        "per_process_admitted": per_process,
        "jain_index": jain_index(per_process),
        "go_ahead_ms_p50": waits[len(waits) // 2] if waits else None,
        "go_ahead_ms_p99": waits[min(len(waits) - 1, math.ceil(0.99 * len(waits)) - 1)]
        if waits
        else None,
        **check,
    }


# -- report -------------------------------------------------------------------------


def print_latency(rows: list[dict[str, Any]]) -> None:
    print("[1] Latency: one process, quotas that never run out (client round trip, µs)")
    print("    PING = the bare round trip; server columns from INFO commandstats")
    print(
        table(
            [
                "quota",
                "op",
                "calls",
                "p50 µs",
                "p99 µs",
                "mean µs",
                "server calls/op",
                "server µs/call",
            ],
            [
                [
                    r["quota"],
                    r["op"],
                    str(r["calls"]),
                    fmt(r["p50_us"]),
                    fmt(r["p99_us"]),
                    fmt(r["mean_us"]),
                    fmt(r["server_calls_per_op"], ".2f"),
                    fmt(r["server_us_per_call"], ".1f"),
                ]
                for r in rows
            ],
        )
    )
    print()


def print_throughput(rows: list[dict[str, Any]]) -> None:
    print("[2] Throughput: try_acquire on one shared 3-dim quota that never runs out")
    base = rows[0]["admissions_per_s"]
    print(
        table(
            ["processes", "seconds", "admitted", "admissions/s", "per process/s", "vs 1 proc"],
            [
                [
                    str(r["processes"]),
                    fmt(r["seconds"], ".2f"),
                    str(r["admitted"]),
                    fmt(r["admissions_per_s"]),
                    fmt(r["per_process_per_s"]),
                    f"x{r['admissions_per_s'] / base:.2f}",
                ]
                for r in rows
            ],
        )
    )
    print()


def contention_table(runs: list[dict[str, Any]]) -> str:
    return table(
        [
            "client",
            "admitted",
            "script calls",
            "calls/admission",
            "commands/admission",
            "refused",
            "admit span s",
            "allowed",
            "over-admitted",
            "utilisation",
            "Jain",
            "go-ahead p50/p99 ms",
        ],
        [
            [
                r["label"],
                str(r["admitted"]),
                str(r["script_calls"]),
                fmt(r["calls_per_admission"], ".3f"),
                fmt(r["commands_per_admission"], ".1f"),
                str(r["refused"]),
                fmt(r["elapsed_s"], ".3f"),
                str(r["allowed"]),
                str(r["over_admitted"]),
                f"{r['utilisation']:.1%}",
                fmt(r["jain_index"], ".3f"),
                f"{fmt(r['go_ahead_ms_p50'], '.1f')}/{fmt(r['go_ahead_ms_p99'], '.1f')}",
            ]
            for r in runs
        ],
    )


def print_contention(booked: dict[str, Any], polling: dict[str, Any], plan: Plan) -> None:
    rate = plan.contention_rate
    quota = f"requests=Rate({rate.amount}/s, burst {rate.capacity:g})"
    print(
        f"[3] Contention: {plan.contenders} processes x acquire(timeout={plan.acquire_timeout_s:g})"
        f" on {quota} for {plan.contention_s:g} s"
    )
    print(
        "    script calls counted by the server (INFO commandstats: eval/evalsha/script load),"
        " no settle: one admission = one acquire;"
    )
    print(
        "    commands = every command the server ran, those inside the scripts too;"
        " Jain = fairness of admissions over processes (1 = even)"
    )
    booked["label"] = "booked acquire"
    print(contention_table([booked]))
    print(
        "    allowed = burst + rate x (last - first admission, server TIME);"
        " over-admitted = worst excess over any prefix of admissions"
    )
    print()
    print(
        f"[4] Polling baseline: {plan.contenders} processes x try_acquire,"
        f" sleep {plan.poll_sleep_s * 1000:g} ms between tries, same quota and duration"
    )
    polling["label"] = f"polling {plan.poll_sleep_s * 1000:g} ms"
    print(contention_table([booked, polling]))
    ratio = polling["calls_per_admission"] / booked["calls_per_admission"]
    print(
        f"    script calls per admission: booked {booked['calls_per_admission']:.3f}"
        f" vs polling {polling['calls_per_admission']:.3f} (polling makes x{ratio:.1f} as many)"
    )
    print()


# -- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--processes", type=int, default=4, help="throughput processes (4)")
    parser.add_argument("--contenders", type=int, default=16, help="contention processes (16)")
    args = parse_bench_args(parser, argv)
    if args.processes < 1 or args.contenders < 1:
        parser.error("--processes and --contenders must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.build(args.quick, args.processes, args.contenders)
    began = time.monotonic()
    with session(args) as run:
        client, run_id = run.client, run.run_id
        conditions = {
            **run.conditions(
                f"{'quick' if plan.quick else 'full'}: latency {plan.latency_calls} calls/op;"
                f" throughput {plan.throughput_s:g} s at 1 and {plan.processes} processes;"
                f" contention {plan.contention_s:g} s x {plan.contenders} processes"
            ),
            "start method": mp_context().get_start_method(),
        }
        print_conditions("llm-quota-guard core benchmark", conditions)
        preload_scripts(client, f"{run_id}-preload")
        latency = measure_latency(client, run_id, plan)
        print_latency(latency)
        throughput = measure_throughput(run.url, run_id, plan)
        print_throughput(throughput)
        booked = measure_contention(client, run.url, run_id, plan, "booked")
        polling = measure_contention(client, run.url, run_id, plan, "polling")
        print_contention(booked, polling, plan)
        report = {
            "conditions": conditions,
            "plan": {**asdict(plan), "contention_rate": str(plan.contention_rate)},
            "latency": latency,
            "throughput": throughput,
            "contention": {"booked": booked, "polling": polling},
        }
        finish(began, report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
