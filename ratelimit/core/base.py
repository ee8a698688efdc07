"""The I/O-free half of a limiter or group, shared by the sync and asyncio shells."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from ratelimit.core.entries import UsagePricer
from ratelimit.core.keys import ALERT_CHANNEL
from ratelimit.core.quick import QuickPlan
from ratelimit.core.results import Alert
from ratelimit.core.scope import ScopeSpec
from ratelimit.core.settings import Rate
from ratelimit.errors import InvalidArgument

AlertCallback = Callable[[Alert], object]


def clock_us() -> int:
    """This machine's clock in microseconds.

    Used only to choose which budget periods to send with a first call; the
    scripts place every call by Redis TIME and ask again when it differs.
    """
    return time.time_ns() // 1000  # client-clock-ok: picks periods to send, Redis TIME decides


class LimiterBase:
    """What a limiter (one scope) or a group (several) holds, before any I/O.

    ``_pricer`` prices a settle's ``usage``; a shell that knows a default
    price table overrides :meth:`_default_pricer`.
    """

    _scope: ScopeSpec
    _plan: QuickPlan
    _alert_handlers: dict[str, AlertCallback | None]
    _pricer: UsagePricer | None

    def _configure(
        self,
        name: object,
        dimensions: Mapping[str, object],
        *,
        slot: object,
        lease_s: object,
        on_redis_error: object,
        retention: object,
        on_alert: AlertCallback | None,
        pricer: UsagePricer | None,
    ) -> None:
        self._scope = ScopeSpec.build(
            name,
            dimensions,
            slot=slot,
            lease_s=lease_s,
            on_redis_error=on_redis_error,
            retention=retention,
        )
        self._plan = QuickPlan([self._scope])
        self._alert_handlers = {self._scope.name: on_alert}
        self._pricer = pricer

    def _configure_group(self, members: Sequence[LimiterBase]) -> None:
        if not members:
            raise InvalidArgument("a LimiterGroup needs at least one Limiter")
        self._plan = QuickPlan([member._scope for member in members])
        self._alert_handlers = {}
        for member in members:
            self._alert_handlers.update(member._alert_handlers)
        self._pricer = members[0]._pricer

    def _pricing(self) -> UsagePricer:
        """The pricer of a settle's ``usage``, made on first use."""
        if self._pricer is None:
            self._pricer = self._default_pricer()
        return self._pricer

    def _default_pricer(self) -> UsagePricer:
        raise InvalidArgument("pricing a usage needs a pricing= table")

    def _check_call(self) -> tuple[list[str], list[str]]:
        """The KEYS and ARGV of lua/check.lua, for this limiter's first scope."""
        keys = self._plan.scopes[0].keys
        return [
            keys.rates, keys.budget, keys.permits, keys.leases,
            keys.ledger, keys.spend, keys.alerts, keys.key("x:check"),
        ], [ALERT_CHANNEL]  # fmt: skip

    @property
    def name(self) -> str:
        """The scope's name (its name in the ledger and in alerts)."""
        return self._scope.name

    @property
    def rates(self) -> dict[str, Rate]:
        """Each rate dimension's rate."""
        return {dim.name: dim.rate for dim in self._scope.rates}
