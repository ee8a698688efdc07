"""Read a deployment's every scope from Redis, changing nothing: the thin sync driver.

One SCAN over the project's key prefix finds the scopes (and the permits of
groups of scopes), then two pipelined round trips read them: the first with
Redis TIME (the one clock of the snapshot), the rates and budget strings,
and how many permits each hash holds; the second the permits' records and
leases where there are few enough to read. Everything else is pure
(:mod:`ratelimit.deployment.stored`, :mod:`ratelimit.deployment.snapshot`).
Only read commands are sent: no script runs, so an expired lease is
reported as such, not reclaimed.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.cluster
import redis.exceptions

from ratelimit.backend import backend_error
from ratelimit.core.keys import ScopeKeys, slot_prefix
from ratelimit.core.scope import ScopeSpec
from ratelimit.deployment.keys import SCAN_PATTERN, GroupKey, group_members, parse_key
from ratelimit.deployment.snapshot import GroupReading, ScopeReading, Snapshot, read_scope
from ratelimit.deployment.stored import (
    InFlight,
    StoredBucket,
    StoredBudget,
    in_flight,
    parse_budget,
    parse_rates,
)
from ratelimit.errors import BackendError, RedisUnavailable
from ratelimit.limiter import SyncClient

#: SCAN asks for this many keys per call: few round trips, short server work each.
SCAN_COUNT = 1000
#: A snapshot holds at most this many scopes; past it, it says it was truncated.
MAX_SCOPES = 10_000
#: The records of a permits hash are read when it holds at most this many;
#: above, only their number is (a crashed fleet's thousands of leases cost
#: one HLEN, not megabytes).
MAX_PERMITS_READ = 10_000

ScopeId = tuple[str, str]  # (slot, name)


@dataclass
class Found:
    """What a SCAN found: each scope's key kinds, and each group's permits keys."""

    scopes: dict[ScopeId, set[str]] = field(default_factory=dict)
    groups: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    truncated: bool = False


def find_keys(
    client: SyncClient, *, scan_count: int = SCAN_COUNT, max_scopes: int = MAX_SCOPES
) -> Found:
    """Every scope and group with a key under ``rl:v2:``: one SCAN, bounded by ``max_scopes``."""
    found = Found()
    for key in client.scan_iter(match=SCAN_PATTERN, count=scan_count):
        ref = parse_key(key)
        if isinstance(ref, GroupKey):
            found.groups.setdefault((ref.slot, ref.digest), set()).add(ref.kind)
        elif ref is not None:
            scope = (ref.slot, ref.name)
            if scope not in found.scopes and len(found.scopes) >= max_scopes:
                found.truncated = True
                break
            found.scopes.setdefault(scope, set()).add(ref.kind)
    return found


class _Batch:
    """One pipelined round trip whose replies are looked up by what they answer."""

    def __init__(self, client: SyncClient) -> None:
        self._pipe = client.pipeline(transaction=False)
        self._asked: list[Hashable] = []

    def ask(self, what: Hashable, command: str, *args: object, **kwargs: object) -> None:
        getattr(self._pipe, command)(*args, **kwargs)
        self._asked.append(what)

    def run(self) -> dict[Hashable, Any]:
        if not self._asked:
            return {}
        return dict(zip(self._asked, self._pipe.execute(), strict=True))


def read(
    client: SyncClient,
    *,
    configured: Iterable[ScopeSpec] = (),
    names: Collection[str] | None = None,
    with_spend: bool = False,
    scan_count: int = SCAN_COUNT,
    max_scopes: int = MAX_SCOPES,
) -> Snapshot:
    """Every scope of the deployment at one Redis time, found by SCAN; writes nothing.

    ``configured`` scopes are shown with their configured limits, and read
    as full and idle when Redis holds nothing of them; ``names`` keeps only
    the scopes of those names; ``with_spend`` reads the daily spend
    counters too. Raises :class:`~ratelimit.errors.BackendError` (or
    :class:`~ratelimit.errors.RedisUnavailable`) when Redis cannot be read.
    """
    try:
        return _read(
            client,
            configured=list(configured),
            names=names,
            with_spend=with_spend,
            scan_count=scan_count,
            max_scopes=max_scopes,
        )
    except redis.exceptions.RedisError as exc:
        error = backend_error(exc)
        if not isinstance(error, RedisUnavailable):
            error = BackendError(f"Redis refused a read: {exc}")
        raise error from exc


def _read(
    client: SyncClient,
    *,
    configured: list[ScopeSpec],
    names: Collection[str] | None,
    with_spend: bool,
    scan_count: int,
    max_scopes: int,
) -> Snapshot:
    found = find_keys(client, scan_count=scan_count, max_scopes=max_scopes)
    specs = {(spec.slot, spec.name): spec for spec in configured}
    kinds = {scope: found.scopes.get(scope, set()) for scope in [*found.scopes, *specs]}
    wanted = sorted(s for s in kinds if names is None or s[1] in names)
    hashes = _PermitHashes(found, list(kinds))

    first = _Batch(client)
    # A cluster pipeline takes only commands with keys: there TIME is asked of one node first.
    clock = client.time() if isinstance(client, redis.cluster.RedisCluster) else None
    if clock is None:
        first.ask("time", "time")
    for scope in wanted:
        keys = ScopeKeys(scope[1], scope[0])
        first.ask((scope, "r"), "get", keys.rates)
        first.ask((scope, "b"), "get", keys.budget)
        if "p" in kinds[scope]:
            first.ask(keys.permits, "hlen", keys.permits)
        if with_spend and "spend" in kinds[scope]:
            first.ask((scope, "spend"), "hgetall", keys.spend)
    for key in hashes.keys:
        first.ask(key, "hlen", key)
    replies = first.run()
    seconds, micros = clock or replies["time"]
    now_us = int(seconds) * 1_000_000 + int(micros)
    sizes = {key: int(n) for key, n in replies.items() if isinstance(key, str) and key != "time"}

    # Second round: the permits where there are few enough, and the spend
    # counters that stand in for a configured budget whose string is gone.
    second = _Batch(client)
    for key, size in sizes.items():
        if 0 < size <= MAX_PERMITS_READ:
            second.ask((key, "records"), "hgetall", key)
            second.ask((key, "leases"), "zrange", _leases_of(key), 0, -1, withscores=True)
    for scope in wanted:
        spec = specs.get(scope)
        lost = spec is not None and spec.budget is not None and replies[scope, "b"] is None
        if lost and "spend" in kinds[scope] and (scope, "spend") not in replies:
            second.ask((scope, "spend"), "hgetall", ScopeKeys(scope[1], scope[0]).spend)
    more = second.run()
    permits = {
        key: (more[key, "records"], dict(more[key, "leases"]))
        for key in sizes
        if (key, "records") in more
    }

    shares, unmatched = hashes.in_flight(permits, sizes, now_us)
    readings = []
    for scope in wanted:
        flight = _flight(ScopeKeys(scope[1], scope[0]).permits, permits, sizes, now_us, 1)
        for share in shares.get(scope, []):
            flight = flight.plus(share)
        spend = more.get((scope, "spend"), replies.get((scope, "spend")))
        readings.append(
            _reading(
                scope,
                raw_rates=replies[scope, "r"],
                raw_budget=replies[scope, "b"],
                spend=spend,
                now_us=now_us,
                flight=flight,
                spec=specs.get(scope),
                kinds=kinds[scope],
            )
        )
    return Snapshot(now_us, tuple(readings), tuple(unmatched), found.truncated)


def _leases_of(permits_key: str) -> str:
    # A permits hash ends in ":p"; its leases set beside it in ":l".
    return permits_key[:-1] + "l"


def _flight(
    key: str,
    permits: Mapping[str, tuple[Mapping[bytes, bytes], Mapping[bytes, float]]],
    sizes: Mapping[str, int],
    now_us: int,
    position: int,
) -> InFlight:
    """What the permits of hash ``key`` hold for the scope at ``position``."""
    if key in permits:
        records, leases = permits[key]
        return in_flight(records, leases, now_us, position)
    size = sizes.get(key, 0)
    return InFlight(size, summed=size == 0)


class _PermitHashes:
    """The groups' permits hashes, and which scopes of their slot each one is for."""

    def __init__(self, found: Found, scopes: list[ScopeId]) -> None:
        self.members: dict[str, tuple[ScopeId, ...] | None] = {}
        self.groups: dict[str, tuple[str, str]] = {}
        for (slot, digest), kinds in sorted(found.groups.items()):
            if "p" not in kinds:
                continue
            key = f"{slot_prefix(slot)}group:{digest}:p"
            chosen = group_members(slot, digest, scopes)
            self.members[key] = None if chosen is None else tuple(c for c in chosen if c[0] == slot)
            self.groups[key] = (slot, digest)
        self.keys = list(self.members)

    def in_flight(
        self,
        permits: Mapping[str, tuple[Mapping[bytes, bytes], Mapping[bytes, float]]],
        sizes: Mapping[str, int],
        now_us: int,
    ) -> tuple[dict[ScopeId, list[InFlight]], list[GroupReading]]:
        """Each member scope's share of the groups' permits, and the groups not matched."""
        shares: dict[ScopeId, list[InFlight]] = {}
        unmatched = []
        for key, members in self.members.items():
            if members is None:
                slot, digest = self.groups[key]
                leases = permits[key][1] if key in permits else {}
                expired = sum(1 for end in leases.values() if end <= now_us)
                flight = InFlight(sizes.get(key, 0), expired, summed=False)
                unmatched.append(GroupReading(slot, digest, flight))
                continue
            for position, scope in enumerate(members, 1):
                shares.setdefault(scope, []).append(_flight(key, permits, sizes, now_us, position))
        return shares, unmatched


def _reading(
    scope: ScopeId,
    *,
    raw_rates: bytes | None,
    raw_budget: bytes | None,
    spend: Mapping[bytes, bytes] | None,
    now_us: int,
    flight: InFlight,
    spec: ScopeSpec | None,
    kinds: set[str],
) -> ScopeReading:
    """A scope's reading from what its keys hold; what cannot be parsed is a problem."""
    problems = []
    buckets: list[StoredBucket] = []
    budget: StoredBudget | None = None
    try:
        if raw_rates is not None:
            buckets = parse_rates(raw_rates)
    except BackendError as exc:
        problems.append(str(exc))
    try:
        if raw_budget is not None:
            budget = parse_budget(raw_budget)
    except BackendError as exc:
        problems.append(str(exc))
    return read_scope(
        scope[1],
        scope[0],
        now_us,
        buckets=buckets,
        budget=budget,
        in_flight=flight,
        configured=spec,
        spend=spend or None,
        kinds=kinds,
        problems=problems,
    )
