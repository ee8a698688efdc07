"""``ratelimit dashboard``: a read-only web page of a deployment (:mod:`ratelimit.dashboard`).

It serves until Ctrl-C or SIGTERM. Without ``--postgres``, everything comes
from Redis (the spend from what the ledger streams still hold); with it,
the spend chart and top lists come from the ``ratelimit_ledger`` table. It
listens on 127.0.0.1 unless ``--host`` says otherwise, and refuses any
other address without a token. Needs the ``dashboard`` extra (and the
``postgres`` one for ``--postgres``); the parser is built without them.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from typing import TYPE_CHECKING, Any

import redis

from ratelimit.backend import SyncClient, connect
from ratelimit.cli.config_option import configured_scopes
from ratelimit.cli.output import EXIT_ERROR, safe_url
from ratelimit.cli.target import add_serving_command
from ratelimit.dashboard import DASHBOARD_EXTRA
from ratelimit.dashboard.access import DEFAULT_HOST, TOKEN_ENV, check_binding, resolve_token
from ratelimit.dashboard.sources import read_live, read_redis_spend, redis_today
from ratelimit.errors import InvalidArgument, LimiterError, MissingExtra

if TYPE_CHECKING:  # the dashboard extra may be missing: imported where used
    from ratelimit.dashboard.serving import DashboardServer

#: The page's port unless ``--port`` says otherwise.
DEFAULT_PORT = 8080
#: What ``--postgres`` needs installed.
POSTGRES_EXTRA = "llm-quota-guard[postgres]"

DASHBOARD_EPILOG = f"""\
What it shows: each budget (spent, reserved and limit as a gauge, the time to
reset), spend per day and model over the last 30 days, the top scopes and tag
values by spend, each quota's utilization per dimension (refreshed every 3 s)
and recent alerts. Nothing is written: Redis is only read (SCAN, GET, HLEN,
XRANGE...), PostgreSQL in a READ ONLY transaction.

Where the spend comes from: without --postgres, the ledger streams in Redis
(what their retention still holds); with --postgres DSN, the ratelimit_ledger
table that `ratelimit sync` fills.

Security: it listens on {DEFAULT_HOST} by default. Any other --host needs a
token (--token, or ${TOKEN_ENV}); every request must then carry it: open
http://HOST:PORT/?token=TOKEN, or send "Authorization: Bearer TOKEN".

exit status:
  0 stopped by Ctrl-C or SIGTERM, 2 error (missing extra, refused address,
  bad URL, port taken).

examples:
  ratelimit dashboard
  ratelimit dashboard --postgres postgresql://reader@db/ratelimit --port 8081
  RATELIMIT_DASHBOARD_TOKEN=$(openssl rand -hex 16) ratelimit dashboard --host 0.0.0.0
"""


def add_dashboard_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dashboard``: the read-only web page."""
    dashboard = add_serving_command(
        commands,
        "dashboard",
        help_text="serve a read-only web page of every budget, quota, spend and alert",
        description="Serve a read-only web page of the deployment: budgets, spend, quotas, alerts.",
        epilog=DASHBOARD_EPILOG,
        port=DEFAULT_PORT,
        host=DEFAULT_HOST,
        host_note="; any other needs a token",
    )
    dashboard.add_argument(
        "--postgres",
        metavar="DSN",
        help="read the spend chart and top lists from the ledger of record's "
        "ratelimit_ledger table (default: from the Redis ledger streams)",
    )
    dashboard.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"demand this token of every request (default: ${TOKEN_ENV}); "
        "required to listen on anything but loopback",
    )
    dashboard.set_defaults(handler=run_dashboard, server="required", usage_error=dashboard.error)


def run_dashboard(args: argparse.Namespace) -> int:
    """``ratelimit dashboard``: serve until Ctrl-C or SIGTERM; returns the exit code."""
    token = resolve_token(args.token)
    try:
        server, client = build_server(args, token)
    except LimiterError as exc:
        print(f"ratelimit dashboard: {exc}", file=sys.stderr)
        return EXIT_ERROR
    where = "the ratelimit_ledger table" if args.postgres else "the Redis ledger streams"
    opened = server.url if token is None else f"{server.url}?token=<the token>"
    message = f"serving {opened} (read-only; spend from {where}; Ctrl-C to stop)"
    print(f"ratelimit dashboard: {message}", file=sys.stderr, flush=True)
    with closing(client):
        server.serve()
    return 0


def build_server(args: argparse.Namespace, token: str | None) -> tuple[DashboardServer, SyncClient]:
    """The bound :class:`~ratelimit.dashboard.serving.DashboardServer` and its Redis client.

    Raises a :class:`~ratelimit.errors.LimiterError` for everything the user
    must fix: an address refused without a token, a missing extra, a bad
    Redis URL, a port taken.
    """
    check_binding(args.host, token)
    try:
        from ratelimit.dashboard.app import create_app
        from ratelimit.dashboard.serving import DashboardServer
    except ImportError as exc:
        raise MissingExtra(
            f"needs starlette and uvicorn: pip install '{DASHBOARD_EXTRA}' ({exc})"
        ) from exc
    dsn: str | None = args.postgres
    if dsn:
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise MissingExtra(f"--postgres needs psycopg: pip install '{POSTGRES_EXTRA}'") from exc
    try:
        client = connect(args.redis_url)
    except (ValueError, redis.exceptions.RedisError) as exc:
        raise InvalidArgument(f"{safe_url(args.redis_url)}: {exc}") from exc
    configured = configured_scopes(args)

    def spend() -> dict[str, Any]:
        today = redis_today(client)
        if dsn:
            from ratelimit.dashboard.ledger_sql import read_postgres_spend

            return read_postgres_spend(dsn, today)
        return read_redis_spend(client, today)

    app = create_app(live=lambda: read_live(client, configured), spend=spend, token=token)
    try:
        server = DashboardServer(app, args.host, args.port)
    except LimiterError:
        client.close()
        raise
    return server, client
