"""The limiters a wrapped client books against: one per ``limits`` family, and the budget.

A :class:`Guard` (for ``anthropic.Anthropic``) or an :class:`AsyncGuard` (for
``anthropic.AsyncAnthropic``) builds one limiter per ``limits`` entry, named
``f"{name}:{family}"``, and with a budget one more, ``f"{name}:budget"``, all
in one slot, so a family's limiter and the budget are checked by one script
call. It finds the family that governs a model, and reads every family's
bucket levels at once for a routing policy. A wrapped client and its
``with_options`` copies share one guard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ratelimit import asyncio as rl_asyncio
from ratelimit.anthropic.cache import AsyncResponseCache, ResponseCache
from ratelimit.anthropic.config import WrapConfig
from ratelimit.anthropic.routing import ModelPolicy
from ratelimit.core.results import LimiterState
from ratelimit.limiter import Limiter, LimiterGroup, SyncClient

ClientT = TypeVar("ClientT")
CacheT = TypeVar("CacheT")
LimiterT = TypeVar("LimiterT")
GroupT = TypeVar("GroupT")


class FamilyLimiters(Generic[ClientT, CacheT, LimiterT, GroupT]):
    """A guard's limiters by family, built and looked up the same way for both clients."""

    def __init__(
        self,
        config: WrapConfig,
        redis_client: ClientT,
        cache: CacheT | None = None,
        *,
        owns_redis: bool = False,
    ) -> None:
        self.config = config
        self.redis = redis_client
        """The Redis client of every limiter here."""
        self._owns_redis = owns_redis
        self.cache = cache
        """The response cache, or None."""
        self.policy: ModelPolicy | None = config.policy
        """The routing policy, or None (a call goes to the model it names)."""
        self.budget: LimiterT | None = None
        """The budget's limiter (ledger, spend, alerts), or None without a budget."""
        if config.budget is not None:
            self.budget = self._new_limiter(
                redis_client,
                config.budget_name,
                slot=config.name,
                lease_s=config.lease_s,
                on_alert=config.on_alert,
                pricing=config.pricing,
                usd=config.budget,
            )
        self._limiters: dict[str, LimiterT] = {}
        self._admissions: dict[str, LimiterT | GroupT] = {}
        for family, rates in config.limits.items():
            dimensions: dict[str, Any] = dict(rates)
            limiter = self._new_limiter(
                redis_client,
                config.scope_name(family),
                slot=config.name,
                lease_s=config.lease_s,
                pricing=config.pricing,
                **dimensions,
            )
            self._limiters[family] = limiter
            self._admissions[family] = (
                limiter if self.budget is None else self._new_group(limiter, self.budget)
            )
        # Every family in one slot: their levels come back from one script call.
        self._all = self._new_group(*self._limiters.values())

    def family(self, model: str) -> str:
        """The ``limits`` key governing ``model`` (raises :class:`NoQuotaForModel`)."""
        return self.config.family(model)

    def limiter(self, model: str) -> LimiterT:
        """The rate limiter of ``model``'s family (a model ID or a ``limits`` key)."""
        key = model if model in self._limiters else self.family(model)
        return self._limiters[key]

    def admission(self, model: str) -> LimiterT | GroupT:
        """What admission books for ``model``: its family's limiter, grouped with the budget.

        ``model`` is a model ID or a ``limits`` key; without a budget this is
        :meth:`limiter`.
        """
        key = model if model in self._admissions else self.family(model)
        return self._admissions[key]

    def _levels(self, state: LimiterState) -> dict[str, dict[str, float]]:
        """Bucket levels by family and dimension, from the state of every family's limiter."""
        grouped = len(self._limiters) > 1
        levels: dict[str, dict[str, float]] = {}
        for family, rates in self.config.limits.items():
            prefix = f"{self.config.scope_name(family)}." if grouped else ""
            levels[family] = {dim: state.rate(prefix + dim).available for dim in rates}
        return levels

    def _new_limiter(self, *args: Any, **kwargs: Any) -> LimiterT:
        raise NotImplementedError

    def _new_group(self, *limiters: LimiterT) -> GroupT:
        raise NotImplementedError


class Guard(FamilyLimiters[SyncClient, ResponseCache, Limiter, LimiterGroup]):
    """The limiters a wrapped ``Anthropic`` client books against, shared by its copies.

    One :class:`~ratelimit.Limiter` per ``limits`` entry, named
    ``f"{name}:{family}"``, and with a budget one more, ``f"{name}:budget"``; all
    in one slot, so a family and the budget are checked by one script call.
    """

    def _new_limiter(self, *args: Any, **kwargs: Any) -> Limiter:
        return Limiter(*args, **kwargs)

    def _new_group(self, *limiters: Limiter) -> LimiterGroup:
        return LimiterGroup(*limiters)

    def levels(self) -> dict[str, dict[str, float]]:
        """Each family's bucket levels now, in units, by dimension (one script call)."""
        return self._levels(self._all.state())

    def level_reader(self) -> Callable[[], dict[str, dict[str, float]]]:
        """``levels``, read on the first call only (a policy may never ask)."""
        levels: dict[str, dict[str, float]] = {}

        def read() -> dict[str, dict[str, float]]:
            if not levels:
                levels.update(self.levels())
            return levels

        return read

    def close(self) -> None:
        """Close the Redis client if ``wrap`` made it from a URL (else it is the caller's)."""
        if self._owns_redis:
            self.redis.close()


class AsyncGuard(
    FamilyLimiters[
        rl_asyncio.AsyncClient, AsyncResponseCache, rl_asyncio.Limiter, rl_asyncio.LimiterGroup
    ]
):
    """The asyncio twin of :class:`Guard`, on :mod:`ratelimit.asyncio` limiters."""

    def _new_limiter(self, *args: Any, **kwargs: Any) -> rl_asyncio.Limiter:
        return rl_asyncio.Limiter(*args, **kwargs)

    def _new_group(self, *limiters: rl_asyncio.Limiter) -> rl_asyncio.LimiterGroup:
        return rl_asyncio.LimiterGroup(*limiters)

    async def levels(self) -> dict[str, dict[str, float]]:
        """Each family's bucket levels now, in units, by dimension (one script call)."""
        return self._levels(await self._all.state())

    async def level_reader(self) -> Callable[[], dict[str, dict[str, float]]]:
        """``levels``, read now: a policy's ``can_admit`` is synchronous."""
        levels = await self.levels()
        return lambda: levels

    async def close(self) -> None:
        """Close the Redis client if ``wrap`` made it from a URL (else it is the caller's)."""
        if self._owns_redis:
            await self.redis.aclose()
