"""The Redis side shared by the sync and asyncio shells: connections and errors.

The core decides; this module only opens clients the way a limiter wants
them and turns redis-py's errors into ours.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.exceptions

from ratelimit.errors import BackendError, InvalidArgument, InvalidArgumentType, RedisUnavailable

#: Socket timeouts of a client built from a URL: an outage is noticed in
#: about a second instead of hanging workers.
URL_SOCKET_TIMEOUT_S = 1.0

#: How long a call waits for a free connection of a URL-built client's pool
#: (a busy pool is not an outage: the call waits its turn, within this bound).
URL_POOL_WAIT_S = 10.0

_SCHEMES = ("redis", "rediss", "unix")


def _checked(url: object) -> str:
    if not isinstance(url, str):
        raise InvalidArgumentType(f"a Redis URL must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise InvalidArgument(
            f"unsupported Redis URL {url.split('@')[-1]!r}: it must start with redis://, "
            "rediss:// (TLS) or unix://"
        )
    return url


def connect(url: str) -> redis.Redis:
    """A client for ``url`` with the short socket timeouts a limiter wants.

    Its pool blocks: a thread that finds every connection in use waits for one
    (up to :data:`URL_POOL_WAIT_S`) instead of failing.
    """
    pool = redis.BlockingConnectionPool.from_url(
        _checked(url),
        socket_timeout=URL_SOCKET_TIMEOUT_S,
        socket_connect_timeout=URL_SOCKET_TIMEOUT_S,
        timeout=URL_POOL_WAIT_S,
    )
    return redis.Redis(connection_pool=pool)


def connect_async(url: str) -> redis.asyncio.Redis:
    """An asyncio client for ``url`` with the short socket timeouts a limiter wants.

    Its pool blocks too; a limiter's own script calls use one connection of
    it whatever the concurrency (:mod:`ratelimit.batching`).
    """
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        _checked(url),
        socket_timeout=URL_SOCKET_TIMEOUT_S,
        socket_connect_timeout=URL_SOCKET_TIMEOUT_S,
        timeout=URL_POOL_WAIT_S,
    )
    return redis.asyncio.Redis(connection_pool=pool)


_UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)


def backend_error(exc: redis.exceptions.RedisError) -> BackendError:
    """Our error for a redis-py one (the caller chains it with ``raise ... from``)."""
    if isinstance(exc, _UNREACHABLE):
        return RedisUnavailable(f"Redis is unreachable: {exc}")
    return BackendError(f"Redis refused a limiter script: {exc}")
