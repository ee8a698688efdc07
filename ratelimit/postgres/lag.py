"""How far ``ratelimit sync`` is behind, per scope: for ``ratelimit doctor`` and ``restore``.

Every ``ratelimit sync`` reads a scope's ledger stream through one consumer
group (:data:`~ratelimit.postgres.streams.SYNC_GROUP`) and acknowledges an
entry only after its row is committed in PostgreSQL. So, from Redis alone:

- an entry the group has not delivered yet (``XINFO GROUPS`` *lag*) is not in
  PostgreSQL;
- an entry delivered but still pending (``XPENDING``) may or may not be;
- every other entry, older than the oldest of those, is in PostgreSQL.

:func:`sync_lag` reports the first two and the age of the oldest unsynced
entry; :func:`unsynced_from` gives the stream ID where unsynced entries begin,
which ``restore`` uses to split a scope's spend between PostgreSQL (before it)
and the stream itself (from it on). Redis only: no ``postgres`` extra needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

from ratelimit.backend import SyncClient
from ratelimit.core.numbers import text
from ratelimit.postgres.streams import SYNC_GROUP, LedgerStream, discover, id_order

__all__ = ["SyncLag", "Unsynced", "sync_lag", "unsynced_from"]


@dataclass(frozen=True)
class Unsynced:
    """What a scope's ledger stream holds that PostgreSQL may not."""

    group_exists: bool
    """Whether the sync's consumer group exists on the stream (False: never synced,
    or Redis lost the stream since)."""
    pending: int
    """Entries delivered to a consumer and not acknowledged yet (not known to be committed)."""
    undelivered: int | None
    """Entries the group has not delivered yet (``XINFO GROUPS`` lag; counts
    entries trimmed before they were read). None when Redis cannot tell."""
    consumers: int
    """Consumers the group knows (live ones and ones that died with entries pending)."""
    first_id: str | None
    """The oldest entry still in the stream that is not known to be in PostgreSQL
    (pending, or after the last delivered one); None when there is none."""


def unsynced_from(client: SyncClient, stream: LedgerStream, group: str = SYNC_GROUP) -> Unsynced:
    """Where the entries not known to be in PostgreSQL begin, in ``stream``.

    Every entry of the stream before ``first_id`` has been acknowledged, so
    committed: the group's last delivered ID is read before its pending
    entries, and anything delivered in between comes after that ID.
    """
    try:
        groups = client.xinfo_groups(stream.key)
    except redis.exceptions.ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        return Unsynced(False, 0, 0, 0, None)
    info = next((g for g in groups if text(g["name"]) == group), None)
    if info is None:
        first = client.xrange(stream.key, count=1)
        return Unsynced(False, 0, client.xlen(stream.key), 0, text(first[0][0]) if first else None)
    last = text(info["last-delivered-id"])
    pending = client.xpending(stream.key, group)
    after = client.xrange(stream.key, min=f"({last}", count=1)
    candidates = [text(after[0][0])] if after else []
    if pending["pending"]:
        candidates.append(text(pending["min"]))
    lag = info.get("lag")
    return Unsynced(
        group_exists=True,
        pending=int(pending["pending"]),
        undelivered=None if lag is None else int(lag),
        consumers=int(info["consumers"]),
        first_id=min(candidates, key=id_order) if candidates else None,
    )


@dataclass(frozen=True)
class SyncLag:
    """How far the ledger of record is behind one scope's ledger stream."""

    stream: LedgerStream
    group_exists: bool
    """False when no sync has read this stream (or Redis lost it since)."""
    pending: int
    """Entries delivered to a sync and not yet acknowledged (being committed, or
    held by a sync that died: another claims them after its idle time)."""
    undelivered: int | None
    """Entries no sync has read yet; None when Redis cannot tell (then see
    ``oldest_unsynced_age_s``)."""
    oldest_unsynced_age_s: float | None
    """Age by Redis time of the oldest entry not known to be in PostgreSQL, in
    seconds; None when every entry the stream holds is synced."""
    consumers: int

    @property
    def synced(self) -> bool:
        """Whether PostgreSQL holds every entry of the stream."""
        return self.oldest_unsynced_age_s is None and not self.undelivered and not self.pending


def sync_lag(
    client: SyncClient,
    streams: Iterable[LedgerStream] | None = None,
    *,
    group: str = SYNC_GROUP,
) -> list[SyncLag]:
    """The sync's lag on each ledger stream: all the server holds (SCAN) unless ``streams``.

    Per stream: the group's pending count, the entries it has not delivered
    yet (``XINFO GROUPS`` lag, Redis 7+), and the age of the oldest entry not
    known to be in PostgreSQL. Three or four reads per stream; reads only.
    """
    chosen = discover(client) if streams is None else list(streams)
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    report: list[SyncLag] = []
    for stream in chosen:
        unsynced = unsynced_from(client, stream, group)
        age = None
        if unsynced.first_id is not None:
            age = max(0, now_ms - id_order(unsynced.first_id)[0]) / 1000
        report.append(
            SyncLag(
                stream,
                unsynced.group_exists,
                unsynced.pending,
                unsynced.undelivered,
                age,
                unsynced.consumers,
            )
        )
    return report
