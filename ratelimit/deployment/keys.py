"""Key names read back: which scope (or group of scopes) a key found by SCAN belongs to.

The inverse of :mod:`ratelimit.core.keys`: ``rl:v2:{<slot>}:<name>:<suffix>``
names a scope's key, ``rl:v2:{<slot>}:group:<digest>:<suffix>`` a group's
permits. Names and slots are unescaped (``%7B`` is ``{``), so a scope is
known by the name its limiters were built with.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ratelimit.core.keys import KEY_PREFIX, group_base, slot_prefix

#: Every key of the project matches this SCAN pattern.
SCAN_PATTERN = f"{KEY_PREFIX}*"

#: The suffixes of a scope's keys (see ScopeKeys), by what they hold.
SCOPE_SUFFIXES = frozenset({"r", "b", "p", "l", "ledger", "spend", "alerts"})

_SLOTTED = re.compile(rf"^{re.escape(KEY_PREFIX)}\{{([^}}]*)\}}:(.*)$", re.DOTALL)
_GROUP = re.compile(r"^group:([0-9a-f]{16}):(p|l|x:.*)$", re.DOTALL)
# A rate-only permit's settle marker: its nonce is a 16-hex-digit process
# prefix and a hexadecimal counter (ratelimit.core.part).
_MARKER = re.compile(r"^(.*):x:[0-9a-f]{17,}$", re.DOTALL)
_SUFFIX = re.compile(r"^(.*):([a-z]+)$", re.DOTALL)
_ESCAPE = re.compile(r"%(25|7B|7D)")
_UNESCAPED = {"25": "%", "7B": "{", "7D": "}"}

#: A group's digest is matched against ordered choices of this many scopes at most.
MAX_GROUP_SIZE = 4
#: ... and against at most this many choices, so an unmatched digest costs little.
MAX_GROUP_TRIES = 20_000


def unescape_name(escaped: str) -> str:
    """A name as its limiter spelled it (the inverse of ``escape_name``)."""
    return _ESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], escaped)


@dataclass(frozen=True)
class ScopeKey:
    """A key of a scope: its slot, its name and what the key holds (``"r"``, ``"x"``...)."""

    slot: str
    name: str
    kind: str


@dataclass(frozen=True)
class GroupKey:
    """A key of a group's permits (``"p"``, ``"l"`` or a settle marker ``"x"``)."""

    slot: str
    digest: str
    kind: str


def parse_key(key: str | bytes) -> ScopeKey | GroupKey | None:
    """What a key found under :data:`SCAN_PATTERN` belongs to; None for a key of no scope."""
    text = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
    slotted = _SLOTTED.match(text)
    if slotted is None:
        return None
    slot, rest = unescape_name(slotted.group(1)), slotted.group(2)
    group = _GROUP.match(rest)
    if group is not None:
        return GroupKey(slot, group.group(1), group.group(2)[0])
    marker = _MARKER.match(rest)
    if marker is not None:
        return ScopeKey(slot, unescape_name(marker.group(1)), "x")
    suffixed = _SUFFIX.match(rest)
    if suffixed is None or suffixed.group(2) not in SCOPE_SUFFIXES:
        return None
    return ScopeKey(slot, unescape_name(suffixed.group(1)), suffixed.group(2))


def group_members(
    slot: str, digest: str, candidates: Sequence[tuple[str, str]]
) -> tuple[tuple[str, str], ...] | None:
    """The scopes of a group, as ``(slot, name)`` in the group's order; None when not found.

    ``candidates`` are the known scopes as ``(slot, name)``. A group's
    digest hashes the names of all its scopes, in every slot, and its
    permits in ``slot`` name its scopes of that slot by position; so the
    digest is matched against ordered choices of up to
    :data:`MAX_GROUP_SIZE` candidates, those of ``slot`` first (a wrapped
    client's family and budget share one), at most
    :data:`MAX_GROUP_TRIES` of them.
    """
    base = f"{slot_prefix(slot)}group:{digest}"
    local = [c for c in candidates if c[0] == slot]
    pools = [local] + ([list(candidates)] if len(candidates) > len(local) else [])
    tries = 0
    for pool in pools:
        for size in range(2, min(MAX_GROUP_SIZE, len(pool)) + 1):
            for chosen in itertools.permutations(pool, size):
                if not any(s == slot for s, _ in chosen):
                    continue
                tries += 1
                if tries > MAX_GROUP_TRIES:
                    return None
                if group_base(slot, [name for _, name in chosen]) == base:
                    return chosen
    return None
