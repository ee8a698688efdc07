"""The asyncio client: the same names and behaviour as :mod:`ratelimit`, awaitable.

``ratelimit.asyncio.Limiter`` mirrors ``ratelimit.Limiter`` as
``redis.asyncio`` mirrors ``redis``: switching is one import.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions
from redis.commands.core import AsyncScript

from ratelimit import _core, _scripts
from ratelimit._core import DimensionState, Rate, ScriptCall, Settlement
from ratelimit.errors import AcquireTimeout, RedisUnavailable
from ratelimit.limiter import URL_SOCKET_TIMEOUT_S

__all__ = ["AsyncClient", "Limiter", "Permit", "connect"]

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def connect(url: str) -> redis.asyncio.Redis:
    """An asyncio client for ``url`` with the short socket timeouts a limiter wants."""
    return redis.asyncio.Redis.from_url(
        url, socket_timeout=URL_SOCKET_TIMEOUT_S, socket_connect_timeout=URL_SOCKET_TIMEOUT_S
    )


class Limiter:
    """Asyncio twin of :class:`ratelimit.Limiter`; see there for every argument."""

    def __init__(
        self,
        client: AsyncClient | str,
        name: str,
        *,
        on_redis_error: _core.OnRedisError = "raise",
        lease_s: float = _core.DEFAULT_LEASE_S,
        slot: str | None = None,
        **dimensions: Rate,
    ) -> None:
        self._spec = _core.QuotaSpec.build(
            name, dimensions, slot=slot, lease_s=lease_s, on_redis_error=on_redis_error
        )
        self.client: AsyncClient = connect(client) if isinstance(client, str) else client
        self._scripts: dict[str, AsyncScript] = {
            script: self.client.register_script(_scripts.source(script))
            for script in _scripts.SCRIPT_NAMES
        }

    @property
    def name(self) -> str:
        """The quota's name."""
        return self._spec.name

    @property
    def rates(self) -> dict[str, Rate]:
        """Each dimension's rate."""
        return {dim.name: dim.rate for dim in self._spec.dimensions}

    async def _run(self, call: ScriptCall) -> Any:
        try:
            return await self._scripts[call.script](keys=call.keys, args=call.args)
        except redis.exceptions.RedisError as exc:
            raise _core.backend_error(exc) from exc

    async def _book(
        self, costs: Mapping[str, object], timeout_s: object
    ) -> Permit | AcquireTimeout:
        call, reserved, permit_id = self._spec.acquire_call(costs, timeout_s)
        try:
            grant = self._spec.parse_acquire(await self._run(call))
        except RedisUnavailable as exc:
            grant = self._spec.when_unavailable(exc)
        if not grant.admitted:
            return self._spec.timeout_error(grant, timeout_s)
        return Permit(self, _core.PermitData.from_grant(permit_id, reserved, grant))

    async def try_acquire(self, **costs: object) -> Permit | None:
        """A permit if every dimension can pay ``costs`` right now, else None; never waits."""
        outcome = await self._book(costs, 0)
        return outcome if isinstance(outcome, Permit) else None

    async def acquire(self, timeout: float | None = None, **costs: object) -> Permit:
        """Wait for a permit for ``costs``; see :meth:`ratelimit.Limiter.acquire`.

        A task cancelled while in line returns its booking before the
        ``CancelledError`` propagates.
        """
        outcome = await self._book(costs, timeout)
        if isinstance(outcome, AcquireTimeout):
            raise outcome
        if outcome.wait_s > 0:
            try:
                await asyncio.sleep(outcome.wait_s)
            except BaseException:
                await asyncio.shield(outcome.cancel())
                raise
        return outcome

    async def settle(self, permit_id: str, **actual: object) -> Settlement:
        """Settle a permit by id (from any process): see :meth:`Permit.settle`."""
        return self._spec.parse_settle(await self._run(self._spec.settle_call(permit_id, actual)))

    async def cancel(self, permit_id: str) -> Settlement:
        """Return everything a permit took, by id: see :meth:`Permit.cancel`."""
        return self._spec.parse_settle(await self._run(self._spec.cancel_call(permit_id)))

    async def state(self) -> dict[str, DimensionState]:
        """Each dimension's bucket now, as Redis sees it."""
        return self._spec.parse_state(await self._run(self._spec.state_call()))


class Permit(_core.PermitData):
    """Asyncio twin of :class:`ratelimit.Permit`: ``await permit.settle(...)``."""

    def __init__(self, limiter: Limiter, data: _core.PermitData) -> None:
        super().__init__(**vars(data))
        self.limiter = limiter

    async def settle(self, **actual: object) -> Settlement:
        """Charge what the call really used, once; see :meth:`ratelimit.Permit.settle`."""
        if self.backed:
            self.settlement = await self.limiter.settle(self.id, **actual)
        else:
            self.settlement = Settlement("unbacked")
        return self.settlement

    async def cancel(self) -> Settlement:
        """Give back everything the permit took (the call never went out), also in line."""
        if self.backed:
            self.settlement = await self.limiter.cancel(self.id)
        else:
            self.settlement = Settlement("unbacked")
        return self.settlement

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.settlement is None:
            try:
                await self.cancel()
            except Exception:
                _core.log.exception("could not cancel permit %s of %r", self.id, self.limiter.name)
