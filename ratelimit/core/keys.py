"""The Redis key layout: every key of the project, named in one place.

Every key starts with :data:`KEY_PREFIX` (bumped whenever a script's storage
format changes) and carries its scope's hash tag ``{slot}``, so all keys of
the scopes that share a slot live in one Redis Cluster slot and one script
call can touch them all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

#: Every key starts with this prefix; bumped whenever a script's storage format changes.
KEY_PREFIX = "rl:v2:"

#: Channel on which the scripts publish every alert (tab-separated fields).
ALERT_CHANNEL = f"{KEY_PREFIX}alerts"


def escape_name(name: str) -> str:
    """A name made safe for a key: braces (hash-tag delimiters) and % escaped."""
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def slot_prefix(slot: str) -> str:
    """The start of every key in ``slot``: ``rl:v2:{<slot>}:``."""
    return f"{KEY_PREFIX}{{{escape_name(slot)}}}:"


@dataclass(frozen=True)
class ScopeKeys:
    """The keys of one scope (a named quota), by what they hold."""

    name: str
    slot: str

    def key(self, suffix: str) -> str:
        """``rl:v2:{<slot>}:<name>:<suffix>``."""
        return f"{slot_prefix(self.slot)}{escape_name(self.name)}:{suffix}"

    @property
    def rates(self) -> str:
        """String of the scope's rate buckets (lua/lib/rates.lua); absent = all full."""
        return self.key("r")

    @property
    def budget(self) -> str:
        """String of the scope's budget for its current period (lua/lib/budget.lua)."""
        return self.key("b")

    @property
    def permits(self) -> str:
        """Hash of the permits in flight: permit id -> record."""
        return self.key("p")

    @property
    def leases(self) -> str:
        """Sorted set of the permits in flight, scored by the end of their lease."""
        return self.key("l")

    @property
    def ledger(self) -> str:
        """Stream of the scope's settled and reclaimed permits."""
        return self.key("ledger")

    @property
    def spend(self) -> str:
        """Hash of nano-dollars settled per ``<day>|<model>``."""
        return self.key("spend")

    @property
    def alerts(self) -> str:
        """Stream of the scope's budget alerts."""
        return self.key("alerts")

    def script_keys(self, budgeted: bool) -> list[str]:
        """A scope's keys as the scripts read them (lua/lib/args.lua)."""
        if not budgeted:
            return [self.rates]
        return [self.rates, self.budget, self.ledger, self.spend, self.alerts]


def group_base(slot: str, scope_names: Sequence[str]) -> str:
    """The start of the keys of a group of scopes' permits, in one slot.

    A group's permits have their own keys: a record lists the group's scopes
    by position, which a lone limiter would misread.
    """
    digest = hashlib.sha1("\0".join(scope_names).encode()).hexdigest()[:16]
    return f"{slot_prefix(slot)}group:{digest}"
