"""What the benchmark scripts share: their common options, the server they run on, how
they describe the run, and the clean-up of their keys.

A script run as ``python benchmarks/<script>.py`` has this folder on ``sys.path``, so
it imports this module as ``common``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from ratelimit.backend import connect
from ratelimit.server import EmbeddedServer, Engine

# -- options ------------------------------------------------------------------------


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes; the script adds its own."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--redis-url", help="benchmark this server instead of a private one")
    parser.add_argument("--engine", choices=["redis", "valkey"], help="private server's engine")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a few seconds, CI)")
    parser.add_argument("--json", type=Path, help="also save the results to this file")
    return parser


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


def package_version() -> str:
    try:
        return importlib.metadata.version("llm-quota-guard")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def delete_run_keys(client: redis.Redis, run_id: str) -> None:
    """Delete the keys of the run's own quotas (``<run_id>-*``), nothing else.

    A server that has gone away by now is no error: there is nothing left to tidy.
    """
    with contextlib.suppress(redis.exceptions.RedisError):
        keys = list(client.scan_iter(match=f"rl:v2:{{{run_id}-*", count=1000))
        if keys:
            client.delete(*keys)


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
            "client": f"redis-py {redis.__version__}, "
            f"{platform.python_implementation()} {platform.python_version()}",
            "package": f"llm-quota-guard {package_version()}",
            "machine": f"{platform.platform()}, os.cpu_count()={os.cpu_count()}",
            "mode": mode,
        }


@contextmanager
def session(args: argparse.Namespace) -> Iterator[Session]:
    """The server of ``args`` and a client on it; on exit, the run's keys are deleted."""
    run_id = f"bench-{secrets.token_hex(4)}"
    with server_for(args) as (url, origin):
        client = connect(url)
        try:
            yield Session(client, url, origin, run_id)
        finally:
            delete_run_keys(client, run_id)
            client.close()


# -- report -------------------------------------------------------------------------


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
