"""The ledger streams of a deployment: found by SCAN, or named by scope and slot.

Every budgeted scope writes its ledger to ``rl:v2:{<slot>}:<name>:ledger``
(see :class:`ratelimit.core.keys.ScopeKeys`). ``ratelimit sync --all`` finds
them by SCAN; a scope named on the command line is ``slot`` = its name unless
``--slot`` says otherwise; the sync's group and its defaults are named here
too. This module reads Redis only: it works without the
``postgres`` extra (``ratelimit doctor`` uses it through :mod:`.lag`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ratelimit.backend import SyncClient
from ratelimit.core.keys import KEY_PREFIX, ScopeKeys
from ratelimit.deployment.keys import ScopeKey, parse_key

#: The consumer group every ``ratelimit sync`` joins, on every ledger stream.
SYNC_GROUP = "ratelimit-sync"

# How a sync reads the streams by default (the options of ``ratelimit sync``).
#: Entries read (and inserted in one transaction) at a time, per stream.
DEFAULT_BATCH = 500
#: How long one XREADGROUP waits for new entries, in milliseconds.
DEFAULT_BLOCK_MS = 1000
#: Entries pending this long (seconds) with a consumer are taken over: it died.
DEFAULT_CLAIM_IDLE_S = 60.0
#: With every stream (``--all``), SCAN for new scopes this often, in seconds: a new
#: scope's entries wait at most this long, and none is missed (read from ID 0).
DEFAULT_RESCAN_S = 30.0

LEDGER_SUFFIX = ":ledger"
#: SCAN pattern of every ledger stream (its type is checked too).
LEDGER_PATTERN = f"{KEY_PREFIX}*{LEDGER_SUFFIX}"
#: Keys asked for per SCAN step.
SCAN_COUNT = 1000


@dataclass(frozen=True, order=True)
class LedgerStream:
    """One scope's ledger stream: the scope's name and its hash tag (slot)."""

    scope: str
    slot: str

    @property
    def keys(self) -> ScopeKeys:
        """All the scope's keys."""
        return ScopeKeys(self.scope, self.slot)

    @property
    def key(self) -> str:
        """The stream's key, ``rl:v2:{<slot>}:<name>:ledger``."""
        return self.keys.ledger


def id_order(stream_id: str) -> tuple[int, int]:
    """A stream ID as (milliseconds, sequence), to compare IDs in the server's order."""
    millis, _, sequence = stream_id.partition("-")
    return int(millis), int(sequence or 0)


def parse_ledger_key(key: str | bytes) -> LedgerStream | None:
    """The scope of a ledger stream's key, or None for a key that is not one."""
    found = parse_key(key)
    if isinstance(found, ScopeKey) and found.kind == "ledger":
        return LedgerStream(found.name, found.slot)
    return None


def discover(client: SyncClient) -> list[LedgerStream]:
    """Every ledger stream the server holds, sorted by scope and slot (SCAN, not KEYS)."""
    found = {
        stream
        for key in client.scan_iter(match=LEDGER_PATTERN, count=SCAN_COUNT, _type="stream")
        if (stream := parse_ledger_key(key)) is not None
    }
    return sorted(found)


def named(scopes: Iterable[str], slot: str | None = None) -> list[LedgerStream]:
    """The ledger streams of these scope names, in ``slot`` (default: each its own name)."""
    return [LedgerStream(scope, scope if slot is None else slot) for scope in scopes]
