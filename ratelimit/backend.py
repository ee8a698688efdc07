"""The Redis side shared by the sync and asyncio shells: connections and errors.

The core decides; this module only opens clients the way a limiter wants
them and turns redis-py's errors into ours.
"""

from __future__ import annotations

import redis
import redis.asyncio
import redis.exceptions

from ratelimit.errors import BackendError, RedisUnavailable

#: Socket timeouts of a client built from a URL: an outage is noticed in
#: about a second instead of hanging workers.
URL_SOCKET_TIMEOUT_S = 1.0


def connect(url: str) -> redis.Redis:
    """A client for ``url`` with the short socket timeouts a limiter wants."""
    return redis.Redis.from_url(
        url, socket_timeout=URL_SOCKET_TIMEOUT_S, socket_connect_timeout=URL_SOCKET_TIMEOUT_S
    )


def connect_async(url: str) -> redis.asyncio.Redis:
    """An asyncio client for ``url`` with the short socket timeouts a limiter wants."""
    return redis.asyncio.Redis.from_url(
        url, socket_timeout=URL_SOCKET_TIMEOUT_S, socket_connect_timeout=URL_SOCKET_TIMEOUT_S
    )


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
