"""What the benchmark scripts share: their common options, the server they run on and its
counters, the quotas they measure, how they describe the run and print its tables, and
the clean-up of their keys.

A script run as ``python benchmarks/<script>.py`` has this folder on ``sys.path``, so
it imports this module as ``common``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from ratelimit import Limiter, Rate
from ratelimit.backend import connect
from ratelimit.server import EmbeddedServer, Engine

MICRO = 1_000_000

#: A rate no benchmark can exhaust: 10^9 units a second, bucket of 10^9.
UNLIMITED = Rate(1_000_000_000)
THREE_DIM = {"requests": UNLIMITED, "input_tokens": UNLIMITED, "output_tokens": UNLIMITED}
ONE_DIM = {"requests": UNLIMITED}
#: Costs by dimension, passed as ``**costs``. Typed ``Any``: the methods' own
#: keyword parameters (``model``, ``tags``...) make mypy refuse ``**dict[str, int]``.
Costs = dict[str, Any]
#: A typical call: its reservation, then what it really used (settled).
COSTS_3: Costs = {"input_tokens": 1200, "output_tokens": 1024}
ACTUAL_3: Costs = {"input_tokens": 1187, "output_tokens": 342}


def quota(client: redis.Redis | str, name: str, rates: Mapping[str, Rate]) -> Limiter:
    """A limiter with these dimensions.

    (Limiter's other keyword parameters make mypy refuse ``**rates`` of a
    ``dict[str, Rate]``, hence the ``Any``.)
    """
    dimensions: dict[str, Any] = dict(rates)
    return Limiter(client, name, **dimensions)


def preload_scripts(client: redis.Redis, name: str) -> None:
    """Run every script once so no worker's first call pays a SCRIPT LOAD."""
    limiter = quota(client, name, ONE_DIM)
    permit = limiter.try_acquire()
    if permit is not None:
        permit.settle(requests=1)
    limiter.state()


# -- options ------------------------------------------------------------------------


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes; the script adds its own."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--redis-url", help="benchmark this server instead of a private one")
    parser.add_argument("--engine", choices=["redis", "valkey"], help="private server's engine")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a few seconds, CI)")
    parser.add_argument("--json", type=Path, help="also save the results to this file")
    return parser


def positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse ``type`` that reads a ``kind`` and refuses zero and negatives."""

    def read(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return read


def parse_bench_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, refusing ``--engine`` with ``--redis-url``."""
    args = parser.parse_args(argv)
    if args.redis_url and args.engine:
        parser.error("--engine picks a private server; it cannot go with --redis-url")
    return args


# -- the server ---------------------------------------------------------------------


@contextmanager
def server_for(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """The URL to benchmark and how it was obtained."""
    if args.redis_url:
        yield args.redis_url, "given URL"
        return
    engine: Engine | None = args.engine
    with EmbeddedServer(engine) as server:
        yield server.url, f"private {server.engine} ({server.binary}) on port {server.port}"


def server_version(client: redis.Redis) -> str:
    info: dict[str, Any] = client.info("server")
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    if info.get("server_name") == "valkey":  # pragma: no cover - older Valkey
        return f"valkey {info['redis_version']}"
    return f"redis {info['redis_version']}"


def package_version(distribution: str = "llm-quota-guard") -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def delete_run_keys(client: redis.Redis, run_id: str) -> None:
    """Delete the keys of the run's own quotas, nothing else.

    Every key a benchmark writes has ``<run_id>-`` in its name: ours carry it in
    their hash tag (``rl:v2:{<run_id>-...``), other libraries' after their own
    prefix. A server that has gone away by now is no error: there is nothing
    left to tidy.
    """
    with contextlib.suppress(redis.exceptions.RedisError):
        keys = list(client.scan_iter(match=f"*{run_id}-*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])


# -- server-side counters ---------------------------------------------------------

#: Commands that run a script (Redis < 7 counts every SCRIPT subcommand as "script").
SCRIPT_COMMANDS = (
    "cmdstat_eval",
    "cmdstat_evalsha",
    "cmdstat_eval_ro",
    "cmdstat_evalsha_ro",
    "cmdstat_script|load",
    "cmdstat_script",
)
#: What a benchmark itself sends to read and reset the counters: not the contenders'.
MEASURING_COMMANDS = ("cmdstat_info", "cmdstat_config|resetstat", "cmdstat_config")


@dataclass(frozen=True)
class ScriptStats:
    """Calls and the server time they took, summed over some commands."""

    calls: int
    usec: int

    def __add__(self, other: ScriptStats) -> ScriptStats:
        return ScriptStats(self.calls + other.calls, self.usec + other.usec)

    def __sub__(self, other: ScriptStats) -> ScriptStats:
        return ScriptStats(self.calls - other.calls, self.usec - other.usec)


def script_stats(client: redis.Redis, commands: tuple[str, ...] = SCRIPT_COMMANDS) -> ScriptStats:
    """Calls and server time of ``commands`` (default: the script ones) since the last reset."""
    return sum_stats(client.info("commandstats"), commands)


def sum_stats(stats: Mapping[str, Any], commands: tuple[str, ...]) -> ScriptStats:
    """Calls and server time of ``commands`` in an ``INFO commandstats`` reply."""
    calls = usec = 0
    for name in commands:
        entry = stats.get(name)
        if isinstance(entry, dict):
            calls += int(entry.get("calls", 0))
            usec += int(entry.get("usec", 0))
    return ScriptStats(calls, usec)


@dataclass(frozen=True)
class ServerCounts:
    """One reading of ``INFO commandstats``: the script calls, and every command.

    ``commands`` counts each command a script ran under its own name as well as
    the script call itself (that is how the server counts them), and leaves out
    the benchmark's own INFO and CONFIG RESETSTAT. Its ``usec`` would count a
    script's inner commands twice (the script's own time includes them), so the
    server time per call is read from ``scripts``.
    """

    scripts: ScriptStats
    commands: ScriptStats

    def __sub__(self, other: ServerCounts) -> ServerCounts:
        return ServerCounts(self.scripts - other.scripts, self.commands - other.commands)


def server_counts(client: redis.Redis) -> ServerCounts:
    stats: dict[str, Any] = client.info("commandstats")
    counted = tuple(name for name in stats if name not in MEASURING_COMMANDS)
    return ServerCounts(sum_stats(stats, SCRIPT_COMMANDS), sum_stats(stats, counted))


def reset_stats(client: redis.Redis) -> bool:
    """CONFIG RESETSTAT; False where the server refuses it (the before/after diff still holds)."""
    try:
        client.config_resetstat()
    except redis.exceptions.ResponseError:
        return False
    return True


def server_time_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * MICRO + int(micros)


def wait_server_time(client: redis.Redis, until_us: int, bound_s: float) -> int:
    """Poll the server's clock until it reads ``until_us``, for ``bound_s`` at most; its reading."""
    deadline = time.monotonic() + bound_s
    while (now := server_time_us(client)) < until_us and time.monotonic() < deadline:
        time.sleep(min(0.05, (until_us - now) / MICRO))
    return now


def used_memory(client: redis.Redis, bound_s: float = 5.0) -> int:
    """``used_memory``, once memory freed in the background is freed.

    (A server that frees deleted keys in another thread, Valkey 8 by default,
    is polled until its ``lazyfree_pending_objects`` is 0, for ``bound_s`` at
    most.) It moves by tens of KB as the server resizes its clients' buffers
    on its own schedule: divide by many admissions, or see :func:`key_bytes`.
    """
    deadline = time.monotonic() + bound_s
    while True:
        info: dict[str, Any] = client.info("memory")
        if not info.get("lazyfree_pending_objects") or time.monotonic() > deadline:
            return int(info["used_memory"])
        time.sleep(0.01)


def key_bytes(client: redis.Redis, pattern: str) -> tuple[int, int]:
    """The keys matching ``pattern`` and their bytes (``MEMORY USAGE``, every element).

    SCAN also makes the server drop the expired keys it passes.
    """
    keys = list(client.scan_iter(match=pattern, count=1000))
    sizes = [client.memory_usage(key, samples=0) or 0 for key in keys]
    return len(keys), sum(sizes)


@dataclass(frozen=True)
class Session:
    """One benchmark run's server and client; its quotas are named ``<run_id>-*``."""

    client: redis.Redis
    url: str
    origin: str
    run_id: str

    def conditions(self, mode: str) -> dict[str, str]:
        """What the figures were measured on: server, client, package, machine, ``mode``."""
        return {
            "server": f"{server_version(self.client)}, {self.origin}",
            "client": f"redis-py {redis.__version__} (hiredis {package_version('hiredis')}), "
            f"{platform.python_implementation()} {platform.python_version()}",
            "package": f"llm-quota-guard {package_version()}",
            "machine": f"{platform.platform()}, os.cpu_count()={os.cpu_count()}",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "mode": mode,
        }


@contextmanager
def session(args: argparse.Namespace) -> Iterator[Session]:
    """The server of ``args`` and a client on it; on exit, the run's keys are deleted."""
    run_id = f"bench-{secrets.token_hex(4)}"
    with server_for(args) as (url, origin):
        client = connect(url)
        if not isinstance(client, redis.Redis):
            client.close()
            raise SystemExit(f"{url}: the benchmarks measure one server, not a Redis Cluster")
        try:
            yield Session(client, url, origin, run_id)
        finally:
            delete_run_keys(client, run_id)
            client.close()


# -- report -------------------------------------------------------------------------


def percentile_us(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanosecond samples, in microseconds."""
    index = min(len(sorted_ns) - 1, max(0, math.ceil(q * len(sorted_ns)) - 1))
    return sorted_ns[index] / 1000


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Right-aligned columns, a rule under the headers, two spaces of indent."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def fmt(value: float | None, spec: str = ".0f") -> str:
    """``value`` formatted by ``spec``; ``-`` for a figure that does not exist."""
    return "-" if value is None else format(value, spec)


def print_conditions(title: str, conditions: Mapping[str, Any]) -> None:
    print(title)
    for key, value in conditions.items():
        print(f"  {key:<12} {value}")
    print()


def finish(began: float, report: Mapping[str, Any], path: Path | None) -> None:
    """Print the run's total time (since ``began``, monotonic); save the report with it."""
    total = time.monotonic() - began
    print(f"total {total:.1f} s")
    if path:
        path.write_text(json.dumps({**report, "total_s": total}, indent=2) + "\n", encoding="utf-8")
