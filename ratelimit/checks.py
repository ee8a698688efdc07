"""What a deployment must look like for the limiter's promises to hold.

Read from ``INFO`` and from the ACL check script (lua/check.lua), once per
client before its first admission (a ``WARNING`` on the ``ratelimit``
logger for each problem) and on demand by ``ratelimit doctor``, which
prints every verdict. Pure: these functions only read what they are given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ratelimit.core.numbers import text
from ratelimit.errors import RedisMisconfigured

log = logging.getLogger("ratelimit")

#: The oldest servers the scripts are written and tested for.
MIN_VERSIONS = {"redis": (6, 2), "valkey": (7, 2)}

#: Eviction policies that never take a key.
SAFE_POLICIES = frozenset({"noeviction"})


@dataclass(frozen=True)
class Verdict:
    """One check: passed (True), failed (False) or could not tell (None)."""

    name: str
    ok: bool | None
    detail: str


def _version(raw: object) -> tuple[int, ...]:
    parts = []
    for piece in text(raw).split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def server_verdicts(info: Mapping[str, Any], *, budgets: bool) -> list[Verdict]:
    """The verdicts ``INFO`` (all sections, as redis-py parses it) gives."""
    verdicts = []
    engine = "valkey" if "valkey_version" in info else "redis"
    version = text(info.get(f"{engine}_version", info.get("redis_version", "0")))
    oldest = MIN_VERSIONS[engine]
    supported = _version(version) >= oldest
    detail = f"{engine} {version}"
    if not supported:
        detail += f": older than {oldest[0]}.{oldest[1]}, which the scripts are not tested on"
    verdicts.append(Verdict("server version", supported, detail))
    maxmemory = int(info.get("maxmemory", 0) or 0)
    policy = text(info.get("maxmemory_policy", "noeviction"))
    evicts = maxmemory > 0 and policy not in SAFE_POLICIES
    verdicts.append(
        Verdict(
            "eviction",
            not evicts,
            f"maxmemory {maxmemory} bytes, policy {policy}"
            + (
                ": Redis may evict the limiter's keys when memory fills. Buckets would then "
                "restart full, and under an allkeys-* policy a budget's spend could be lost "
                "(detected and floored, but not rebuilt). Use noeviction, or a dedicated instance"
                if evicts
                else ""
            ),
        )
    )
    aof = int(info.get("aof_enabled", 0) or 0) == 1
    verdicts.append(
        Verdict(
            "persistence",
            aof or not budgets,
            ("appendonly yes" if aof else "appendonly no")
            + (
                ""
                if aof
                else (
                    ": a restart loses the period's spend and the ledger not yet synced; "
                    "enable appendonly with appendfsync everysec"
                    if budgets
                    else ": rate buckets restart full after a restart (no budgets here)"
                )
            ),
        )
    )
    role = text(info.get("role", "master"))
    replicas = int(info.get("connected_slaves", 0) or 0)
    if role == "master" and replicas > 0:
        guarded = "min_slaves_good_slaves" in info
        verdicts.append(
            Verdict(
                "replication",
                guarded,
                f"{replicas} replica(s)"
                + (
                    ", min-replicas-to-write set"
                    if guarded
                    else ": set min-replicas-to-write 1 and min-replicas-max-lag 10, so a "
                    "primary cut off from its replicas refuses writes instead of admitting "
                    "beside the new primary after a failover"
                ),
            )
        )
    elif role != "master":
        verdicts.append(Verdict("replication", False, f"this server is a {role}: writes fail"))
    return verdicts


def acl_verdicts(denied: Sequence[object]) -> list[Verdict]:
    """The verdicts of lua/check.lua's reply: commands, and the alert channel."""
    missing = [text(d) for d in denied]
    if missing == ["?"]:
        return [Verdict("permissions", None, "this server cannot check ACL permissions")]
    fatal = [d for d in missing if d != "PUBLISH"]
    verdicts = [
        Verdict(
            "permissions",
            not fatal,
            "every command the scripts run is allowed"
            if not fatal
            else "the Redis user may not run: " + "; ".join(fatal) + " (see the ACL rule in "
            "the README's Deploying section)",
        )
    ]
    if "PUBLISH" in missing:
        verdicts.append(
            Verdict(
                "alert channel",
                False,
                "alerts cannot be published (no channel permission): they still reach the "
                "alerts stream and on_alert",
            )
        )
    return verdicts


def nodes(info: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """Each server's INFO: a cluster client answers with one INFO per node."""
    values = list(info.values())
    if values and all(isinstance(v, Mapping) for v in values):
        return values
    return [info]


def info_verdicts(info: Mapping[str, Any] | Exception, *, budgets: bool) -> list[Verdict]:
    """The server verdicts of an INFO reply (each node's, on a cluster), or of an INFO
    the server refused (a managed service, fakeredis): that says so, and the checks go on."""
    if isinstance(info, Exception):
        return [Verdict("server", None, f"INFO is not available: {info}")]
    return [v for node in nodes(info) for v in server_verdicts(node, budgets=budgets)]


def conclude(verdicts: Sequence[Verdict], denied: Sequence[object]) -> list[Verdict]:
    """Every verdict, with lua/check.lua's, logged (:func:`warn`); raises
    :class:`~ratelimit.errors.RedisMisconfigured` when the Redis user may not run a
    command the scripts need."""
    acl = acl_verdicts(denied)
    every = [*verdicts, *acl]
    warn(every)
    if acl[0].ok is False:
        raise RedisMisconfigured(acl[0].detail)
    return every


def warn(verdicts: Iterable[Verdict]) -> None:
    """Log one WARNING per failed verdict; an INFO per check that could not tell (a
    server that refuses INFO, fakeredis without ACLs): ``ratelimit doctor`` shows them."""
    for verdict in verdicts:
        if verdict.ok is False:
            log.warning("deployment check %s: %s", verdict.name, verdict.detail)
        elif verdict.ok is None:
            log.info("deployment check %s could not tell: %s", verdict.name, verdict.detail)
