#!/usr/bin/env python3
"""Our limiter side by side with its peers (limits, pyrate-limiter, throttled-py) and a floor.

    python benchmarks/bench_peers.py [--redis-url URL] [--engine redis|valkey] [--quick]
                                     [--repeat N] [--seconds S] [--json PATH]

Without ``--redis-url`` it starts its own private server (``EmbeddedServer``);
against a given URL it writes only keys named after its run id (deleted at the
end), but it does reset the server's statistics (``CONFIG RESETSTAT``) before
each measured block. Section [3] always starts a second private server, pinned
to CPU 0. The contenders are described in ``benchmarks/peers.py``; only our
public API is used, so the figures follow the library as its internals change.

Every ratio is calls/s of a contender divided by the floor's (a one-EVALSHA
token bucket), both measured in the same repetition under the same conditions.
In a repetition, the contenders of a group ([1], [4] and [5] in 1 process; [2]
and [4] in 4; [3] pinned) share one run of worker processes and take turns of a
tenth of a second (``--seconds`` / 10) on one clock, so the drift of a shared,
noisy machine falls on every contender alike; the order of the turns rotates
from one repetition to the next. Reported: the median ratio and its range over
the repetitions, median calls/s, and p50/p99 of the client round trip over
every call. Server counters ([7]) come from a separate pass, one contender at
a time.

[1] ``try_acquire``, 1 process: 1 dimension for everyone, 3 for ours too.
[2] The same from 4 processes on one key (total calls/s).
[3] Pinned: client and a private server both on CPU 0, so a call's cost is
    the CPU of client and server together.
[4] ``try_acquire`` + ``settle`` (ours) at 1 and 4 processes, against the floor.
[5] Budgeted ``try_acquire`` + ``settle`` (writes a ledger entry) against the
    rate-only cycle of [4]: the ratio of their costs.
[6] 16 processes x blocking ``acquire`` on 200/s, burst 10 (bench_core's scenario).
[7] Per contender, from the server: script calls, commands (those run inside
    scripts too) and server µs per admission; memory retained per admission
    after N never-settled admissions and once the buckets would have refilled.
[8] asyncio: 1,000 concurrent ``try_acquire`` (``asyncio.gather``) against the
    same 1,000 awaited one by one, on a limiter built from a URL.

``--quick`` shrinks everything to a short run (CI).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import bench_core
import peers
import redis
from common import (
    UNLIMITED,
    bench_parser,
    finish,
    fmt,
    package_version,
    parse_bench_args,
    percentile_us,
    positive,
    print_conditions,
    server_version,
    session,
    table,
)
from footprint import count_server_work, measure_memory
from peers import COLUMN, COLUMNS, Kind, installed
from workers import mp_context, run_workers

import ratelimit.asyncio
from ratelimit.errors import ServerNotFound
from ratelimit.server import EmbeddedServer, Engine

PROCESSES = 4
ONE_DIM_KINDS: tuple[Kind, ...] = ("ours", "limits", "pyrate", "throttled", "floor")


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run."""

    quick: bool
    repeat: int
    seconds: float
    slice_s: float
    warmup_calls: int
    counted_calls: int
    memory_calls: int
    refill_s: float
    async_calls: int

    @classmethod
    def build(cls, quick: bool, repeat: int | None, seconds: float | None) -> Plan:
        seconds = seconds or (0.15 if quick else 1.0)
        return cls(
            quick=quick,
            repeat=repeat or (3 if quick else 5),
            seconds=seconds,
            slice_s=min(0.1, max(0.01, seconds / 10)),
            warmup_calls=20 if quick else 200,
            counted_calls=100 if quick else 2000,
            memory_calls=300 if quick else 5000,
            refill_s=1.0,  # every contender's window (limits' and pyrate's are whole seconds)
            async_calls=1000,
        )


@dataclass(frozen=True)
class Scenario:
    """A row of the table: contenders measured together, against the floor of their group."""

    key: str
    label: str
    group: str  # "1p", "4p" or "pinned": one block a repetition, the floor among them
    kinds: tuple[Kind, ...]


SCENARIOS = (
    Scenario("1p-1d", "[1] try_acquire, 1 process, 1 dim", "1p", ONE_DIM_KINDS),
    Scenario("1p-3d", "[1] try_acquire, 1 process, 3 dims", "1p", ("ours_3dim",)),
    Scenario("4p-1d", "[2] try_acquire, 4 processes, 1 dim", "4p", ONE_DIM_KINDS),
    Scenario("4p-3d", "[2] try_acquire, 4 processes, 3 dims", "4p", ("ours_3dim",)),
    Scenario("pin-1d", "[3] pinned to CPU 0, 1 dim", "pinned", ONE_DIM_KINDS),
    Scenario("pin-3d", "[3] pinned to CPU 0, 3 dims", "pinned", ("ours_3dim",)),
    Scenario("1p-cycle", "[4] try_acquire+settle, 1 process", "1p", ("ours_cycle",)),
    Scenario("4p-cycle", "[4] try_acquire+settle, 4 processes", "4p", ("ours_cycle",)),
    Scenario("1p-budget", "[5] budgeted try+settle, 1 process", "1p", ("ours_budget_cycle",)),
)
PROCESSES_OF = {"1p": 1, "4p": PROCESSES, "pinned": 1}


# -- [1]-[5]: contenders taking turns ---------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A ``workers.Task``: the contenders of a group take turns, in time slices.

    Every worker cuts the same run into the same slices (``time.monotonic`` is
    one clock for every process), so all of them are on the same contender at
    once, and a drift of the machine falls on every contender within a tenth
    of a second.
    """

    kinds: tuple[Kind, ...]
    names: tuple[str, ...]  # each contender's quota, shared by the workers
    url: str
    duration_s: float
    slice_s: float
    warmup_calls: int
    pin_cpu: int | None = None

    def prepare(self) -> Callable[[float], list[Calls]]:
        if self.pin_cpu is not None:
            os.sched_setaffinity(0, {self.pin_cpu})
        admitters = [
            peers.connect(kind, self.url).admitter(name)
            for kind, name in zip(self.kinds, self.names, strict=True)
        ]
        for admit in admitters:
            for _ in range(self.warmup_calls):  # connected, scripts loaded, the key exists
                admit()
        return functools.partial(_take_turns, admitters, self.duration_s, self.slice_s)


@dataclass
class Calls:
    """What one worker did for one contender: its admissions, each call's round trip."""

    admitted: int = 0
    samples_ns: list[int] = field(default_factory=list)


def _take_turns(
    admitters: list[peers.Admit], duration_s: float, slice_s: float, deadline: float
) -> list[Calls]:
    out = [Calls() for _ in admitters]
    start = deadline - duration_s
    clock = time.perf_counter_ns
    while (now := time.monotonic()) < deadline:
        turn = int((now - start) / slice_s) % len(admitters)
        began = clock()
        admitted = admitters[turn]()
        out[turn].samples_ns.append(clock() - began)
        out[turn].admitted += admitted
    return out


def turn_seconds(turn: int, turns: int, duration_s: float, slice_s: float) -> float:
    """How long contender ``turn`` of ``turns`` had in a run of ``duration_s``."""
    slices = math.ceil(duration_s / slice_s)
    return sum(min(slice_s, duration_s - i * slice_s) for i in range(turn, slices, turns))


@dataclass
class Figures:
    """One contender in one scenario, over every repetition."""

    per_s: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)
    samples_ns: list[int] = field(default_factory=list)
    admitted: int = 0

    def add(self, calls: list[Calls], seconds: float) -> None:
        samples = [s for c in calls for s in c.samples_ns]
        self.per_s.append(len(samples) / seconds)
        self.samples_ns += samples
        self.admitted += sum(c.admitted for c in calls)

    def row(self, column: str) -> dict[str, Any]:
        ordered = sorted(self.samples_ns)
        return {
            "column": column,
            "calls_per_s": self.per_s,
            "calls_per_s_median": statistics.median(self.per_s),
            "ratio": self.ratio,
            "ratio_median": statistics.median(self.ratio),
            "ratio_min": min(self.ratio),
            "ratio_max": max(self.ratio),
            "p50_us": percentile_us(ordered, 0.50),
            "p99_us": percentile_us(ordered, 0.99),
            "calls": len(ordered),
            "admitted": self.admitted,
            "refused": len(ordered) - self.admitted,
        }


class Run:
    """The run's servers and every contender's figures."""

    def __init__(self, url: str, run_id: str, plan: Plan) -> None:
        self.urls = {"main": url}
        self.run_id = run_id
        self.plan = plan
        self.figures = {s.key: {kind: Figures() for kind in s.kinds} for s in SCENARIOS}

    def scenarios(self) -> list[Scenario]:
        """Every scenario, but the pinned ones when there is no pinned server."""
        return [s for s in SCENARIOS if s.group != "pinned" or "pinned" in self.urls]

    def measure(self, group: str, rep: int) -> float:
        """One block of the group's contenders, their order turned by ``rep``: floor calls/s."""
        rows = [s for s in self.scenarios() if s.group == group]
        kinds = [(s, kind) for s in rows for kind in installed(s.kinds)]
        kinds = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]
        names = tuple(f"{self.run_id}-{s.key}-{kind}" for s, kind in kinds)
        duration = self.plan.seconds * len(kinds)
        block = Block(
            tuple(kind for _, kind in kinds),
            names,
            self.urls["pinned" if group == "pinned" else "main"],
            duration,
            self.plan.slice_s,
            self.plan.warmup_calls,
            0 if group == "pinned" else None,
        )
        done = run_workers(block, PROCESSES_OF[group])
        for turn, (scenario, kind) in enumerate(kinds):
            seconds = turn_seconds(turn, len(kinds), duration, self.plan.slice_s)
            self.figures[scenario.key][kind].add([d.value[turn] for d in done], seconds)
        floor = next(self.figures[s.key]["floor"] for s in rows if "floor" in s.kinds)
        for scenario, kind in kinds:
            figures = self.figures[scenario.key][kind]
            figures.ratio.append(figures.per_s[-1] / floor.per_s[-1])
        return floor.per_s[-1]

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "scenario": s.key,
                "label": s.label,
                "processes": PROCESSES_OF[s.group],
                "contenders": {
                    kind: figures.row(COLUMN[kind])
                    for kind, figures in self.figures[s.key].items()
                    if figures.per_s
                },
            }
            for s in self.scenarios()
        ]

    def cost_ratio(self) -> dict[str, Any]:
        """[5]: the budgeted cycle's cost over the rate-only cycle's, in each repetition."""
        rate_only = self.figures["1p-cycle"]["ours_cycle"].per_s
        budgeted = self.figures["1p-budget"]["ours_budget_cycle"].per_s
        ratios = [r / b for r, b in zip(rate_only, budgeted, strict=True)]
        return {"ratio": ratios, "median": statistics.median(ratios)}


@contextlib.contextmanager
def pinned_server(engine: Engine | None) -> Iterator[tuple[str, str] | None]:
    """A private server started with CPU affinity {0}, as ``taskset -c 0`` starts it: its URL
    and how it runs; None where there is no CPU affinity or no server binary.

    The affinity is set on this process just while it starts the server, which
    inherits it for every one of its threads.
    """
    if not hasattr(os, "sched_setaffinity") or 0 not in os.sched_getaffinity(0):
        yield None
        return
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        server = EmbeddedServer(engine).start()
    except ServerNotFound:
        server = None
    finally:
        os.sched_setaffinity(0, mine)
    if server is None:
        yield None
        return
    try:
        client = redis.Redis.from_url(server.url)
        cpus = sorted(os.sched_getaffinity(int(client.info("server")["process_id"])))
        client.close()
        yield server.url, f"{server.version()}, private, its CPUs {cpus}; client on [0]"
    finally:
        server.stop()


# -- [6] [7] [8] ----------------------------------------------------------------------


def contention(client: redis.Redis, url: str, run_id: str, quick: bool) -> dict[str, Any]:
    """[6]: bench_core's blocking scenario, 16 processes on 200/s burst 10, with its figures."""
    plan = bench_core.Plan.build(quick, PROCESSES, 16)
    return bench_core.measure_contention(client, url, run_id, plan, "booked")


async def _async_round(
    client: redis.Redis, url: str, name: str, calls: int
) -> tuple[dict[str, float], Counter[str], int]:
    """Seconds each way, what went wrong (by kind), server connections after the gathers."""
    limiter = ratelimit.asyncio.Limiter(url, name, requests=UNLIMITED)
    problems: Counter[str] = Counter()
    seconds: dict[str, float] = {}
    try:
        await limiter.try_acquire()  # scripts loaded, one connection open
        for label in ("gather, new pool", "gather, warm pool"):
            start = time.perf_counter()
            replies = await asyncio.gather(
                *(limiter.try_acquire() for _ in range(calls)), return_exceptions=True
            )
            seconds[label] = time.perf_counter() - start
            problems.update(f"{label}: {_problem(r)}" for r in replies if _problem(r))
        connections = int(client.info("clients")["connected_clients"])
        start = time.perf_counter()
        for _ in range(calls):
            try:
                reply: object = await limiter.try_acquire()
            except Exception as exc:
                reply = exc
            if _problem(reply):
                problems[f"sequential: {_problem(reply)}"] += 1
        seconds["sequential"] = time.perf_counter() - start
    finally:
        await limiter.client.aclose()
    return seconds, problems, connections


def _problem(reply: object) -> str:
    """What is wrong with a ``try_acquire`` outcome: '' for a permit."""
    if reply is None:
        return "refused"
    if isinstance(reply, BaseException):
        return f"{type(reply).__name__}: {reply}"[:100]
    return ""


def measure_asyncio(client: redis.Redis, url: str, run_id: str, plan: Plan) -> dict[str, Any]:
    """[8]: N ``try_acquire`` by ``asyncio.gather`` against N awaited in turn, per repetition."""
    ratios: dict[str, list[float]] = {"gather, new pool": [], "gather, warm pool": []}
    problems: Counter[str] = Counter()
    connections: list[int] = []
    for rep in range(plan.repeat):
        name = f"{run_id}-async-{rep}"
        seconds, seen, open_ = asyncio.run(_async_round(client, url, name, plan.async_calls))
        for label, values in ratios.items():
            values.append(seconds["sequential"] / seconds[label])
        problems.update(seen)
        connections.append(open_)
    return {
        "calls": plan.async_calls,
        "ratio": ratios,
        "problems": dict(problems),
        "connected_clients_after_gather": connections,
    }


# -- report -------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def by_column(rows: list[dict[str, Any]], cell: Callable[[dict[str, Any]], str]) -> list[list[str]]:
    """A line a scenario, a cell a column (``-`` where that column has no contender)."""
    lines = []
    for row in rows:
        cells = {c["column"]: cell(c) for c in row["contenders"].values()}
        lines.append([row["label"], *(cells.get(column, "-") for column in COLUMNS)])
    return lines


def print_final(rows: list[dict[str, Any]], plan: Plan) -> None:
    print(
        f"Final table: {plan.repeat} repetitions, {plan.seconds:g} s of each contender in each,"
        f" taking turns of {plan.slice_s:g} s with the others of its group"
    )
    print("  ratio to the floor's calls/s in the same repetition: median [min-max]")
    print(table(["scenario", *COLUMNS], by_column(rows, lambda c: spread(c["ratio"]))))
    print("  calls/s (median of repetitions) and p50/p99 µs (client round trip, every call)")

    def absolute(c: dict[str, Any]) -> str:
        return f"{c['calls_per_s_median']:.0f}/s {c['p50_us']:.0f}/{c['p99_us']:.0f}"

    print(table(["scenario", *COLUMNS], by_column(rows, absolute)))
    contenders = [(row["scenario"], k, c) for row in rows for k, c in row["contenders"].items()]
    refused = [f"{s} {k}: {c['refused']}" for s, k, c in contenders if c["refused"]]
    calls = sum(c["calls"] for _, _, c in contenders)
    if refused:
        print(f"  CHECK FAILED, refused (these figures include refusals): {', '.join(refused)}")
    else:
        print(f"  check: all {calls} calls of every contender were admitted")
    print()


def print_details(report: dict[str, Any]) -> None:
    print(
        "[5] budgeted try_acquire + settle (with its ledger entry) costs x"
        f"{spread(report['budget_cost_ratio']['ratio'])} the rate-only cycle of [4]"
    )
    print()
    booked = {**report["contention"], "label": "booked acquire"}
    print(
        f"[6] Blocking contention: {booked['processes']} processes x acquire() on"
        f" requests=Rate(200/s, burst 10) for {booked['seconds']:g} s (bench_core's [3])"
    )
    print(bench_core.contention_table([booked]))
    print(
        "    calls/admission = round trips (script calls); commands = all the server ran;"
        " Jain over processes (1 = even);\n    over-admitted: worst excess over"
        " burst + rate x span of any prefix of admissions, by server TIME"
    )
    print()
    plan = report["plan"]
    print("[7] Per admission, 1 process: server counters (INFO commandstats) and memory")
    print(
        f"    memory: {plan['memory_calls']} never-settled try_acquire; bytes from used_memory"
        " (moves by tens of KB on its own) and MEMORY USAGE of the contender's keys,\n"
        f"    after them and again {plan['refill_s']:g} s of server time after the last"
        " (buckets refilled); DBSIZE growth"
    )
    memory = {row["kind"]: row for row in report["memory"]}
    lines = []
    for kind, c in report["server"].items():
        m = memory.get(kind, {})
        lines.append(
            [
                kind,
                fmt(c["script_calls_per_admission"], ".2f"),
                fmt(c["commands_per_admission"], ".1f"),
                fmt(c["server_us_per_admission"], ".1f"),
                *(
                    fmt(m.get(f"{figure}{stage}"), spec)
                    for stage in ("", "_after_refill")
                    for figure, spec in (
                        ("used_memory_per_admission", ".0f"),
                        ("key_bytes_per_admission", ".0f"),
                        ("dbsize_growth", "d"),
                    )
                ),
            ]
        )
    memory_headers = ["used_memory B", "key B", "DBSIZE +"]
    headers = ["contender", "script calls", "commands", "server µs", *memory_headers]
    print(table([*headers, *(f"{h}, refilled" for h in memory_headers)], lines))
    print(
        "    commands count those a script ran as well as the script call; server µs is the"
        " script calls' own time (it includes their commands)"
    )
    print()
    aio = report["asyncio"]
    print(
        f"[8] asyncio: {aio['calls']} try_acquire by asyncio.gather vs awaited one by one,"
        " limiter built from a URL (ratio of calls/s, median [min-max])"
    )
    for label, values in aio["ratio"].items():
        print(f"    {label}: x{spread(values)}")
    print(f"    server connections after the gathers: {aio['connected_clients_after_gather']}")
    problems = "; ".join(f"{k} (x{v})" for k, v in aio["problems"].items()) or "none"
    print(f"    errors and refusals, every round: {problems}")
    print()


# -- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--repeat", type=positive(int), help="repetitions of each block (5; quick 3)"
    )
    parser.add_argument(
        "--seconds", type=positive(float), help="seconds a block lasts (1; quick 0.15)"
    )
    return parse_bench_args(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.build(args.quick, args.repeat, args.seconds)
    began = time.monotonic()
    with session(args) as primary:
        client, url, run_id = primary.client, primary.url, primary.run_id
        engine: Engine | None = args.engine
        if engine is None and server_version(client).startswith("valkey"):
            engine = "valkey"
        with pinned_server(engine) as pinned:
            run = Run(url, run_id, plan)
            if pinned:
                run.urls["pinned"] = pinned[0]
            conditions = primary.conditions(
                f"{'quick' if plan.quick else 'full'}: {plan.repeat} repetitions; in each, every"
                f" contender runs {plan.seconds:g} s in turns of {plan.slice_s:g} s;"
                f" {PROCESSES} processes in [2] and [4]"
            )
            conditions["pinned"] = pinned[1] if pinned else "skipped: no CPU affinity or binary"
            conditions["peers"] = "; ".join(
                f"{d} {package_version(d)} ({peers.STRATEGIES[column]})"
                for column, d in peers.DISTRIBUTIONS.items()
            )
            conditions["floor"] = "one EVALSHA: TIME, GET, SET PX on one key (benchmarks/peers.py)"
            conditions["start method"] = mp_context().get_start_method()
            print_conditions("llm-quota-guard vs peers benchmark", conditions)
            groups = sorted({s.group for s in run.scenarios()}, key=list(PROCESSES_OF).index)
            for rep in range(plan.repeat):
                floors = ", ".join(f"{g} {run.measure(g, rep):.0f}" for g in groups)
                print(f"repetition {rep + 1}/{plan.repeat} done; floor calls/s: {floors}")
            print()
            report: dict[str, Any] = {
                "conditions": conditions,
                "plan": asdict(plan),
                "scenarios": run.rows(),
                "budget_cost_ratio": run.cost_ratio(),
                "server": count_server_work(
                    client,
                    url,
                    run_id,
                    installed(peers.KINDS),
                    warmup=plan.warmup_calls,
                    calls=plan.counted_calls,
                ),
                "contention": contention(client, url, run_id, plan.quick),
                "memory": measure_memory(
                    client,
                    url,
                    run_id,
                    installed(ONE_DIM_KINDS),
                    warmup=plan.warmup_calls,
                    calls=plan.memory_calls,
                    refill_s=plan.refill_s,
                ),
                "asyncio": measure_asyncio(client, url, run_id, plan),
            }
        print_details(report)
        print_final(report["scenarios"], plan)
        finish(began, report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
