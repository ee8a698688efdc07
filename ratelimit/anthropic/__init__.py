"""Claude API calls through the shared limiter and budget: wrap an ``anthropic`` client.

>>> import anthropic
>>> from ratelimit import Budget, Rate
>>> from ratelimit.anthropic import wrap
>>> client = wrap(anthropic.Anthropic(), "redis://localhost:6379/0",
...               limits={"claude-sonnet-4": {"requests": Rate(4000, per=60),
...                                           "input_tokens": Rate(2_000_000, per=60),
...                                           "output_tokens": Rate(400_000, per=60)}},
...               budget=Budget(50, per="day"))                     # doctest: +SKIP
>>> message = client.messages.create(model="claude-sonnet-4-6", max_tokens=1024,
...                                  messages=[{"role": "user", "content": "Hi"}])  # doctest: +SKIP

``client.messages.create`` (streamed or not), ``client.messages.stream`` and
``client.messages.parse`` keep the SDK's signatures and return types; each call

1. estimates its input tokens (:func:`estimate_input_tokens`, or exactly with
   ``messages.count_tokens`` when ``estimate="count_tokens"``), reserves its
   ``max_tokens`` of output and, with a budget, its worst-case cost
   (:meth:`~ratelimit.Pricing.max_cost`), in one script call for the limiter of
   the model's family and the budget together;
2. sends the request with the SDK's own retries off, so that every retry goes
   through the limiter too;
3. settles with the real usage: input as the API counts it for its input-token
   limit (``input_tokens + cache_creation_input_tokens``; cache reads are free),
   output as generated, and the priced cost in the budget's ledger;
4. reads the ``anthropic-ratelimit-*-remaining`` headers of every response and
   lowers the shared buckets to them when the provider has less left than we
   think (another client spends the same account). A 429 holds every process
   back for its ``retry-after`` before this one tries again.

With a ``cache`` (:class:`~ratelimit.anthropic.cache.ResponseCache`), a repeated
deterministic request is answered from Redis without touching the limiter or
the API, and the budget's ledger records what it saved. With a ``policy``
(:class:`~ratelimit.anthropic.routing.ModelPolicy`), the call goes to the first of the
policy's models whose limiter admits it within ``policy.max_wait_s``.

Everything else (``client.models``, ``client.messages.count_tokens``,
``client.messages.batches``, ``with_raw_response``...) is the real client's,
unmetered. ``client.with_options(...)`` returns a wrapped copy under the same
limits.

This package needs the ``anthropic`` extra (``pip install 'llm-quota-guard[anthropic]'``);
``import ratelimit`` does not import it. Its modules, in the order a call
meets them:

- :mod:`~ratelimit.anthropic.config`: ``wrap``'s options and their validated form;
- :mod:`~ratelimit.anthropic.estimate`: a call's request read once, its input estimated;
- :mod:`~ratelimit.anthropic.routing`: which model a call goes to (policies);
- :mod:`~ratelimit.anthropic.cache`: the opt-in response cache;
- :mod:`~ratelimit.anthropic.guard`: the limiters a client books against, by family;
- :mod:`~ratelimit.anthropic.retry`: retries, and what the provider's headers say;
- :mod:`~ratelimit.anthropic.usage`: what a response used;
- :mod:`~ratelimit.anthropic.effects`: the effect engine and its two runners;
- :mod:`~ratelimit.anthropic.flows`: the call flows, written once;
- :mod:`~ratelimit.anthropic.wrapped`, :mod:`~ratelimit.anthropic.sync_client`,
  :mod:`~ratelimit.anthropic.async_client`: the wrapped clients.

The pauses between attempts are :data:`ratelimit.anthropic.retry.RETRY_INITIAL_S`
and :data:`~ratelimit.anthropic.retry.RETRY_MAX_S`.
"""

from __future__ import annotations

from typing import Any, Unpack, overload

try:
    import anthropic
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "ratelimit.anthropic needs the anthropic SDK: pip install 'llm-quota-guard[anthropic]'"
    ) from exc

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from ratelimit import asyncio as rl_asyncio
from ratelimit.anthropic.async_client import (
    AsyncLimitedAnthropic,
    AsyncLimitedMessages,
)
from ratelimit.anthropic.cache import AsyncResponseCache, ResponseCache
from ratelimit.anthropic.config import DIMENSIONS, Estimate, Limits, WrapConfig, WrapOptions
from ratelimit.anthropic.estimate import (
    BYTES_PER_TOKEN,
    DOCUMENT_TOKENS,
    IMAGE_TOKENS,
    MESSAGE_TOKENS,
    TOOL_USE_SYSTEM_TOKENS,
    estimate_input_tokens,
)
from ratelimit.anthropic.guard import AsyncGuard, Guard
from ratelimit.anthropic.sync_client import LimitedAnthropic, LimitedMessages
from ratelimit.backend import connect
from ratelimit.errors import InvalidArgumentType, NoQuotaForModel
from ratelimit.limiter import SyncClient

__all__ = [
    "BYTES_PER_TOKEN",
    "DIMENSIONS",
    "DOCUMENT_TOKENS",
    "IMAGE_TOKENS",
    "MESSAGE_TOKENS",
    "TOOL_USE_SYSTEM_TOKENS",
    "AsyncGuard",
    "AsyncLimitedAnthropic",
    "AsyncLimitedMessages",
    "Estimate",
    "Guard",
    "LimitedAnthropic",
    "LimitedMessages",
    "Limits",
    "NoQuotaForModel",
    "WrapOptions",
    "estimate_input_tokens",
    "wrap",
]


@overload
def wrap(
    client: anthropic.AsyncAnthropic,
    redis: rl_asyncio.AsyncClient | str,
    **options: Unpack[WrapOptions[AsyncResponseCache]],
) -> AsyncLimitedAnthropic: ...


@overload
def wrap(
    client: anthropic.Anthropic,
    redis: SyncClient | str,
    **options: Unpack[WrapOptions[ResponseCache]],
) -> LimitedAnthropic: ...


def wrap(
    client: anthropic.Anthropic | anthropic.AsyncAnthropic,
    redis: Any,
    **options: Unpack[WrapOptions[Any]],
) -> LimitedAnthropic | AsyncLimitedAnthropic:
    """``client`` with its Messages calls limited by shared limiters in Redis.

    ``client``: an ``anthropic.Anthropic`` (then ``redis`` is a ``redis.Redis``,
    a ``RedisCluster`` or a URL) or an ``anthropic.AsyncAnthropic`` (then a
    ``redis.asyncio`` client or a URL).

    ``limits`` maps a model ID or a family prefix (``"claude-sonnet-4"`` covers
    ``"claude-sonnet-4-6"``) to its rates, ``{"requests": Rate(...),
    "input_tokens": Rate(...), "output_tokens": Rate(...)}`` (any subset). The
    longest matching prefix wins, ``"*"`` catches every other model, and a
    model that matches nothing raises :class:`NoQuotaForModel`. Models of one
    entry share one limiter, the scope ``f"{name}:{key}"``. Give each the
    provider's rate with a burst a little under the provider's (say 50 ms of
    refill less): a request reaches the provider a moment after it is admitted
    here, and a provider bucket that is full in that moment cannot bank its
    refill, while this one does.

    ``budget``: a :class:`~ratelimit.Budget` (the scope ``f"{name}:budget"``)
    charged each call's priced cost, from ``pricing`` (default: the packaged
    table). ``cache``: a :class:`~ratelimit.anthropic.cache.ResponseCache` (async:
    ``AsyncResponseCache``) answering repeated deterministic requests.
    ``policy``: a :class:`~ratelimit.anthropic.routing.ModelPolicy` choosing the model.
    ``estimate``: ``"local"`` (:func:`estimate_input_tokens`) or
    ``"count_tokens"`` (exact, one more API call). ``max_attempts``: attempts
    per call, each through the limiter. ``lease_s``: seconds a call may run
    before its reservation is reclaimed. ``acquire_timeout``: seconds a call
    may wait for admission (None: as long as it takes) before
    :class:`~ratelimit.errors.AcquireTimeout`. ``on_alert``: called with each
    budget :class:`~ratelimit.Alert`. The options are :class:`WrapOptions`;
    every one but ``limits`` has a default.
    """
    config = WrapConfig.build(options)
    cache = options.get("cache")
    owns_redis = isinstance(redis, str)
    if isinstance(client, anthropic.AsyncAnthropic):
        if cache is not None and not isinstance(cache, AsyncResponseCache):
            raise InvalidArgumentType("an AsyncAnthropic client needs an AsyncResponseCache")
        guard = AsyncGuard(config, _async_redis(redis), cache, owns_redis=owns_redis)
        return AsyncLimitedAnthropic(client, guard)
    if isinstance(client, anthropic.Anthropic):
        if cache is not None and not isinstance(cache, ResponseCache):
            raise InvalidArgumentType("an Anthropic client needs a ResponseCache")
        sync_guard = Guard(config, _sync_redis(redis), cache, owns_redis=owns_redis)
        return LimitedAnthropic(client, sync_guard)
    raise InvalidArgumentType(
        f"client must be an anthropic.Anthropic or AsyncAnthropic, not {type(client).__name__}"
    )


def _sync_redis(value: object) -> SyncClient:
    if isinstance(value, str):
        return connect(value)
    if isinstance(value, redis.Redis | redis.cluster.RedisCluster):
        return value
    raise InvalidArgumentType(
        "an Anthropic client needs a redis.Redis, a RedisCluster or a URL, "
        f"not {type(value).__name__}"
    )


def _async_redis(value: object) -> rl_asyncio.AsyncClient:
    if isinstance(value, str):
        return rl_asyncio.connect(value)
    if isinstance(value, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster):
        return value
    raise InvalidArgumentType(
        "an AsyncAnthropic client needs a redis.asyncio client or a URL, "
        f"not {type(value).__name__}"
    )
