"""What a flow yields to its shell: a script call or a plain client call.

A flow is a generator that yields these, receives each reply (or has the
shell's :class:`~ratelimit.errors.BackendError` thrown in) and returns its
result; the sync and asyncio shells differ only in how they carry them out.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

ScriptName = Literal[
    "acquire_rates",
    "settle_rates",
    "acquire",
    "settle",
    "reclaim",
    "state",
    "observe",
    "record",
    "check",
]
SCRIPT_NAMES: tuple[ScriptName, ...] = (
    "acquire_rates", "settle_rates", "acquire", "settle", "reclaim", "state", "observe", "record",
    "check",
)  # fmt: skip


#: One argument of a script call, as redis-py sends it.
ScriptArg = int | str | bytes


@dataclass(frozen=True)
class ScriptCall:
    """Which script to run, with its KEYS and ARGV."""

    script: ScriptName
    keys: list[str] | list[bytes]
    args: list[ScriptArg]


@dataclass(frozen=True)
class ClientCall:
    """A plain client command (a read of the ledger or counters), by method name."""

    method: Literal["xrange", "xrevrange", "hgetall"]
    args: tuple[object, ...]
    kwargs: dict[str, object] = field(default_factory=dict)


R = TypeVar("R")

#: A generator that yields script calls (or plain client calls), receives
#: their replies (or has the Redis error thrown in) and returns R.
Flow = Generator[ScriptCall | ClientCall, Any, R]
