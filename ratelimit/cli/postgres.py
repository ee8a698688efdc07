"""``ratelimit sync`` and ``restore``: the ledger of record in PostgreSQL.

``sync`` copies every ledger entry of the chosen scopes into PostgreSQL
exactly once (:mod:`ratelimit.postgres.sync`), following new ones until
SIGTERM or Ctrl-C, or draining what is there with ``--once``. ``restore``
rebuilds, from PostgreSQL, the spend counters and budget spend Redis lost
(:mod:`ratelimit.postgres.restore`). Both need the ``postgres`` extra; the
parser is built without it, and a command run without it says what to install.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from types import FrameType
from typing import TYPE_CHECKING

import redis

from ratelimit import backend
from ratelimit.cli.config_option import loaded_config
from ratelimit.cli.output import EXIT_ERROR, format_time, format_usd, safe_url
from ratelimit.cli.target import add_server_option
from ratelimit.cli.values import nonnegative_float, positive_int
from ratelimit.config_file import Config, ScopeConfig
from ratelimit.core.settings import Budget
from ratelimit.errors import ClusterNotSupported, LimiterError, MissingExtra, RestoreRefused
from ratelimit.postgres.streams import (
    DEFAULT_BATCH,
    DEFAULT_BLOCK_MS,
    DEFAULT_CLAIM_IDLE_S,
    DEFAULT_RESCAN_S,
    LedgerStream,
    named,
)

if TYPE_CHECKING:  # the postgres extra may be missing: imported where used
    from ratelimit.postgres.restore import Restored

#: Socket timeout of the sync's Redis client beyond its blocking read, in seconds.
SOCKET_SLACK_S = 10.0

SYNC_EPILOG = """\
How it works: each scope's ledger stream is read through the Redis consumer
group "ratelimit-sync" (created at the stream's start: what it holds is
backfilled). A batch is inserted in one PostgreSQL transaction, keyed by
(scope, stream_id) so an entry delivered again changes nothing, and only then
acknowledged in Redis. Kill it at any point: nothing is lost or copied twice.
Run as many as you like (each is a consumer of the group, named host-pid);
entries a dead one left pending are claimed after --claim-idle seconds.
The tables (ratelimit_ledger, ratelimit_streams) are created and migrated on
first use. It reads one Redis or Valkey server (or a Sentinel's primary): a
Redis Cluster is refused before anything is read.

exit status:
  0 done (--once) or stopped by SIGTERM/Ctrl-C, 2 error (a Redis Cluster too).

examples:
  ratelimit sync --to postgresql://ledger@db/ratelimit --all --redis-url $URL
  ratelimit sync --to $DSN team-a team-b --slot acme --redis-url $URL --once
"""

RESTORE_EPILOG = """\
After Redis lost data (a restart without persistence, an eviction, a flush),
raise each scope's spend counters (per day and model) and its budget's spend
for the current period to what PostgreSQL holds, plus the entries of the
ledger stream not yet in PostgreSQL. Only what Redis lacks is added, so a
second restore changes nothing. Each scope is restored by one Lua script,
atomically. It first syncs the scopes (as sync --once) unless --no-sync.

When a scope's budget key is gone, its limit and period are needed to write
it again: --limit/--per/--tz (for every scope named), else the scope's budget
in the configuration file (ratelimit --config FILE restore ...), else the
scope is refused and nothing in it changes. The configuration also gives a
scope's slot; without either, a scope is where the syncs found it. Like
sync, it refuses a Redis Cluster before anything is read or written.

exit status:
  0 every scope restored (or nothing to do), 2 error or a scope refused.

examples:
  ratelimit restore --from $DSN --all --redis-url $URL
  ratelimit restore --from $DSN team-a --limit 50 --per day --tz Europe/Paris --redis-url $URL
  ratelimit --config ratelimit.toml restore --from $DSN --all
"""


def add_postgres_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``sync`` and ``restore``."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("scopes")
    where.add_argument("scopes", metavar="SCOPE", nargs="*", help="the limiters' names")
    where.add_argument(
        "--all",
        action="store_true",
        help="every scope (sync: found by SCAN, and again while it runs; restore: "
        "every scope the syncs have copied)",
    )
    where.add_argument(
        "--slot", metavar="SLOT", help="the scopes' hash tag when their Limiter has slot=..."
    )
    add_server_option(where)
    where.add_argument(
        "--claim-idle",
        type=nonnegative_float,
        default=DEFAULT_CLAIM_IDLE_S,
        metavar="S",
        help="take over entries pending this long with another sync: it died "
        "(default: %(default)g)",
    )

    def add(name: str, help_text: str, description: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    sync = add(
        "sync",
        "copy every ledger entry into PostgreSQL, exactly once",
        "Copy every ledger entry into PostgreSQL exactly once, then follow new ones.",
        SYNC_EPILOG,
    )
    sync.add_argument("--to", metavar="DSN", required=True, help="the PostgreSQL database")
    sync.add_argument("--once", action="store_true", help="sync what is there now, then exit")
    sync.add_argument(
        "--batch",
        type=positive_int,
        default=DEFAULT_BATCH,
        metavar="N",
        help="entries per transaction (default: %(default)s)",
    )
    sync.add_argument(
        "--rescan",
        type=nonnegative_float,
        default=DEFAULT_RESCAN_S,
        metavar="S",
        help="with --all, look for new scopes this often (a SCAN of the keyspace; "
        "default: %(default)g)",
    )
    sync.add_argument("--consumer", metavar="NAME", help="consumer name (default: host-pid)")
    sync.set_defaults(handler=run_sync, server="required", usage_error=sync.error)

    restore = add(
        "restore",
        "rebuild the spend Redis lost from the ledger of record",
        "Rebuild the spend Redis lost from the ledger of record in PostgreSQL.",
        RESTORE_EPILOG,
    )
    restore.add_argument(
        "--from", dest="source", metavar="DSN", required=True, help="the PostgreSQL database"
    )
    restore.add_argument(
        "--no-sync",
        action="store_true",
        help="do not sync the scopes first (restore still "
        "counts what the stream holds that PostgreSQL lacks)",
    )
    budget = restore.add_argument_group("budget, to rebuild a budget key that is gone")
    budget.add_argument("--limit", metavar="USD", help="the budget's limit per period")
    budget.add_argument(
        "--per", choices=("day", "month"), default="day", help="its period (default: day)"
    )
    budget.add_argument("--tz", default="UTC", metavar="ZONE", help="IANA zone (default: UTC)")
    restore.set_defaults(handler=run_restore, server="required", usage_error=restore.error)


def check_scopes(args: argparse.Namespace) -> None:
    """Refuse SCOPEs with --all, and neither (a usage error, exit 2)."""
    if args.all and args.scopes:
        args.usage_error("give SCOPE names or --all, not both")
    if not args.all and not args.scopes:
        args.usage_error("give the SCOPE names to work on, or --all")


@contextmanager
def _stopping_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (a clean stop after the batch in hand)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def ledger_client(url: str, block_s: float) -> redis.Redis:
    """A client whose reads outlast a blocking XREADGROUP of ``block_s`` seconds.

    Raises ClusterNotSupported for a Redis Cluster: one XREADGROUP follows
    streams of many slots, which a cluster refuses.
    """
    client = backend.connect(url, socket_timeout_s=block_s + SOCKET_SLACK_S)
    if isinstance(client, redis.Redis):
        return client
    client.close()
    raise ClusterNotSupported(
        f"{safe_url(url)} is a Redis Cluster: sync and restore read one Redis or Valkey "
        "server (or a Sentinel's primary) and do not support Redis Cluster yet; nothing "
        "was read or written"
    )


def _report(command: str, exc: Exception) -> int:
    print(f"ratelimit {command}: {exc}", file=sys.stderr)
    return EXIT_ERROR


def _configured(config: Config | None, scope: str) -> ScopeConfig | None:
    return None if config is None else config.scopes.get(scope)


def _named(scopes: list[str], slot: str | None, config: Config | None) -> list[LedgerStream]:
    """The scopes' streams: in ``slot``, else where the configuration puts them."""
    streams = []
    for scope in scopes:
        configured = _configured(config, scope)
        if slot is None and configured is not None:
            streams.append(LedgerStream(scope, configured.keys.slot))
        else:
            streams.extend(named([scope], slot))
    return streams


def _missing_extra(exc: ImportError) -> MissingExtra:
    return MissingExtra(
        f"{exc}: the ledger of record needs psycopg, pip install 'llm-quota-guard[postgres]'"
    )


def run_sync(args: argparse.Namespace) -> int:
    """``ratelimit sync``: returns the exit code."""
    check_scopes(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        from ratelimit.postgres.sync import LedgerSync

        streams = None if args.all else _named(args.scopes, args.slot, loaded_config(args))
    except ImportError as exc:
        return _report("sync", _missing_extra(exc))
    except LimiterError as exc:
        return _report("sync", exc)
    try:
        client = ledger_client(args.redis_url, DEFAULT_BLOCK_MS / 1000)
    except LimiterError as exc:
        return _report("sync", exc)
    sync = LedgerSync(
        client,
        args.to,
        streams,
        consumer=args.consumer,
        batch=args.batch,
        claim_idle_s=args.claim_idle,
        rescan_s=args.rescan,
    )
    stop = threading.Event()
    try:
        with _stopping_on_signals(stop):
            stats = sync.drain() if args.once else sync.follow(stop)
    except (redis.exceptions.RedisError, LimiterError) as exc:
        return _report("sync", exc)
    finally:
        sync.close()
        client.close()
    print(f"ratelimit sync: {stats.line()} ({sync.consumer})", file=sys.stderr)
    return 0


def _restored_line(result: Restored) -> str:
    before = "none" if result.spent_before is None else format_usd(result.spent_before)
    spend = {f: usd for f, usd in result.added.items() if not f.endswith("|saved")}
    saved = {f: usd for f, usd in result.added.items() if f.endswith("|saved")}
    parts = [
        f"{result.stream.scope}: period {result.period} spent {before} -> "
        f"{format_usd(result.spent_after)} USD",
        f"counters +{format_usd(sum(spend.values(), Decimal(0)))} USD "
        f"over {len(spend)} day|model field(s)",
    ]
    if saved:
        parts.append(f"savings +{format_usd(sum(saved.values(), Decimal(0)))} USD")
    if result.tail_entries:
        parts.append(f"{result.tail_entries:,} entries counted from the stream")
    if result.lost_at is not None:
        parts.append(f"loss found by Redis at {format_time(result.lost_at)} UTC cleared")
    if not result.changed:
        parts.append("nothing to restore")
    return "; ".join(parts)


def _restore_streams(
    args: argparse.Namespace, config: Config | None, recorded: list[LedgerStream]
) -> list[LedgerStream]:
    """``--all``: every stream the syncs have copied. A SCOPE: in ``--slot``, else where the
    configuration puts it, else in the slot(s) the syncs found it in, else its own."""
    if args.all:
        return recorded
    streams = []
    for scope in args.scopes:
        seen = [s for s in recorded if s.scope == scope]
        if args.slot is None and _configured(config, scope) is None and seen:
            streams.extend(seen)
        else:
            streams.extend(_named([scope], args.slot, config))
    return streams


def run_restore(args: argparse.Namespace) -> int:
    """``ratelimit restore``: returns the exit code."""
    check_scopes(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        given = None if args.limit is None else Budget(args.limit, per=args.per, tz=args.tz)
    except LimiterError as exc:
        args.usage_error(str(exc))
    try:
        from ratelimit.postgres.restore import recorded_streams, restore_scope
        from ratelimit.postgres.schema import connect, migrate
        from ratelimit.postgres.sync import LedgerSync
    except ImportError as exc:
        return _report("restore", _missing_extra(exc))
    try:
        client = ledger_client(args.redis_url, 0)
    except LimiterError as exc:
        return _report("restore", exc)
    code = 0
    try:
        config = loaded_config(args)
        with connect(args.source) as conn:
            migrate(conn)
            streams = _restore_streams(args, config, recorded_streams(conn))
            if not args.no_sync:
                sync = LedgerSync(client, args.source, streams, claim_idle_s=args.claim_idle)
                try:
                    sync.drain()
                finally:
                    sync.close()
            for stream in streams:
                # The limit and period given, else the configuration's for the scope.
                configured = _configured(config, stream.scope)
                budget = given or (configured.budget if configured else None)
                try:
                    print(_restored_line(restore_scope(client, conn, stream, budget)))
                except RestoreRefused as exc:
                    print(f"ratelimit restore: {exc}", file=sys.stderr)
                    code = EXIT_ERROR
    except (redis.exceptions.RedisError, LimiterError) as exc:
        return _report("restore", exc)
    finally:
        client.close()
    return code
