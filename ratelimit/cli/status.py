"""``ratelimit status``: every scope of a deployment as Redis holds it, read-only.

It reads through :mod:`ratelimit.deployment` (one SCAN, two pipelined reads,
Redis TIME as the clock) and prints a table (rich), a JSON document
(``--json``) or, with ``--watch``, a live view refreshed in place (JSON Lines
with ``--json``). Without the ``cli`` extra, ``--json`` still works and a
table asks for the extra by name.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from itertools import count as counter
from typing import TYPE_CHECKING, Any, TextIO

import redis

from ratelimit.backend import SyncClient, connect
from ratelimit.cli.config_option import configured_scopes
from ratelimit.cli.output import EXIT_ERROR, safe_url
from ratelimit.core.scope import ScopeSpec
from ratelimit.deployment import Snapshot, read
from ratelimit.errors import LimiterError

if TYPE_CHECKING:
    from rich.console import Console

#: Seconds between two refreshes of ``--watch``, unless ``--interval`` says otherwise.
DEFAULT_INTERVAL_S = 2.0
#: What to install for the table and the live view.
CLI_EXTRA = "llm-quota-guard[cli]"


def missing_scopes(snapshot: Snapshot, names: Collection[str]) -> dict[str, str]:
    """The scopes asked for by name that Redis holds nothing of, and why that may be."""
    found = {scope.name for scope in snapshot.scopes}
    return {
        name: "no keys in Redis (a scope without a budget keeps none while its buckets are "
        "full; or check the name)"
        for name in names
        if name not in found
    }


def snapshot_json(snapshot: Snapshot, server: str) -> dict[str, Any]:
    """The JSON document ``--json`` prints: the server (password masked) and the snapshot."""
    return {"server": server, **snapshot.as_dict()}


def snapshots(
    client: SyncClient,
    names: Sequence[str] | None,
    configured: Sequence[ScopeSpec],
    interval_s: float,
    count: int | None,
) -> Iterator[Snapshot | LimiterError]:
    """A snapshot every ``interval_s`` seconds (``count`` of them, or until interrupted).

    A read that fails yields its error instead, and the next one is tried.
    """
    for i in counter():
        if count is not None and i >= count:
            return
        if i:
            time.sleep(interval_s)
        try:
            yield read(client, configured=configured, names=names or None)
        except LimiterError as exc:
            yield exc


def run_status(
    args: argparse.Namespace,
    *,
    configured: Sequence[ScopeSpec] | None = None,
    console: Console | None = None,
    out: TextIO | None = None,
) -> int:
    """``ratelimit status``: returns the exit code.

    ``configured`` scopes (default: those of the configuration file, if
    any) show their configured limits, and read as idle when Redis holds
    nothing of them; ``console`` and ``out`` are where the table and the
    JSON go (default: stdout).
    """
    if configured is None:
        configured = configured_scopes(args)
    out = out or sys.stdout
    if not args.json and console is None:
        console = _console(out)
        if console is None:
            return EXIT_ERROR
    server = safe_url(args.redis_url)
    names = args.scopes or None
    count = args.count if args.watch else 1
    try:
        client = connect(args.redis_url)
    except (ValueError, redis.exceptions.RedisError) as exc:
        print(f"ratelimit status: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        stream = snapshots(client, names, configured, args.interval, count)
        if console is None:
            return _print_json(stream, server, names, out, watch=args.watch)
        if args.watch:
            return _watch(stream, server, names, console)
        return _print_table(stream, server, names, console)
    finally:
        client.close()


def _console(out: TextIO) -> Console | None:
    """A rich console on ``out``, or None (said on stderr) without the ``cli`` extra."""
    try:
        from rich.console import Console
    except ImportError:
        print(
            f"ratelimit status: the table needs rich: pip install '{CLI_EXTRA}' (or use --json)",
            file=sys.stderr,
        )
        return None
    return Console(file=out)


def _failed(error: LimiterError) -> int:
    print(f"ratelimit status: cannot read the server: {error}", file=sys.stderr)
    return EXIT_ERROR


def _print_json(
    stream: Iterator[Snapshot | LimiterError],
    server: str,
    names: Sequence[str] | None,
    out: TextIO,
    *,
    watch: bool,
) -> int:
    """One JSON document, or with ``--watch`` one per line (JSON Lines)."""
    for snapshot in stream:
        if isinstance(snapshot, LimiterError):
            if not watch:
                return _failed(snapshot)
            print(f"ratelimit status: cannot read the server: {snapshot}", file=sys.stderr)
            continue
        document = snapshot_json(snapshot, server)
        if watch:
            out.write(json.dumps(document, sort_keys=True) + "\n")
            out.flush()
        else:
            out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
            _warn_missing(snapshot, names)
    return 0


def _warn_missing(snapshot: Snapshot, names: Sequence[str] | None) -> None:
    for name, why in missing_scopes(snapshot, names or ()).items():
        print(f"ratelimit status: {name}: {why}", file=sys.stderr)


def _print_table(
    stream: Iterator[Snapshot | LimiterError],
    server: str,
    names: Sequence[str] | None,
    console: Console,
) -> int:
    from ratelimit.cli.status_view import render

    snapshot = next(stream)
    if isinstance(snapshot, LimiterError):
        return _failed(snapshot)
    console.print(render(snapshot, server, missing_scopes(snapshot, names or ())))
    return 0


def _watch(
    stream: Iterator[Snapshot | LimiterError],
    server: str,
    names: Sequence[str] | None,
    console: Console,
) -> int:
    """The live view: each snapshot redrawn in place of the last."""
    from rich.live import Live

    from ratelimit.cli.status_view import render, render_error

    with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
        for snapshot in stream:
            if isinstance(snapshot, LimiterError):
                live.update(render_error(server, snapshot), refresh=True)
            else:
                view = render(snapshot, server, missing_scopes(snapshot, names or ()))
                live.update(view, refresh=True)
    return 0
