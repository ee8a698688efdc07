"""``ratelimit sync``: copy every ledger entry into PostgreSQL exactly once.

Each scope's ledger stream is read through one Redis consumer group
(:data:`~ratelimit.postgres.streams.SYNC_GROUP`, created at ID 0 on first use,
so what the stream still holds is backfilled). Every batch is inserted in one
PostgreSQL transaction, keyed by ``(scope, stream_id)`` with ``ON CONFLICT DO
NOTHING``, committed, and only then acknowledged (``XACK``). So:

- killed before the commit, the entries stay pending in Redis and another
  consumer (or this one, restarted) claims them after ``claim_idle_s``
  (``XAUTOCLAIM``) and inserts them;
- killed between the commit and the acknowledgement, the entries are
  delivered again and their insert is a no-op;

nothing is lost and nothing is counted twice, with any number of consumers
on one deployment (each has its own consumer name; the group shares the
work). When Redis has lost a stream and its group (a restart without
persistence), the group is created again and the new entries follow.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
import redis

from ratelimit.core.numbers import text
from ratelimit.errors import BackendError, LedgerStoreError
from ratelimit.ledger import LedgerEntry, parse_entry
from ratelimit.postgres.schema import Connection, connect, migrate
from ratelimit.postgres.streams import (
    DEFAULT_BATCH,
    DEFAULT_BLOCK_MS,
    DEFAULT_CLAIM_IDLE_S,
    DEFAULT_RESCAN_S,
    SYNC_GROUP,
    LedgerStream,
    discover,
    id_order,
)

__all__ = ["LedgerSync", "SyncStats", "consumer_name", "insert_entries"]

log = logging.getLogger("ratelimit")

#: Waits between attempts after PostgreSQL or Redis failed, in seconds (doubling).
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0

_INSERT = """
INSERT INTO ratelimit_ledger
    (scope, stream_id, permit_id, kind, at, day, model, cost_usd, saved_usd, tokens, tags)
SELECT scope, stream_id, permit_id, kind, at, day, model, cost_usd, saved_usd,
       tokens::jsonb, tags::jsonb
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::date[],
            %s::text[], %s::numeric[], %s::numeric[], %s::text[], %s::text[])
    AS t(scope, stream_id, permit_id, kind, at, day, model, cost_usd, saved_usd, tokens, tags)
ON CONFLICT (scope, stream_id) DO NOTHING
RETURNING scope, stream_id
"""

_ALREADY_THERE = """
SELECT l.scope, l.stream_id, l.permit_id, l.kind
FROM ratelimit_ledger l
JOIN unnest(%s::text[], %s::text[]) AS t(scope, stream_id) USING (scope, stream_id)
"""

_REGISTER = """
INSERT INTO ratelimit_streams (stream_key, scope, slot)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])
ON CONFLICT (stream_key) DO NOTHING
"""


def consumer_name() -> str:
    """This process's consumer name in the group: ``<host>-<pid>``, unique per live process."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class SyncStats:
    """What a sync did, added up over its batches."""

    inserted: int = 0
    """Rows committed to PostgreSQL."""
    duplicates: int = 0
    """Entries delivered again whose row was already there: no-ops."""
    acked: int = 0
    """Entries acknowledged in Redis (after their row was committed)."""
    claimed: int = 0
    """Pending entries taken over from consumers idle past ``claim_idle_s``."""
    trimmed: int = 0
    """Pending entries the stream had trimmed before they were synced (lost to it)."""
    conflicts: int = 0
    """Stream IDs already in PostgreSQL for another permit (the server's clock went
    back after it lost data): logged as errors, the first row kept."""
    unreadable: int = 0
    """Entries that are not ledger records: logged, left pending."""

    def line(self) -> str:
        """One line for a log or a terminal."""
        parts = [f"{self.inserted:,} rows inserted", f"{self.duplicates:,} already there"]
        for name in ("claimed", "trimmed", "conflicts", "unreadable"):
            if getattr(self, name):
                parts.append(f"{getattr(self, name):,} {name}")
        return ", ".join(parts)


#: One XREADGROUP/XAUTOCLAIM row: stream ID and fields (None for an entry trimmed
#: while it was pending).
Row = tuple[Any, Mapping[Any, Any] | None]


def _clean(value: str) -> str:
    # PostgreSQL text and jsonb cannot hold NUL; a name with one keeps its place.
    return value.replace("\x00", "\ufffd")


def _jsonable(value: Any) -> Any:
    """Tags and tokens as JSON that jsonb takes: string keys, no NaN, no NUL, no bytes.

    One value it refused would stop every batch after it, so anything
    unusual is written as text rather than refused.
    """
    if isinstance(value, Mapping):
        return {_clean(k if isinstance(k, str) else str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, bytes):
        return _clean(value.decode("utf-8", "replace"))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return _clean(str(value))


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(_jsonable(value), ensure_ascii=False, allow_nan=False)


def insert_entries(conn: Connection, entries: Sequence[LedgerEntry]) -> tuple[int, int]:
    """Insert ``entries`` in the caller's transaction: (rows inserted, conflicts).

    An entry already present with the same permit and kind is a re-delivery
    (a no-op); one present for another permit is a conflict, logged.
    """
    columns: list[list[Any]] = [[] for _ in range(11)]
    for e in entries:
        row = (
            _clean(e.scope), e.stream_id, _clean(e.permit_id), e.kind, e.time,
            date.fromisoformat(e.day), _clean(e.model), e.cost_usd, e.saved_usd,
            _json(e.tokens), _json(e.tags),
        )  # fmt: skip
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    inserted = {(r[0], r[1]) for r in conn.execute(_INSERT, columns).fetchall()}
    if len(inserted) == len(entries):
        return len(inserted), 0
    rest = [e for e in entries if (_clean(e.scope), e.stream_id) not in inserted]
    found = conn.execute(
        _ALREADY_THERE, ([_clean(e.scope) for e in rest], [e.stream_id for e in rest])
    ).fetchall()
    present = {(r[0], r[1]): (r[2], r[3]) for r in found}
    conflicts = 0
    for e in rest:
        there = present.get((_clean(e.scope), e.stream_id))
        if there is not None and there != (_clean(e.permit_id), e.kind):
            conflicts += 1
            log.error(
                "ledger entry %s of %r (permit %s, %s, $%s) has the stream ID of another "
                "row already in PostgreSQL (permit %s, %s): Redis reused a stream ID, its "
                "clock went back after it lost data. The first row is kept",
                e.stream_id, e.scope, e.permit_id, e.kind, e.cost_usd, there[0], there[1],
            )  # fmt: skip
    return len(inserted), conflicts


#: Redis failures a follower waits out: the server is away, loading, or a replica
#: for now (a failover). Any other error (auth, ACL) is a misconfiguration: raised.
_TRANSIENT = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


def _transient(exc: Exception) -> bool:
    """Whether ``follow`` should wait and try again rather than stop."""
    if isinstance(exc, LedgerStoreError):
        # Unreachable or restarting: retry. A refused statement or schema: raise.
        return isinstance(exc.__cause__, psycopg.OperationalError)
    return isinstance(exc, _TRANSIENT)


class LedgerSync:
    """One consumer of the sync group: copies ledger entries into PostgreSQL, then acks them.

    ``client`` is a Redis client (RESP2, the default) whose socket timeout
    exceeds ``block_ms``;
    ``dsn`` a PostgreSQL connection string (the schema is migrated on first
    connection). ``streams`` are the ledger streams to follow, or None for
    every one the server holds, found again every ``rescan_s`` seconds.
    Entries pending longer than ``claim_idle_s`` with another consumer are
    claimed: it died. Use :meth:`drain` (``--once``) or :meth:`follow`.
    """

    def __init__(
        self,
        client: redis.Redis,
        dsn: str,
        streams: Iterable[LedgerStream] | None = None,
        *,
        group: str = SYNC_GROUP,
        consumer: str | None = None,
        batch: int = DEFAULT_BATCH,
        block_ms: int = DEFAULT_BLOCK_MS,
        claim_idle_s: float = DEFAULT_CLAIM_IDLE_S,
        rescan_s: float = DEFAULT_RESCAN_S,
    ) -> None:
        self.client = client
        self.dsn = dsn
        self.discovering = streams is None
        self.streams: list[LedgerStream] = [] if streams is None else sorted(set(streams))
        self.group = group
        self.consumer = consumer or consumer_name()
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = round(claim_idle_s * 1000)
        self.rescan_s = rescan_s
        self.stats = SyncStats()
        self._conn: Connection | None = None
        self._grouped: set[LedgerStream] = set()
        # After a failure, this consumer's own pending entries are read again first.
        self._recover = True

    # -- PostgreSQL

    @property
    def conn(self) -> Connection:
        """The PostgreSQL connection, opened (and the schema migrated) on first use."""
        if self._conn is None or self._conn.closed:
            conn = connect(self.dsn)
            try:
                migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._grouped.clear()  # note the streams again on this connection
        return self._conn

    def close(self) -> None:
        """Close the PostgreSQL connection (the Redis client is the caller's)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- streams and their group

    def refresh_streams(self) -> list[LedgerStream]:
        """Create the group on streams new to this sync (at ID 0: backfill), note them in
        PostgreSQL; with ``streams=None``, SCAN for new ones first."""
        if self.discovering:
            self.streams = sorted(set(self.streams) | set(discover(self.client)))
        new = [s for s in self.streams if s not in self._grouped]
        if not new:
            return self.streams
        for stream in new:
            try:
                self.client.xgroup_create(stream.key, self.group, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        columns = (
            [s.key for s in new],
            [_clean(s.scope) for s in new],
            [_clean(s.slot) for s in new],
        )
        try:
            self.conn.execute(_REGISTER, columns)
        except psycopg.Error as exc:
            raise LedgerStoreError(f"PostgreSQL refused a write: {exc}") from exc
        self._grouped.update(new)
        return self.streams

    # -- one batch

    def _commit(self, rows: Mapping[LedgerStream, Sequence[Row]]) -> int:
        """Insert the rows' entries in one transaction, then XACK them: how many were acked."""
        entries: list[LedgerEntry] = []
        acks: dict[LedgerStream, list[Any]] = {}
        for stream, batch in rows.items():
            for stream_id, fields in batch:
                if fields is None:
                    # Trimmed from the stream while pending: nothing left to copy.
                    self.stats.trimmed += 1
                    acks.setdefault(stream, []).append(stream_id)
                    continue
                try:
                    entries.append(parse_entry(stream_id, fields))
                except BackendError as exc:
                    self.stats.unreadable += 1
                    log.error("ledger stream %s: %s (left pending)", stream.key, exc)
                    continue
                acks.setdefault(stream, []).append(stream_id)
        if entries:
            try:
                with self.conn.transaction():
                    inserted, conflicts = insert_entries(self.conn, entries)
            except psycopg.Error as exc:
                raise LedgerStoreError(f"PostgreSQL refused the ledger rows: {exc}") from exc
            self.stats.inserted += inserted
            self.stats.conflicts += conflicts
            self.stats.duplicates += len(entries) - inserted - conflicts
        if acks:
            pipe = self.client.pipeline(transaction=False)
            for stream, ids in acks.items():
                pipe.xack(stream.key, self.group, *ids)
            self.stats.acked += sum(int(n) for n in pipe.execute())
        return sum(len(ids) for ids in acks.values())

    def _read(self, start: str, block_ms: int | None, streams: Sequence[LedgerStream]) -> int:
        """One XREADGROUP over ``streams`` from ``start`` (``>``: new; ``0``: own pending),
        committed and acked: how many entries were acked."""
        if not streams:
            return 0
        reply: Any = self.client.xreadgroup(
            self.group,
            self.consumer,
            {s.key: start for s in streams},
            count=self.batch,
            block=block_ms,
        )
        by_key = {s.key: s for s in streams}
        rows = {by_key[text(key)]: batch for key, batch in reply or [] if batch}
        return self._commit(rows) if rows else 0

    def _own_pending(self) -> None:
        """Read again what this consumer was delivered and did not acknowledge."""
        for _ in range(self._rounds()):
            if not self._read("0", None, self.streams):
                break
        self._recover = False

    def _claim(self, stream: LedgerStream) -> None:
        """Take over entries pending with a dead consumer (idle past ``claim_idle_s``)."""
        pending = int(self.client.xpending(stream.key, self.group)["pending"])
        cursor = "0-0"
        for _ in range(pending // self.batch + 2):
            reply = self.client.xautoclaim(
                stream.key, self.group, self.consumer, self.claim_idle_ms, cursor, count=self.batch
            )
            cursor = text(reply[0])
            rows: list[Row] = list(reply[1])
            # Redis 7 also lists the IDs it dropped: pending entries trimmed away.
            self.stats.trimmed += len(reply[2]) if len(reply) > 2 else 0
            if rows:
                self.stats.claimed += len(rows)
                self._commit({stream: rows})
            if cursor == "0-0":
                return

    # -- the two ways to run

    def drain(self) -> SyncStats:
        """``--once``: sync what the streams hold now, pending entries included, and return.

        Entries pending with another consumer are claimed when idle past
        ``claim_idle_s``; new entries are read up to the last one each stream
        held when the drain began, so a busy deployment cannot keep it going.
        Errors raise (:class:`~ratelimit.errors.LedgerStoreError`, redis-py's).
        """
        self.refresh_streams()
        ends = {s: self._last_id(s) for s in self.streams}
        self._own_pending()
        for stream in self.streams:
            self._claim(stream)
        todo = [s for s in self.streams if ends[s] is not None]
        for _ in range(self._rounds()):
            if not todo:
                break
            self._read(">", None, todo)
            todo = [s for s in todo if not self._delivered(s, ends[s])]
        return self.stats

    def follow(self, stop: threading.Event) -> SyncStats:
        """Sync until ``stop`` is set: backfill, then follow new entries as they come.

        While PostgreSQL or Redis is unreachable, it logs and tries again after
        a growing pause (at most ``MAX_BACKOFF_S``); entries are acknowledged
        only once committed, so an outage loses nothing. Other errors (a
        refused statement, an ACL) raise.
        """
        backoff = FIRST_BACKOFF_S
        next_scan = next_claim = 0.0
        while not stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_scan:
                    self.refresh_streams()
                    next_scan = now + self.rescan_s
                if self._recover:
                    self._own_pending()
                if now >= next_claim:
                    for stream in self.streams:
                        self._claim(stream)
                    next_claim = now + max(1.0, self.claim_idle_ms / 2000)
                if self.streams:
                    self._read(">", self.block_ms, self.streams)
                else:
                    stop.wait(min(self.rescan_s, self.block_ms / 1000))
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning(
                    "the sync's consumer group is gone from a ledger stream (%s): Redis lost "
                    "data. Creating it again; rows already in PostgreSQL stay, and "
                    "`ratelimit restore` rebuilds the spend Redis lost",
                    exc,
                )
                self._grouped.clear()
                next_scan = 0.0
            except (LedgerStoreError, redis.exceptions.RedisError) as exc:
                if not _transient(exc):
                    raise
                log.error("ratelimit sync: %s; trying again in %.1f s", exc, backoff)
                self._recover = True
                if isinstance(exc, LedgerStoreError):
                    self.close()
                stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
            else:
                backoff = FIRST_BACKOFF_S
        return self.stats

    # -- helpers

    def _rounds(self) -> int:
        """A bound on the reads that drain the streams as they are now (each reads a batch)."""
        total = sum(int(self.client.xlen(s.key)) for s in self.streams)
        return total // self.batch + len(self.streams) + 2

    def _last_id(self, stream: LedgerStream) -> str | None:
        last = self.client.xrevrange(stream.key, count=1)
        return text(last[0][0]) if last else None

    def _delivered(self, stream: LedgerStream, end: str | None) -> bool:
        """Whether the group has delivered the entry ``end`` (or has no such stream left)."""
        if end is None:
            return True
        for info in self.client.xinfo_groups(stream.key):
            if text(info["name"]) == self.group:
                return id_order(text(info["last-delivered-id"])) >= id_order(end)
        return True
