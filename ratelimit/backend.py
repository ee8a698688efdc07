"""The Redis side shared by the sync and asyncio shells: connections and errors.

The core decides; this module only opens clients the way a limiter wants
them and turns redis-py's errors into ours.
"""

from __future__ import annotations

import ssl
import time
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import redis.exceptions

from ratelimit.errors import (
    BackendError,
    InvalidArgument,
    InvalidArgumentType,
    LimiterError,
    RedisMisconfigured,
    RedisRefused,
    RedisUnavailable,
)

#: Socket timeouts of a client built from a URL: an outage is noticed in
#: about a second instead of hanging workers.
URL_SOCKET_TIMEOUT_S = 1.0

#: How long a call waits for a free connection of a URL-built client's pool
#: (a busy pool is not an outage: the call waits its turn, within this bound).
URL_POOL_WAIT_S = 10.0
#: A URL-built client's pool: 64 connections for the process's own concurrency and
#: the one its limiters' scripts keep (:data:`ratelimit.transport.HOLD_FROM`).
URL_POOL_SIZE = 65

_SCHEMES = ("redis", "rediss", "unix")

#: A client the limiters take: one server (or a Sentinel's primary), or a Redis Cluster.
SyncClient = redis.Redis | redis.cluster.RedisCluster
#: The asyncio twin of :data:`SyncClient`.
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def _checked(url: object) -> str:
    if not isinstance(url, str):
        raise InvalidArgumentType(f"a Redis URL must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise InvalidArgument(
            f"unsupported Redis URL {_where(url)!r}: it must start with redis://, "
            "rediss:// (TLS) or unix://"
        )
    return url


def _where(url: str) -> str:
    return url.rsplit("@", maxsplit=1)[-1]  # no password in a message


def _options_checked(
    pool: redis.BlockingConnectionPool | redis.asyncio.BlockingConnectionPool, url: str
) -> None:
    """Refuse a URL whose query names an option its scheme does not take (``ssl_*`` on a
    plain ``redis://``): redis-py would raise a bare TypeError at the first call."""
    try:
        pool.connection_class(**pool.connection_kwargs)  # builds, does not connect
    except TypeError as exc:
        raise InvalidArgument(
            f"the Redis URL {_where(url)!r} has an option its scheme does not take "
            f"({exc}); TLS options need a rediss:// URL"
        ) from None


def _pool(url: str, socket_timeout_s: float) -> redis.BlockingConnectionPool:
    pool = redis.BlockingConnectionPool.from_url(
        _checked(url),
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=URL_SOCKET_TIMEOUT_S,
        timeout=URL_POOL_WAIT_S,
        max_connections=URL_POOL_SIZE,
    )
    _options_checked(pool, url)
    return pool


def _runs_cluster(pool: redis.BlockingConnectionPool, url: str) -> bool:
    """Whether the server behind ``pool`` runs in cluster mode (``INFO cluster``).

    A server that cannot be asked (down, a wrong password, INFO not allowed)
    counts as one server: the first real call then says what is wrong, as it
    always did, and a cluster node's MOVED reply says to fix the access.
    """
    if pool.connection_class is redis.UnixDomainSocketConnection:
        return False  # redis-py's cluster client does not take unix sockets
    try:
        info = redis.Redis(connection_pool=pool).info("cluster")
    except redis.exceptions.ResponseError as exc:
        # A cluster node refuses the SELECT of any database but 0.
        cluster = "cluster mode" in str(exc)
    except redis.exceptions.RedisError:
        return False
    else:
        cluster = str(info.get("cluster_enabled", 0)) == "1"
    if cluster and pool.connection_kwargs.get("db", 0) != 0:
        pool.disconnect()
        raise InvalidArgument(
            f"the Redis URL {_where(url)!r} names a Redis Cluster node, which has only "
            "database 0: end the URL with /0"
        )
    return cluster


def _cluster_refused(exc: Exception) -> LimiterError:
    """Our error for a cluster client that could not be built (the caller chains ``exc``)."""
    if isinstance(exc, redis.exceptions.RedisError):
        return backend_error(exc)
    if "cannot be connected" in str(exc):
        return RedisUnavailable(f"the Redis Cluster is unreachable: {exc}")
    return RedisMisconfigured(f"the Redis Cluster cannot be used: {exc}")


def connect(url: str, *, socket_timeout_s: float = URL_SOCKET_TIMEOUT_S) -> SyncClient:
    """A client for ``url`` with the short socket timeouts a limiter wants.

    When the server runs in cluster mode (``INFO cluster`` says
    ``cluster_enabled:1``), a ``redis.cluster.RedisCluster`` that found
    every node from this one; else a ``redis.Redis``. Either way its pools
    block: a thread that finds every connection in use waits for one (up to
    :data:`URL_POOL_WAIT_S`) instead of failing. ``socket_timeout_s`` is
    for a caller whose commands block on the server (``ratelimit sync``).
    """
    pool = _pool(url, socket_timeout_s)
    if not _runs_cluster(pool, url):
        return redis.Redis(connection_pool=pool)
    pool.disconnect()
    try:
        return redis.cluster.RedisCluster.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=URL_SOCKET_TIMEOUT_S,
            connection_pool_class=redis.BlockingConnectionPool,
            timeout=URL_POOL_WAIT_S,
        )
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise _cluster_refused(exc) from exc


def connect_async(url: str) -> AsyncClient:
    """An asyncio client for ``url`` with the short socket timeouts a limiter wants.

    Cluster mode is found as by :func:`connect`, over a short-lived sync
    connection (once, when the client is built); a cluster gets a
    ``redis.asyncio.cluster.RedisCluster``, which finds its nodes at its
    first call. Otherwise the pool blocks too, and a limiter's own script
    calls use one connection of it whatever the concurrency
    (:mod:`ratelimit.batching`).
    """
    probe = _pool(url, URL_SOCKET_TIMEOUT_S)
    try:
        cluster = _runs_cluster(probe, url)
    finally:
        probe.disconnect()
    if cluster:
        try:
            return redis.asyncio.cluster.RedisCluster.from_url(
                url,
                socket_timeout=URL_SOCKET_TIMEOUT_S,
                socket_connect_timeout=URL_SOCKET_TIMEOUT_S,
            )
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise _cluster_refused(exc) from exc
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        socket_timeout=URL_SOCKET_TIMEOUT_S,
        socket_connect_timeout=URL_SOCKET_TIMEOUT_S,
        timeout=URL_POOL_WAIT_S,
    )
    _options_checked(pool, url)
    return redis.asyncio.Redis(connection_pool=pool)


#: How long a call keeps trying while Redis refuses writes in a failover (a
#: demoted primary, too few replicas, a slot without a primary): long enough
#: for Sentinel or a cluster to promote a replica, then it raises.
FAILOVER_WAIT_S = 10.0

_FAILOVER_SIGNS = (
    "READONLY",
    "NOREPLICAS",
    "previous master is now a slave",
    "No master found",
    "MASTERDOWN",
    "CLUSTERDOWN",
)


#: What a redis-py BlockingConnectionPool raises (a plain ConnectionError) when
#: no connection came free within its timeout: the pool is too small for its
#: callers, Redis itself answered nothing.
_POOL_WAIT_EXPIRED = "No connection available."


def _tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc) or "SSL:" in str(exc)


def backend_error(exc: redis.exceptions.RedisError) -> BackendError:
    """Our error for a redis-py one (the caller chains it with ``raise ... from``).

    Only reachability is an outage (:class:`RedisUnavailable`, where
    ``on_redis_error`` applies); a misconfiguration (:class:`RedisMisconfigured`)
    and a refused write (:class:`RedisRefused`) always raise.
    """
    text = str(exc)
    misconfigured = _misconfiguration(exc, text)
    if misconfigured is not None:
        return RedisMisconfigured(f"{misconfigured} ({text})")
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        return RedisRefused(
            f"Redis is out of memory and refuses writes; nothing was admitted ({text}). "
            "Give it memory, or a dedicated instance with maxmemory-policy noeviction"
        )
    if is_failover(exc):
        return RedisRefused(
            f"Redis refused the write during a failover or without enough replicas ({text})"
        )
    if isinstance(exc, redis.exceptions.MaxConnectionsError):
        return RedisMisconfigured(
            f"the client's connection pool is full ({text}): give it more connections or a "
            "redis.BlockingConnectionPool (a limiter built from a URL has one)"
        )
    if isinstance(exc, redis.exceptions.ConnectionError) and text == _POOL_WAIT_EXPIRED:
        return RedisMisconfigured(
            f"no pooled connection came free in time ({text}): this client's threads or "
            "tasks hold all of its connections; give its pool more (max_connections)"
        )
    if isinstance(
        exc,
        redis.exceptions.ConnectionError | redis.exceptions.TimeoutError,
    ) or text.startswith("LOADING"):
        return RedisUnavailable(f"Redis is unreachable: {text}")
    if "MISCONF" in text:
        return RedisRefused(f"Redis cannot persist and refuses writes ({text})")
    return BackendError(f"Redis refused a limiter script: {text}")


class FailoverWait:
    """Paces the retries of one call while Redis refuses writes in a failover.

    A refused script wrote nothing (it is refused at its first write), so
    sending it again is safe; the client's pool finds the new primary
    meanwhile (Sentinel, cluster slots).
    """

    def __init__(self) -> None:
        self._deadline: float | None = None
        self._pause_s = 0.05

    def next_pause(self, exc: BaseException) -> float | None:
        """Seconds to wait before sending the call again, or None to give up."""
        if not is_failover(exc):
            return None
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + FAILOVER_WAIT_S
        if now >= self._deadline:
            return None
        pause = min(self._pause_s, self._deadline - now)
        self._pause_s = min(self._pause_s * 2, 0.5)
        return pause


def drop_idle_connections(client: object) -> None:
    """Close the idle connections of ``client``'s pool: the next call connects anew.

    A refusal in a failover comes over a connection that may still lead to
    the demoted primary, and a pool reuses it until the server closes it (a
    Sentinel demotes an old primary about ten seconds after the switch). A
    new connection of a Sentinel-managed pool asks the sentinels where the
    primary is now; a plain one reconnects to the same address. Connections
    in use by other threads are left alone: each hears its own refusal.
    """
    pool = getattr(client, "connection_pool", None)  # a cluster client finds nodes itself
    if pool is not None:
        pool.disconnect(inuse_connections=False)


async def drop_idle_connections_async(client: object) -> None:
    """Asyncio twin of :func:`drop_idle_connections`."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        await pool.disconnect(inuse_connections=False)


def is_failover(exc: BaseException) -> bool:
    """Whether Redis refused because a failover is under way (worth trying again)."""
    if isinstance(exc, redis.exceptions.ReadOnlyError | redis.exceptions.ClusterDownError):
        return True
    if isinstance(exc, redis.exceptions.TryAgainError):
        return True
    text = str(exc)
    return any(sign in text for sign in _FAILOVER_SIGNS)


def _misconfiguration(exc: redis.exceptions.RedisError, text: str) -> str | None:
    """What to fix, when ``exc`` says this client is set up wrong; else None."""
    if isinstance(
        exc,
        redis.exceptions.AuthenticationError
        | redis.exceptions.AuthenticationWrongNumberOfArgsError,
    ) or text.startswith(("WRONGPASS", "NOAUTH")):
        return "Redis refused the credentials: check the username and password in the URL"
    if isinstance(
        exc, redis.exceptions.NoPermissionError | redis.exceptions.AuthorizationError
    ) or text.startswith("NOPERM"):
        return (
            "the Redis user is not allowed a command, key or channel the limiter needs: "
            "see the ACL rule in the README's Deploying section"
        )
    if isinstance(exc, redis.exceptions.ConnectionError) and _tls_failure(exc):
        return (
            "the TLS connection failed: check the rediss:// URL, ssl_ca_certs and the "
            "server's certificate"
        )
    if "Invalid Database" in text or "DB index is out of range" in text:
        return "the database number in the URL does not exist on this server"
    if isinstance(exc, redis.exceptions.MovedError) or text.startswith("MOVED"):
        return (
            "the server is a Redis Cluster node and this client talks to it alone: build the "
            "client from the node's URL (cluster mode is then found by INFO) or pass a "
            "redis.cluster.RedisCluster"
        )
    return None
