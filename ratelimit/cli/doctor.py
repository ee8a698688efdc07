"""``ratelimit doctor``: can this deployment keep the limiter's promises?

Each check prints its verdict: ``ok``, ``FAIL`` (with what to fix) or
``skip`` (the server would not say, as a managed service may refuse INFO).
The exit status is 1 when a check fails. It reads only: the scripts are
loaded (SCRIPT LOAD changes no data) to show the user may run them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import UTC, datetime
from typing import TextIO

import redis
import redis.cluster
import redis.exceptions

from ratelimit import checks, scripts
from ratelimit.backend import SyncClient, backend_error, connect
from ratelimit.checks import Verdict
from ratelimit.cli.config_option import configured_scopes
from ratelimit.cli.output import EXIT_ERROR, safe_url
from ratelimit.core.keys import ALERT_CHANNEL, ScopeKeys
from ratelimit.core.numbers import MICRO, usd
from ratelimit.deployment.reader import find_keys
from ratelimit.deployment.stored import parse_budget
from ratelimit.errors import LimiterError
from ratelimit.postgres.lag import sync_lag

EXIT_FAILED = 1

#: What the ACL check runs against: keys of a scope nobody uses, which the
#: check only names (``redis.acl_check_cmd`` reads and writes nothing).
PROBE = ScopeKeys("ratelimit-doctor", "ratelimit-doctor")

#: How far behind ``ratelimit sync`` may be (the age of the oldest ledger
#: entry not yet in PostgreSQL) before doctor fails, by default.
DEFAULT_MAX_SYNC_LAG_S = 60.0


def _mark(verdict: Verdict) -> str:
    return {True: "ok  ", False: "FAIL", None: "skip"}[verdict.ok]


def _server(client: SyncClient, budgets: bool) -> list[Verdict]:
    """The server checks; on a Redis Cluster, the cluster's state and then each primary's
    (its node named in each verdict), since settings and versions are per node."""
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            return _cluster(client, budgets)
        info = client.info()
    except redis.exceptions.ResponseError as exc:
        return [Verdict("server", None, f"INFO is not permitted here ({exc})")]
    verdicts = []
    for node in checks.nodes(info):
        verdicts += checks.server_verdicts(node, budgets=budgets)
    return verdicts


def _cluster(client: redis.cluster.RedisCluster, budgets: bool) -> list[Verdict]:
    primaries = client.get_primaries()  # type: ignore[no-untyped-call]  # untyped in redis-py
    state = str(client.cluster_info()["cluster_state"])
    verdicts = [
        Verdict(
            "cluster",
            state == "ok",
            f"{len(primaries)} primaries, cluster_state {state}"
            + ("" if state == "ok" else ": some slots have no primary, their scopes fail"),
        )
    ]
    for node in sorted(primaries, key=lambda n: str(n.name)):
        for verdict in checks.server_verdicts(client.info(target_nodes=node), budgets=budgets):
            detail = f"primary {node.name}: {verdict.detail}"
            verdicts.append(replace(verdict, detail=detail))
    return verdicts


def _scripts(client: SyncClient) -> list[Verdict]:
    failed = []
    for name in scripts.SCRIPT_NAMES:
        try:
            client.script_load(scripts.source(name))
        except redis.exceptions.RedisError as exc:
            failed.append(f"{name}: {backend_error(exc)}")
    if failed:
        return [Verdict("scripts", False, "; ".join(failed))]
    return [Verdict("scripts", True, f"all {len(scripts.SCRIPT_NAMES)} load")]


def _permissions(client: SyncClient) -> list[Verdict]:
    keys = [
        PROBE.rates, PROBE.budget, PROBE.permits, PROBE.leases,
        PROBE.ledger, PROBE.spend, PROBE.alerts, PROBE.key("x:check"),
    ]  # fmt: skip
    denied = client.register_script(scripts.source("check"))(keys=keys, args=[ALERT_CHANNEL])
    return checks.acl_verdicts(denied)


def _budgets(client: SyncClient) -> tuple[int, list[Verdict]]:
    """How many budgets the deployment has, and one verdict per budget whose spend Redis lost."""
    found = find_keys(client)
    budgeted = [(slot, name) for (slot, name), kinds in found.scopes.items() if "b" in kinds]
    verdicts = []
    for slot, name in budgeted:
        raw = client.get(ScopeKeys(name, slot).budget)
        if raw is None:
            continue
        stored = parse_budget(raw)
        if stored.lost_at_us:
            when = datetime.fromtimestamp(stored.lost_at_us / MICRO, UTC).isoformat()
            verdicts.append(
                Verdict(
                    f"budget {name}",
                    False,
                    f"Redis lost this budget's spend at {when}; a floor of "
                    f"${usd(stored.spent_nano)} was restored from what processes had seen. "
                    "Rebuild it from the ledger of record: ratelimit restore",
                )
            )
    if not verdicts:
        verdicts.append(
            Verdict("data loss", True, f"no budget lost its spend ({len(budgeted)} budgets)")
        )
    if found.truncated:
        verdicts.append(Verdict("data loss", None, "too many scopes: only the first were read"))
    return len(budgeted), verdicts


def _sync(client: SyncClient, max_lag_s: float) -> list[Verdict]:
    """One verdict per ledger stream a ``ratelimit sync`` follows: is it keeping up?

    Nothing when no sync follows this deployment (the ledger of record is optional).
    """
    try:
        lags = sync_lag(client)
    except redis.exceptions.ResponseError as exc:
        return [Verdict("sync", None, f"the ledger streams cannot be read here ({exc})")]
    verdicts = []
    for lag in lags:
        if not lag.group_exists:
            continue
        name = f"sync {lag.stream.scope}"
        age = lag.oldest_unsynced_age_s
        if age is None:
            verdicts.append(Verdict(name, True, "PostgreSQL holds every ledger entry"))
        elif age > max_lag_s:
            verdicts.append(
                Verdict(
                    name,
                    False,
                    f"the oldest entry not in PostgreSQL is {age:.0f} s old "
                    f"({lag.pending} pending, {lag.consumers} consumers): "
                    "is ratelimit sync running?",
                )
            )
        else:
            verdicts.append(Verdict(name, True, f"{age:.1f} s behind"))
    return verdicts


def doctor(client: SyncClient, args: argparse.Namespace) -> list[Verdict]:
    """Every verdict about the deployment behind ``client``."""
    try:
        client.time()  # a command every user of the README may run
    except redis.exceptions.RedisError as exc:
        return [Verdict("connection", False, str(backend_error(exc)))]
    verdicts = [Verdict("connection", True, "the server answers")]
    budgeted, lost = _budgets(client)
    configured_budgets = any(scope.budget for scope in configured_scopes(args))
    verdicts += _server(client, budgets=bool(budgeted) or configured_budgets)
    verdicts += _scripts(client)
    verdicts += _permissions(client)
    verdicts += lost
    verdicts += _sync(client, args.max_sync_lag)
    return verdicts


def run_doctor(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``ratelimit doctor``: prints each verdict; 1 when one fails."""
    out = out or sys.stdout
    print(f"checking {safe_url(args.redis_url)}", file=out)
    try:
        client = connect(args.redis_url)
        verdicts = doctor(client, args)
    except (LimiterError, redis.exceptions.RedisError) as exc:
        print(f"ratelimit doctor: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for verdict in verdicts:
        print(f"{_mark(verdict)} {verdict.name}: {verdict.detail}", file=out)
    return EXIT_FAILED if any(v.ok is False for v in verdicts) else 0
