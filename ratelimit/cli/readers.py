"""``ratelimit ledger``, ``spend`` and ``alerts``: read a deployment's Redis, change nothing.

Each command reads through the library's own ledger flows
(:mod:`ratelimit.ledger`), run on a plain client by
:func:`ratelimit.limiter.drive`: a scope's ledger entries (as a table, CSV
or JSON Lines, page by page), its spend per day and model, and its budget
alerts, past or, with ``--follow``, as they are published.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal, TextIO

import redis

from ratelimit import LimiterError, ledger
from ratelimit.backend import SyncClient, connect
from ratelimit.cli.config_option import scope_keys
from ratelimit.cli.output import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    align_points,
    format_threshold,
    format_time,
    format_usd,
    pairs,
    table,
)
from ratelimit.cli.progress import Progress
from ratelimit.core.keys import ALERT_CHANNEL, ScopeKeys
from ratelimit.errors import BackendError
from ratelimit.ledger import FiredAlert, LedgerEntry
from ratelimit.limiter import drive

#: Ledger entries are read from the stream in pages of this many (XRANGE COUNT),
#: so a million-entry ledger exports without being held in memory.
LEDGER_PAGE = 1000
#: ``alerts --follow`` checks for Ctrl-C at least this often while no alert comes.
FOLLOW_POLL_S = 1.0
#: How long ``alerts --follow`` waits for the server to confirm the subscription.
SUBSCRIBE_TIMEOUT_S = 10.0

LedgerFormat = Literal["table", "csv", "jsonl"]


def _scope(args: argparse.Namespace) -> ScopeKeys:
    """The keys of the scope a command names: slot ``--slot``, else the configured one."""
    return scope_keys(args, args.scope, args.slot)


def _warn_if_missing(client: SyncClient, command: str, key: str) -> None:
    """Say so on stderr when ``key`` does not exist: most likely a wrong name or --slot."""
    if not client.exists(key):
        print(
            f"ratelimit {command}: there is no {key} (check the scope name and --slot)",
            file=sys.stderr,
        )


def _reading(command: str, url: str, body: Callable[[SyncClient], int]) -> int:
    """Run ``body`` with a client for ``url``; errors become a message and exit code 2."""
    try:
        client = connect(url)
        try:
            return body(client)
        finally:
            client.close()
    except BrokenPipeError:
        # The reader of stdout went away (``| head``): stop quietly, as cat does,
        # and keep the interpreter's last flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (redis.exceptions.RedisError, LimiterError) as exc:
        # drive() wraps the client's errors in ours, with the client's as the cause.
        cause = exc if isinstance(exc, redis.exceptions.RedisError) else exc.__cause__
        if isinstance(cause, redis.exceptions.RedisError):
            print(f"ratelimit {command}: cannot use the Redis server: {cause}", file=sys.stderr)
        else:
            print(f"ratelimit {command}: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"ratelimit {command}: {exc}", file=sys.stderr)
    return EXIT_ERROR


# -- ledger ------------------------------------------------------------------------


def read_ledger(
    client: SyncClient,
    scope: ScopeKeys,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    page: int = LEDGER_PAGE,
) -> Iterator[LedgerEntry]:
    """The scope's ledger entries settled in [since, until], oldest first, read page by page."""
    after: str | None = None
    while True:
        entries = drive(client, ledger.read_entries(scope, since, until, page, after))
        yield from entries
        if len(entries) < page:
            return
        after = entries[-1].stream_id


def _ledger_table(name: str, entries: Sequence[LedgerEntry]) -> list[str]:
    saved = any(entry.saved_usd for entry in entries)
    header = ["time (UTC)", "kind", "model", "cost USD", *(["saved USD"] if saved else [])]
    header += ["tokens", "tags"]
    rows = [
        [
            format_time(entry.time),
            entry.kind,
            entry.model or "-",
            format_usd(entry.cost_usd),
            *([format_usd(entry.saved_usd)] if saved else []),
            pairs(entry.tokens),
            pairs(entry.tags),
        ]
        for entry in entries
    ]
    count = f"total, {len(entries):,} entr{'y' if len(entries) == 1 else 'ies'}"
    footer = [count, "", "", format_usd(ledger.total(entries))]
    if saved:
        footer.append(format_usd(sum((entry.saved_usd for entry in entries), Decimal(0))))
    footer += ["", ""]
    title = f"ledger of {name}"
    if not entries:
        return [title, "  no entries"]
    align_points([*rows, footer], (3, 4) if saved else (3,))
    return [title, *table(header, rows, footer, left=(0, 1, 2, len(header) - 2, len(header) - 1))]


@dataclass
class _Tally:
    """Counts and sums what an export streams through, for its summary line."""

    entries: int = 0
    cost: Decimal = field(default_factory=Decimal)

    def through(self, entries: Iterator[LedgerEntry]) -> Iterator[LedgerEntry]:
        for entry in entries:
            self.entries += 1
            self.cost += entry.cost_usd
            yield entry


def export_ledger(
    client: SyncClient,
    scope: ScopeKeys,
    out: TextIO,
    fmt: LedgerFormat,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Progress | None = None,
) -> tuple[int, Decimal]:
    """Write the scope's ledger to ``out`` as a table, CSV or JSON Lines: (entries, total USD).

    ``progress`` counts the entries as they are read.
    """
    tally = _Tally()
    entries = tally.through(read_ledger(client, scope, since, until))
    if progress is not None:
        entries = progress.through(entries)
    if fmt == "csv":
        ledger.to_csv(entries, out)
    elif fmt == "jsonl":
        ledger.to_jsonl(entries, out)
    else:
        read = list(entries)
        if progress is not None:
            progress.finish()  # before the table, which may go to the same terminal
        out.write("\n".join(_ledger_table(scope.name, read)) + "\n")
    return tally.entries, tally.cost


def _ledger_progress(
    client: SyncClient, scope: ScopeKeys, args: argparse.Namespace, to_stdout: bool
) -> Progress:
    """The export's progress on stderr, when stderr is a terminal and the output is elsewhere.

    CSV or JSON Lines written to the same terminal would tear the line; a
    table is printed after the read, so it may share the terminal.
    """
    label = f"reading the ledger of {scope.name}"
    torn = to_stdout and args.format != "table" and sys.stdout.isatty()
    if torn or not sys.stderr.isatty():
        return Progress(label, enabled=False)
    windowed = args.since is not None or args.until is not None
    return Progress(label, int(client.xlen(scope.ledger)), at_most=windowed)


def run_ledger(args: argparse.Namespace) -> int:
    """``ratelimit ledger``: returns the exit code."""

    def body(client: SyncClient) -> int:
        scope = _scope(args)
        to_stdout = args.output in (None, "-")
        with _ledger_progress(client, scope, args, to_stdout) as progress:
            window = {"since": args.since, "until": args.until, "progress": progress}
            if to_stdout:
                count, cost = export_ledger(client, scope, sys.stdout, args.format, **window)
            else:
                newline = "" if args.format == "csv" else None
                with open(args.output, "w", encoding="utf-8", newline=newline) as out:
                    count, cost = export_ledger(client, scope, out, args.format, **window)
        if not to_stdout:
            print(
                f"ratelimit ledger: wrote {count:,} entries of {scope.name} "
                f"({format_usd(cost)} USD) to {args.output}",
                file=sys.stderr,
            )
        if not count:
            _warn_if_missing(client, "ledger", scope.ledger)
        return 0

    return _reading("ledger", args.redis_url, body)


# -- spend -------------------------------------------------------------------------


def spend_table(
    name: str,
    spend: Mapping[str, Mapping[str, Decimal]],
    saved: Mapping[str, Mapping[str, Decimal]],
) -> list[str]:
    """Spend (and what cache hits saved) per day and model, day totals and a grand total."""
    title = f"spend of {name}, USD per day (the ledger's time zone) and model"
    days = sorted(set(spend) | set(saved))
    if not days:
        return [title, "  no spend recorded"]
    rows: list[list[str]] = []
    total_spent = total_saved = Decimal(0)
    for day in days:
        spent_by, saved_by = spend.get(day, {}), saved.get(day, {})
        models = sorted(set(spent_by) | set(saved_by))
        for model in models:
            spent, cut = spent_by.get(model, Decimal(0)), saved_by.get(model, Decimal(0))
            rows.append([day, model or "-", format_usd(spent), format_usd(cut)])
        day_spent = sum(spent_by.values(), Decimal(0))
        day_saved = sum(saved_by.values(), Decimal(0))
        if len(models) > 1:
            rows.append([day, "(day total)", format_usd(day_spent), format_usd(day_saved)])
        total_spent += day_spent
        total_saved += day_saved
    footer = ["total", "", format_usd(total_spent), format_usd(total_saved)]
    header = ["day", "model", "spent", "saved by cache"]
    align_points([*rows, footer], (2, 3))
    return [title, *table(header, rows, footer, left=(0, 1))]


def run_spend(args: argparse.Namespace) -> int:
    """``ratelimit spend``: returns the exit code."""

    def body(client: SyncClient) -> int:
        scope = _scope(args)
        spend, saved = drive(client, ledger.read_spend_and_saved(scope, args.day))
        print("\n".join(spend_table(scope.name, spend, saved)))
        if not spend and not saved:
            _warn_if_missing(client, "spend", scope.spend)
        return 0

    return _reading("spend", args.redis_url, body)


# -- alerts ------------------------------------------------------------------------


def alerts_table(name: str, history: Sequence[FiredAlert]) -> list[str]:
    """A scope's alerts, one row each: when, period, threshold, spent and limit."""
    title = f"alerts of {name}"
    if not history:
        return [title, "  no alerts"]
    header = ["time (UTC)", "period", "threshold", "spent USD", "limit USD"]
    rows = [
        [
            format_time(fired),
            alert.period,
            format_threshold(alert.threshold),
            format_usd(alert.spent),
            format_usd(alert.limit),
        ]
        for fired, alert in history
    ]
    align_points(rows, (3, 4))
    return [title, *table(header, rows, left=(0, 1))]


def alert_line(fired: FiredAlert) -> str:
    """One alert on one line, as ``alerts --follow`` prints it."""
    when, alert = fired
    return (
        f"{format_time(when)}  {alert.scope}  {alert.period}  "
        f"{format_threshold(alert.threshold)} reached: "
        f"{format_usd(alert.spent)} of {format_usd(alert.limit)} USD spent"
    )


def follow_alerts(client: SyncClient, scope: str | None, count: int | None, out: TextIO) -> int:
    """Print alerts published on ALERT_CHANNEL as they come (of ``scope`` only, if given).

    Returns after ``count`` alerts; otherwise runs until interrupted. The
    "listening" line goes to stderr once the server has confirmed the
    subscription: alerts published after it are never missed.
    """
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]  # untyped in redis-py
    try:
        pubsub.subscribe(ALERT_CHANNEL)
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT_S
        while True:
            message = pubsub.get_message(timeout=FOLLOW_POLL_S)
            if message is not None and message["type"] == "subscribe":
                break
            if time.monotonic() > deadline:
                raise BackendError(
                    f"the server did not confirm the subscription to {ALERT_CHANNEL}"
                )
        which = f"alerts of {scope}" if scope else "every scope's alerts"
        print(f"listening on {ALERT_CHANNEL} for {which} (Ctrl-C to stop)", file=sys.stderr)
        seen = 0
        while count is None or seen < count:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=FOLLOW_POLL_S)
            if message is None or message["type"] != "message":
                continue
            try:
                fired = ledger.parse_fired_published_alert(message["data"])
            except ValueError:  # also a UnicodeDecodeError
                print(
                    f"ratelimit alerts: skipped a malformed message {message['data']!r}",
                    file=sys.stderr,
                )
                continue
            if scope is not None and fired.alert.scope != scope:
                continue
            out.write(alert_line(fired) + "\n")
            out.flush()
            seen += 1
    finally:
        pubsub.close()
    return 0


def run_alerts(args: argparse.Namespace) -> int:
    """``ratelimit alerts``: returns the exit code."""

    def body(client: SyncClient) -> int:
        if args.follow:
            return follow_alerts(client, args.scope, args.count, sys.stdout)
        scope = _scope(args)
        history = drive(client, ledger.read_fired_alerts(scope, args.count))
        print("\n".join(alerts_table(scope.name, history)))
        if not history:
            _warn_if_missing(client, "alerts", scope.alerts)
        return 0

    return _reading("alerts", args.redis_url, body)
