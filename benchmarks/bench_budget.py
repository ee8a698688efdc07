#!/usr/bin/env python3
"""What a budget costs per call: rate-only against budgeted admission and settle, side by side.

    python benchmarks/bench_budget.py [--redis-url URL] [--engine redis|valkey]
                                      [--quick] [--rounds N] [--json PATH]

Without ``--redis-url`` it starts its own private server (``EmbeddedServer``).
Against a given URL it only touches keys of its own quotas (``bench-<id>-*``,
deleted at the end), but it does reset the server's statistics
(``CONFIG RESETSTAT``) before each phase.

Five phases, in one process on one server, on quotas that never run out:

A. ``acquire`` on a rate-only limiter (3 rates);
B. ``acquire(usd=...)`` on the same 3 rates plus ``usd=Budget(...)``;
C. ``settle`` of A's permits (rates only);
D. ``settle(usd=...)`` of B's permits (also writes the ledger entry and the
   spend counter);
E. ``acquire(usd=...)`` on a ``LimiterGroup`` of a 3-rate scope, a team
   budget and an org budget in one slot (one script call; its permits are
   cancelled between phases, outside every measurement).

The phases run in rounds, A B C D E A B C D E ..., so that drift of a shared,
noisy machine falls on all of them alike, and each is reported as absolute
figures (client round trip p50/p99, the server's own time per script call
from ``INFO commandstats``) and as a ratio to A. The server also counts the
script calls of each phase: one per operation.

``--quick`` shrinks the run to a few seconds (CI).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from common import (
    ACTUAL_3,
    COSTS_3,
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
    reset_stats,
    script_stats,
    session,
    table,
)

from ratelimit import Budget, Limiter, LimiterGroup, Permit

#: A budget no run can exhaust (the largest is about $4.5 million).
BIG_BUDGET_USD = 1_000_000
MODEL = "claude-sonnet-4-5"
#: What a budgeted call reserves (its worst case) and what it really cost.
RESERVE: Costs = {**COSTS_3, "usd": "0.05", "model": MODEL}
ACTUAL: Costs = {**ACTUAL_3, "usd": "0.0123"}
#: The rate-only acquire gets the same arguments but the budget.
RATE_ONLY: Costs = {**COSTS_3, "model": MODEL}


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    quick: bool
    rounds: int
    calls_per_round: int
    warmup_calls: int

    @classmethod
    def build(cls, quick: bool, rounds: int | None) -> Plan:
        return cls(
            quick=quick,
            rounds=rounds or (4 if quick else 20),
            calls_per_round=50 if quick else 500,
            warmup_calls=20 if quick else 200,
        )


@dataclass
class Phase:
    """One measured operation, its samples pooled over every round."""

    key: str
    label: str
    samples_ns: list[int] = field(default_factory=list)
    round_p50_us: list[float] = field(default_factory=list)
    server: ScriptStats = field(default_factory=lambda: ScriptStats(0, 0))
    resetstat: bool = True

    def record(self, samples_ns: list[int], server: ScriptStats, resetstat: bool) -> None:
        self.samples_ns += samples_ns
        self.round_p50_us.append(percentile_us(sorted(samples_ns), 0.50))
        self.server = self.server + server
        self.resetstat = self.resetstat and resetstat


class Bench:
    """The quotas of the run and the permits that pass from one phase to the next."""

    def __init__(self, client: redis.Redis, run_id: str) -> None:
        self.client = client
        budget = Budget(BIG_BUDGET_USD, per="day")
        rates: dict[str, Any] = dict(THREE_DIM)
        self.rate = Limiter(client, f"{run_id}-rate", **rates)
        self.budgeted = Limiter(client, f"{run_id}-budget", usd=budget, **rates)
        slot = f"{run_id}-acme"
        self.group = LimiterGroup(
            Limiter(client, f"{run_id}-model", slot=slot, **rates),
            Limiter(client, f"{run_id}-team", slot=slot, usd=budget),
            Limiter(client, f"{run_id}-org", slot=slot, usd=Budget(BIG_BUDGET_USD, per="month")),
        )
        self.rate_permits: list[Permit] = []
        self.budget_permits: list[Permit] = []
        self.group_permits: list[Permit] = []
        self.phases = [
            Phase("A", "rate-only acquire"),
            Phase("B", "budgeted acquire"),
            Phase("C", "rate-only settle"),
            Phase("D", "budgeted settle"),
            Phase("E", "group acquire"),
        ]

    def operations(self) -> list[Callable[[], None]]:
        """What one call of each phase does, in phase order."""

        def rate_acquire() -> None:
            self.rate_permits.append(self.rate.acquire(timeout=1, **RATE_ONLY))

        def budget_acquire() -> None:
            self.budget_permits.append(self.budgeted.acquire(timeout=1, **RESERVE))

        def rate_settle() -> None:
            assert self.rate_permits.pop().settle(**ACTUAL_3).applied

        def budget_settle() -> None:
            assert self.budget_permits.pop().settle(**ACTUAL).applied

        def group_acquire() -> None:
            self.group_permits.append(self.group.acquire(timeout=1, **RESERVE))

        return [rate_acquire, budget_acquire, rate_settle, budget_settle, group_acquire]

    def tidy(self) -> None:
        """Cancel the group's permits (between phases, measured by none)."""
        while self.group_permits:
            self.group_permits.pop().cancel()

    def warm_up(self, calls: int) -> None:
        operations = self.operations()
        for _ in range(calls):
            for operation in operations:
                operation()
        self.tidy()

    def run_round(self, calls: int) -> None:
        clock = time.perf_counter_ns
        for phase, operation in zip(self.phases, self.operations(), strict=True):
            samples: list[int] = []
            resetstat = reset_stats(self.client)
            before = script_stats(self.client)
            for _ in range(calls):
                start = clock()
                operation()
                samples.append(clock() - start)
            phase.record(samples, script_stats(self.client) - before, resetstat)
            self.tidy()


def phase_row(phase: Phase, base: Phase) -> dict[str, Any]:
    ordered = sorted(phase.samples_ns)
    base_ordered = sorted(base.samples_ns)
    ops = len(ordered)
    server_us = phase.server.usec / phase.server.calls if phase.server.calls else None
    base_server_us = base.server.usec / base.server.calls if base.server.calls else None
    round_ratios = [
        mine / theirs for mine, theirs in zip(phase.round_p50_us, base.round_p50_us, strict=True)
    ]
    return {
        "phase": phase.key,
        "op": phase.label,
        "ops": ops,
        "p50_us": percentile_us(ordered, 0.50),
        "p99_us": percentile_us(ordered, 0.99),
        "mean_us": sum(ordered) / ops / 1000,
        "server_us_per_call": server_us,
        "script_calls": phase.server.calls,
        "script_calls_per_op": phase.server.calls / ops,
        "resetstat": phase.resetstat,
        "ratio_p50": percentile_us(ordered, 0.50) / percentile_us(base_ordered, 0.50),
        "ratio_p99": percentile_us(ordered, 0.99) / percentile_us(base_ordered, 0.99),
        "ratio_server": server_us / base_server_us if server_us and base_server_us else None,
        "round_ratio_p50": round_ratios,
    }


# -- report -------------------------------------------------------------------------


def print_report(conditions: dict[str, str], rows: list[dict[str, Any]], plan: Plan) -> None:
    print_conditions("llm-quota-guard budget benchmark", conditions)
    print(
        f"[1] Latency: phases A B C D E interleaved, {plan.rounds} rounds x"
        f" {plan.calls_per_round} calls (client round trip µs; server µs from INFO commandstats)"
    )
    print(
        table(
            ["phase", "operation", "ops", "p50 µs", "p99 µs", "mean µs", "server µs/call"],
            [
                [
                    r["phase"],
                    r["op"],
                    str(r["ops"]),
                    fmt(r["p50_us"]),
                    fmt(r["p99_us"]),
                    fmt(r["mean_us"]),
                    fmt(r["server_us_per_call"], ".1f"),
                ]
                for r in rows
            ],
        )
    )
    print()
    print("[2] Ratio to A (rate-only acquire), same run, same server")
    print(
        table(
            [
                "phase",
                "operation",
                "x p50",
                "x p99",
                "x server µs",
                "rounds' x p50: median [range]",
            ],
            [
                [
                    r["phase"],
                    r["op"],
                    fmt(r["ratio_p50"], ".2f"),
                    fmt(r["ratio_p99"], ".2f"),
                    fmt(r["ratio_server"], ".2f"),
                    f"{statistics.median(r['round_ratio_p50']):.2f}"
                    f" [{min(r['round_ratio_p50']):.2f}-{max(r['round_ratio_p50']):.2f}]",
                ]
                for r in rows
            ],
        )
    )
    print()
    print("[3] Script calls per operation, counted by the server (eval/evalsha/script load)")
    print(
        table(
            ["phase", "operation", "ops", "script calls", "calls/op"],
            [
                [
                    r["phase"],
                    r["op"],
                    str(r["ops"]),
                    str(r["script_calls"]),
                    fmt(r["script_calls_per_op"], ".3f"),
                ]
                for r in rows
            ],
        )
    )
    print()


# -- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, help="rounds of A B C D E (20; quick 4)")
    args = parse_bench_args(parser, argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.build(args.quick, args.rounds)
    began = time.monotonic()
    with session(args) as run:
        conditions = run.conditions(
            f"{'quick' if plan.quick else 'full'}: {plan.rounds} rounds"
            f" x {plan.calls_per_round} calls per phase, {plan.warmup_calls} warm-up"
        )
        preload_scripts(run.client, f"{run.run_id}-preload")
        bench = Bench(run.client, run.run_id)
        bench.warm_up(plan.warmup_calls)
        for _ in range(plan.rounds):
            bench.run_round(plan.calls_per_round)
        rows = [phase_row(phase, bench.phases[0]) for phase in bench.phases]
        print_report(conditions, rows, plan)
        report = {"conditions": conditions, "plan": asdict(plan), "phases": rows}
        finish(began, report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
