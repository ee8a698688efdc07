"""The scopes one script call checks together, and what a permit carries.

Scopes that share a slot form one :class:`Part`, checked and debited by one
script call. A part with a budget is *remembered*: Redis keeps its permits
(reservation, lease, ledger labels) so a crashed worker's reservation is
reclaimed and charged. A part without one is *lean*: Redis keeps only its
buckets, and the permit itself carries what a settle needs, its admission
time and reservation, in its id (:class:`PermitRef`), so a permit that is
never settled leaves nothing behind once its buckets have refilled.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from ratelimit.core.calls import ScriptArg
from ratelimit.core.keys import group_base
from ratelimit.core.scope import ScopeSpec
from ratelimit.errors import InvalidArgument


@dataclass(frozen=True)
class Part:
    """The scopes of one hash slot, checked by one script call, and their permit keys."""

    scopes: tuple[ScopeSpec, ...]
    permits_key: str
    leases_key: str
    marker_prefix: str
    """Start of a lean permit's settle-marker key (the permit's nonce follows)."""

    @classmethod
    def of(cls, slot: str, members: Sequence[ScopeSpec], group: Sequence[str] | None) -> Part:
        """The part of ``members`` (scopes of ``slot``); ``group``: all scope names of a group."""
        if group is None:
            keys = members[0].keys
            return cls(tuple(members), keys.permits, keys.leases, keys.key("x:"))
        base = group_base(slot, group)
        return cls(tuple(members), f"{base}:p", f"{base}:l", f"{base}:x:")

    @cached_property
    def budgeted(self) -> bool:
        """Whether a scope here has a budget (its permits are remembered in Redis)."""
        return any(scope.budget is not None for scope in self.scopes)

    @cached_property
    def _keys(self) -> tuple[str, ...]:
        head = (self.permits_key, self.leases_key) if self.budgeted else ()
        return head + tuple(
            key for scope in self.scopes for key in scope.keys.script_keys(scope.budget is not None)
        )

    def keys(self) -> list[str]:
        """The KEYS of a script call (lua/lib/args.lua); permits and leases first when budgeted."""
        return list(self._keys)

    @cached_property
    def lean_keys(self) -> list[bytes]:
        """A lean part's KEYS, encoded once (never changed by a caller)."""
        return [key.encode() for key in self._keys]

    @cached_property
    def _lean_block(self) -> tuple[list[ScriptArg], list[tuple[int, str]]]:
        """A lean part's block with its amounts left out, and where each one goes.

        The fixed arguments are encoded once: the client then packs them as
        they are, call after call.
        """
        args: list[ScriptArg] = [b"%d" % len(self.scopes)]
        slots: list[tuple[int, str]] = []
        for scope in self.scopes:
            args += [scope.name.encode(), b"%d" % len(scope.rates)]
            for d in scope.rates:
                args += [d.name.encode(), d.setting.encode()]
                slots.append((len(args), d.name))
                args.append(b"0")
            args.append(b"0")
        return args, slots

    def block(
        self,
        amounts: Mapping[str, int],
        instant_us: int = 0,
        floors: Mapping[str, tuple[str, int]] | None = None,
    ) -> list[ScriptArg]:
        """The scope block of a script's ARGV (lua/lib/args.lua).

        ``instant_us`` (an estimate of Redis time) places the budget periods,
        and ``floors`` holds the spend this process has seen per budgeted
        scope, by period label; a lean part needs neither.
        """
        if not self.budgeted:
            template, slots = self._lean_block
            args = template.copy()
            for at, name in slots:
                args[at] = amounts.get(name, 0)
            return args
        kept = self._kept[0]
        if kept is None or not kept.valid_from <= instant_us < kept.valid_to:
            kept = self._kept[0] = self._template(instant_us)
        return kept.fill(amounts, floors or {})

    @cached_property
    def _kept(self) -> list[_Template | None]:
        """The budgeted block of the latest period sent (most calls fall in it again)."""
        return [None]

    def _template(self, instant_us: int) -> _Template:
        args: list[ScriptArg] = [len(self.scopes)]
        amounts: list[tuple[int, str]] = []
        floors: list[tuple[int, str, str]] = []
        valid_from, valid_to = -(2**63), 2**63
        for scope in self.scopes:
            t = scope.template(instant_us)
            amounts += [(len(args) + at, name) for at, name in t.amounts]
            if t.floor_at is not None:
                floors.append((len(args) + t.floor_at, scope.name, t.label))
            valid_from, valid_to = max(valid_from, t.valid_from), min(valid_to, t.valid_to)
            args += t.args
        return _Template(args, amounts, floors, valid_from, valid_to)


@dataclass(frozen=True)
class _Template:
    """A budgeted part's scope blocks with their amounts and floors left out,
    valid while the instant sent lies in [valid_from, valid_to)."""

    args: list[ScriptArg]
    amounts: list[tuple[int, str]]
    floors: list[tuple[int, str, str]]
    """Where each budget's floor goes: (position, scope name, period label)."""
    valid_from: int
    valid_to: int

    def fill(
        self, amounts: Mapping[str, int], floors: Mapping[str, tuple[str, int]]
    ) -> list[ScriptArg]:
        args = self.args.copy()
        for at, name in self.amounts:
            args[at] = amounts.get(name, 0)
        for at, scope, label in self.floors:
            seen = floors.get(scope)
            if seen is not None and seen[0] == label:
                args[at] = seen[1]
        return args


class _Nonces:
    """Permit nonces: a random prefix per process and a counter, unique without a syscall."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


new_nonce = _Nonces().next


@dataclass(frozen=True)
class PermitRef:
    """What a permit's id carries: a nonce, each part's admission time and the reservation.

    The id reads ``<nonce>.<admit_us>[,<admit_us>...].<amount>[,<amount>...]``
    (hexadecimal): the admission time (Redis microseconds) in each lean part,
    and the reserved micro-units of each rate dimension in the plan's order.
    Any process that builds the same limiter can settle a permit by its id.
    """

    nonce: str
    admits_us: tuple[int, ...]
    reserved_micro: tuple[int, ...]

    def encode(self) -> str:
        """The permit id."""
        admits = ",".join(f"{a:x}" for a in self.admits_us)
        return f"{self.nonce}.{admits}.{','.join(f'{r:x}' for r in self.reserved_micro)}"

    @classmethod
    def decode(cls, permit_id: str, parts: int, dimensions: int) -> PermitRef:
        """A permit id read back (``parts``: how many lean parts admitted it)."""
        try:
            nonce, admits, reserved = permit_id.split(".")
            ref = cls(
                nonce,
                tuple(int(a, 16) for a in admits.split(",")) if admits else (),
                tuple(int(r, 16) for r in reserved.split(",")) if reserved else (),
            )
        except ValueError:
            raise InvalidArgument(f"{permit_id!r} is not a permit id") from None
        if not nonce or len(ref.admits_us) != parts or len(ref.reserved_micro) != dimensions:
            raise InvalidArgument(f"permit {permit_id!r} was not admitted by this limiter")
        return ref
