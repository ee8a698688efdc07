"""The contenders of ``bench_peers.py``: our limiter, three other libraries' Redis
limiters, and a floor, each behind the same two calls.

``connect(kind, url)`` gives a :class:`Connection` (one redis-py client on
``url``, built the way that library recommends); ``connection.admitter(name)``
gives a function that makes one non-blocking admission on the quota ``name``
and says whether it was admitted. Every quota is 10^9 units a second with a
bucket (or window) of 10^9, so nothing is ever refused: what is measured is the
cost of an admission. Each key a contender writes has ``name`` in it.

How each peer meets Redis (read from their sources at the pinned versions):

* **limits** 5.8, ``MovingWindowRateLimiter`` over ``RedisStorage``: one EVALSHA
  per ``hit`` (LINDEX, LPUSH, LTRIM, EXPIRE on a list holding one timestamp per
  admission in the window; the timestamp is the client's clock). Its exact
  strategy, like ours; its fixed window (INCRBY + EXPIRE) is cheaper but admits
  up to twice the limit across a window boundary.
* **pyrate-limiter** 4.5, ``RedisBucket`` (the README's Redis bucket): one
  EVALSHA per ``try_acquire`` (ZCOUNT, ZADD on a sorted set with one member per
  admission, client clock); a leaker thread trims it every 10 s.
* **throttled-py** 3.5, ``RedisStore`` with the token bucket: one EVALSHA per
  ``limit`` (TIME, HMGET, HSET, EXPIRE on one hash, server clock in whole seconds).
* **floor**: the least a shared token bucket can be, written here: one EVALSHA
  (TIME, GET, SET PX on one key), one dimension, through redis-py's ``register_script``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, get_args

import redis
from common import COSTS_3, ONE_DIM, THREE_DIM, UNLIMITED, quota

from ratelimit import Budget, Limiter

Kind = Literal[
    "ours", "ours_3dim", "ours_cycle", "ours_budget_cycle", "limits", "pyrate", "throttled", "floor"
]
KINDS: tuple[Kind, ...] = get_args(Kind)
#: The table's column of each kind: every way of calling our limiter is ours.
COLUMN: dict[Kind, str] = {
    "ours": "ours",
    "ours_3dim": "ours",
    "ours_cycle": "ours",
    "ours_budget_cycle": "ours",
    "limits": "limits",
    "pyrate": "pyrate",
    "throttled": "throttled",
    "floor": "floor",
}
COLUMNS = ("ours", "limits", "pyrate", "throttled", "floor")
#: The distribution behind each peer's column, and what of it is measured.
DISTRIBUTIONS = {"limits": "limits", "pyrate": "pyrate-limiter", "throttled": "throttled-py"}
STRATEGIES = {
    "limits": "MovingWindowRateLimiter, RedisStorage",
    "pyrate": "Limiter over RedisBucket",
    "throttled": "Throttled token_bucket, RedisStore",
}

#: The quotas' size in units: per second, and the bucket (or window) too.
AMOUNT = 1_000_000_000
#: A budget no run can exhaust, and what a budgeted call reserves and really costs.
BIG_BUDGET_USD = 1_000_000
MODEL = "claude-sonnet-4-6"
RESERVE_USD = "0.001"
ACTUAL_USD = "0.0007"

FLOOR_LUA = """
-- The floor: a token bucket in one script call, the least a shared limiter can do.
-- KEYS[1]  the bucket, a string "<level> <at>": units, and server time in µs
-- ARGV[1]  refill, units per second;  ARGV[2] capacity, units;  ARGV[3] cost, units
-- Reply: 1 admitted (and debited), 0 refused. The key lives until it would be full.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local rate, capacity, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local level, at = capacity, now
local stored = redis.call('GET', KEYS[1])
if stored then
  local space = string.find(stored, ' ', 1, true)
  level = tonumber(string.sub(stored, 1, space - 1))
  at = tonumber(string.sub(stored, space + 1))
end
level = math.min(capacity, level + (now - at) * rate / 1000000)
if level < cost then
  return 0
end
level = level - cost
local full_ms = math.ceil((capacity - level) * 1000 / rate) + 1
redis.call('SET', KEYS[1], string.format('%.17g %d', level, now), 'PX', full_ms)
return 1
"""

Admit = Callable[[], bool]


class Connection(Protocol):
    """One contender's client on a server."""

    def admitter(self, name: str) -> Admit:
        """One admission on the quota ``name``: True when admitted."""
        ...

    def close(self) -> None: ...


def installed(kinds: Iterable[Kind]) -> list[Kind]:
    """Those of ``kinds`` whose library is installed (ours and the floor always are)."""
    return [kind for kind in kinds if _installed(DISTRIBUTIONS.get(COLUMN[kind]))]


def _installed(distribution: str | None) -> bool:
    if distribution is None:
        return True
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def connect(kind: Kind, url: str) -> Connection:
    """A connection of ``kind`` to the server at ``url``."""
    if kind == "limits":
        return _Limits(url)
    if kind == "pyrate":
        return _Pyrate(url)
    if kind == "throttled":
        return _Throttled(url)
    if kind == "floor":
        return _Floor(url)
    return _Ours(kind, url)


class _Ours:
    def __init__(self, kind: Kind, url: str) -> None:
        self.kind = kind
        self.client = redis.Redis.from_url(url)

    def admitter(self, name: str) -> Admit:
        # Each checks its deployment first: one call, before anything is measured.
        if self.kind == "ours_3dim":
            wide = quota(self.client, name, THREE_DIM)
            wide.check_deployment()
            return lambda: wide.try_acquire(**COSTS_3) is not None
        if self.kind == "ours_cycle":
            narrow = quota(self.client, name, ONE_DIM)
            narrow.check_deployment()
            return lambda: _cycle(narrow, {}, {"requests": 1})
        if self.kind == "ours_budget_cycle":
            budgeted = Limiter(
                self.client, name, requests=UNLIMITED, usd=Budget(BIG_BUDGET_USD, per="day")
            )
            budgeted.check_deployment()
            reserve = {"usd": RESERVE_USD, "model": MODEL}
            return lambda: _cycle(budgeted, reserve, {"usd": ACTUAL_USD})
        limiter = quota(self.client, name, ONE_DIM)
        limiter.check_deployment()
        return lambda: limiter.try_acquire() is not None

    def close(self) -> None:
        self.client.close()


def _cycle(limiter: Limiter, costs: dict[str, Any], actual: dict[str, Any]) -> bool:
    """``try_acquire`` then ``settle``: admitted when both went through."""
    permit = limiter.try_acquire(**costs)
    return permit is not None and permit.settle(**actual).applied


class _Limits:
    def __init__(self, url: str) -> None:
        from limits import RateLimitItemPerSecond
        from limits.storage import RedisStorage
        from limits.strategies import MovingWindowRateLimiter

        self.pool = redis.ConnectionPool.from_url(url)
        self.strategy = MovingWindowRateLimiter(RedisStorage(url, connection_pool=self.pool))
        self.item = RateLimitItemPerSecond(AMOUNT)

    def admitter(self, name: str) -> Admit:
        return lambda: self.strategy.hit(self.item, name)

    def close(self) -> None:
        self.pool.disconnect()


class _Pyrate:
    def __init__(self, url: str) -> None:
        self.client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(url))
        self.limiters: list[Any] = []

    def admitter(self, name: str) -> Admit:
        from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

        bucket = RedisBucket.init([Rate(AMOUNT, Duration.SECOND)], self.client, name)
        limiter = Limiter(bucket)
        self.limiters.append(limiter)
        return lambda: limiter.try_acquire(name, blocking=False) is True

    def close(self) -> None:
        for limiter in self.limiters:  # stops its leaker thread
            limiter.close()
        self.client.close()


class _Throttled:
    def __init__(self, url: str) -> None:
        from throttled import RateLimiterType, Throttled, rate_limiter, store

        self.throttle = Throttled(
            using=RateLimiterType.TOKEN_BUCKET.value,
            quota=rate_limiter.per_sec(AMOUNT, burst=AMOUNT),
            store=store.RedisStore(server=url),
        )

    def admitter(self, name: str) -> Admit:
        return lambda: not self.throttle.limit(name).limited

    def close(self) -> None:
        pass  # throttled-py keeps its connection pool for the process's life


class _Floor:
    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.script = self.client.register_script(FLOOR_LUA)

    def admitter(self, name: str) -> Admit:
        args = [AMOUNT, AMOUNT, 1]
        return lambda: self.script(keys=[name], args=args) == 1

    def close(self) -> None:
        self.client.close()
