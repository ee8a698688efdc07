"""What a Redis error does to admission: a misconfiguration fails closed, an outage
follows the policy.

Issue 9 measured two rows where ``on_redis_error="allow"`` let money through
while Redis answered fine: a URL-built asyncio limiter whose 200 concurrent
calls ran its pool out (105 admitted on ``Rate(5, per=60)``, 100 unmetered),
and a wrong password or a TLS certificate that does not verify (three $0.50
permits granted unmetered on a $1 budget). Now:

- concurrent asyncio calls share one connection: 1,000 of them admit exactly
  the quota, none unmetered, none failing;
- a wrong password, a certificate that does not verify, a database that does
  not exist and a pool with no connection to give are ``RedisMisconfigured``
  (the redis-py error chained), raised whatever the policy says, and write
  nothing;
- an outage (a stopped server, nothing listening, a server still loading its
  data) is ``RedisUnavailable``, and the policy applies: raise, admit
  unmetered (``backed=False``, with a warning), or deny.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest
import redis
import redis.asyncio
from topology import Server, ServerFactory, TlsFiles, acl_user, wait_for

import ratelimit.asyncio
import ratelimit.backend
from ratelimit import (
    AcquireTimeout,
    Budget,
    BudgetExceeded,
    Limiter,
    Rate,
    RedisMisconfigured,
    RedisUnavailable,
)
from ratelimit.core.results import PermitData
from ratelimit.core.scope import OnRedisError
from ratelimit.server import free_port

# -- row 1: an asyncio limiter built from a URL, many concurrent calls ---------------


async def test_a_thousand_concurrent_acquires_admit_the_quota_and_nothing_unmetered(
    redis_url: str,
) -> None:
    limiter = ratelimit.asyncio.Limiter(
        redis_url, "gathered", requests=Rate(5, per=60), on_redis_error="allow"
    )
    results = await asyncio.gather(
        *(limiter.try_acquire() for _ in range(1000)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    admitted = [r for r in results if r is not None]
    assert len(admitted) == 5
    assert all(isinstance(p, ratelimit.asyncio.Permit) and p.backed for p in admitted)
    await limiter.client.aclose()


async def test_a_thousand_concurrent_budgeted_acquires_never_go_unmetered(redis_url: str) -> None:
    limiter = ratelimit.asyncio.Limiter(
        redis_url, "gathered-usd", usd=Budget(1), on_redis_error="allow"
    )
    results = await asyncio.gather(
        *(limiter.try_acquire(usd="0.5") for _ in range(1000)), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, ratelimit.asyncio.Permit)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert (len(admitted), len(refused)) == (2, 998)
    assert all(p.backed for p in admitted)
    assert (await limiter.state()).budget("usd").reserved == Decimal(1)
    await limiter.client.aclose()


# -- row 2: misconfigured clients never admit -----------------------------------------


def _budgeted(client: str | redis.Redis) -> Limiter:
    return Limiter(client, "misconfigured", usd=Budget(1), on_redis_error="allow")


def assert_fails_closed(limiter: Limiter, cause: type[BaseException], match: str) -> None:
    """Three $0.50 permits on a $1 budget, under "allow": each is refused, cause chained."""
    for attempt in range(3):
        call = limiter.try_acquire if attempt % 2 == 0 else limiter.acquire
        with pytest.raises(RedisMisconfigured, match=match) as caught:
            call(usd="0.5")
        assert isinstance(caught.value.__cause__, cause), caught.value.__cause__
    with pytest.raises(RedisMisconfigured):
        limiter.state()


def test_a_wrong_password_is_misconfigured(start_server: ServerFactory) -> None:
    server = start_server()
    with acl_user(server, "limiter", "~rl:v2:*", "+@all") as user:
        limiter = _budgeted(user.wrong_password_url)
        assert_fails_closed(limiter, redis.exceptions.AuthenticationError, "password")
    assert server.admin.dbsize() == 0


def test_a_certificate_that_does_not_verify_is_misconfigured(
    tls_redis: Server, tls_certificates: TlsFiles
) -> None:
    limiter = _budgeted(tls_redis.url_for(ca_cert=tls_certificates.other_ca_cert))
    assert_fails_closed(limiter, redis.exceptions.ConnectionError, "TLS")
    assert tls_redis.admin.dbsize() == 0
    # The same server through its own CA admits: the certificate was the problem.
    assert _budgeted(tls_redis.url).try_acquire(usd="0.5") is not None


def test_a_database_that_does_not_exist_is_misconfigured(start_server: ServerFactory) -> None:
    server = start_server("--databases", "4")
    limiter = _budgeted(server.url.replace("/0", "/7"))
    assert_fails_closed(limiter, redis.exceptions.ResponseError, "database number")
    assert server.admin.dbsize() == 0


def test_a_pool_that_gives_no_connection_in_time_is_misconfigured(
    start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis answers; the client's own threads hold every connection of its pool."""
    server = start_server()
    monkeypatch.setattr(ratelimit.backend, "URL_POOL_WAIT_S", 0.2)
    limiter = _budgeted(server.url)
    assert isinstance(limiter.client, redis.Redis)
    pool = limiter.client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)  # as every URL-built client's
    held = [pool.get_connection() for _ in range(pool.max_connections)]  # type: ignore[no-untyped-call]
    assert_fails_closed(limiter, redis.exceptions.ConnectionError, "pooled connection")
    for connection in held:
        pool.release(connection)  # type: ignore[no-untyped-call]
    assert limiter.try_acquire(usd="0.5") is not None  # connections back: it admits


def test_a_full_non_blocking_pool_is_misconfigured(start_server: ServerFactory) -> None:
    server = start_server()
    pool = redis.ConnectionPool.from_url(server.url, max_connections=1)
    client = redis.Redis(connection_pool=pool)
    limiter = _budgeted(client)
    assert limiter.try_acquire(usd="0.1") is not None  # checked and admitted once
    held = pool.get_connection()
    assert_fails_closed(limiter, redis.exceptions.MaxConnectionsError, "pool is full")
    pool.release(held)
    client.close()


async def test_asyncio_fails_closed_the_same_way(
    start_server: ServerFactory, tls_redis: Server, tls_certificates: TlsFiles
) -> None:
    server = start_server()
    with acl_user(server, "limiter", "~rl:v2:*", "+@all") as user:
        urls = [
            user.wrong_password_url,
            tls_redis.url_for(ca_cert=tls_certificates.other_ca_cert),
            server.url.replace("/0", "/99"),
        ]
        for url in urls:
            limiter = ratelimit.asyncio.Limiter(
                url, "misconfigured", usd=Budget(1), on_redis_error="allow"
            )
            for _ in range(3):
                with pytest.raises(RedisMisconfigured) as caught:
                    await limiter.try_acquire(usd="0.5")
                assert isinstance(caught.value.__cause__, redis.exceptions.RedisError)
            await limiter.client.aclose()
    assert server.admin.dbsize() == tls_redis.admin.dbsize() == 0


# -- reachability: the policy applies --------------------------------------------------


@contextmanager
def loading_server() -> Iterator[str]:
    """A server busy loading its dataset (it answers -LOADING); yields its URL.

    300,000 keys saved to an RDB, then loaded again at 100 µs a key
    (``key-load-delay``), answering clients every KB of the file (about every
    10 ms): some 30 s of loading, ended by killing the server.
    """
    server = Server("--key-load-delay", "100", "--loading-process-events-interval-bytes", "1024")
    with server:
        server.admin.eval("for i = 1, 300000 do redis.call('SET', 'k' .. i, i) end", 0)
        server.admin.save()
        server.kill()
        # Started by hand: Server.start would wait for the loading to end.
        process = subprocess.Popen(
            server.command_line(),
            cwd=server.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            probe = server.client(retry=None, socket_timeout=1)
            wait_for(lambda: _loading(probe), "the server to be loading")
            yield server.url
            assert _loading(probe), "the loading ended before the test did: make it longer"
            probe.close()
        finally:
            process.kill()
            process.wait()


def _loading(probe: redis.Redis) -> bool:
    try:
        return bool(probe.info("persistence")["loading"] == 1)
    except redis.exceptions.BusyLoadingError:
        return True


@contextmanager
def outage(kind: str, start_server: ServerFactory) -> Iterator[tuple[str, Callable[[], None]]]:
    """The URL of each kind of outage, and what breaks it after the limiters' first use."""
    if kind == "refused":
        yield f"redis://127.0.0.1:{free_port()}/0", lambda: None
    elif kind == "stopped":
        server = start_server()
        yield server.url, server.kill
    else:
        with loading_server() as url:
            yield url, lambda: None


POLICIES: tuple[OnRedisError, ...] = ("raise", "allow", "deny")


@pytest.mark.parametrize("kind", ["refused", "stopped", "loading"])
async def test_an_outage_follows_the_policy(
    kind: str, start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with outage(kind, start_server) as (url, break_it):
        limiters = {p: Limiter(url, "outage", usd=Budget(1), on_redis_error=p) for p in POLICIES}
        async_limiters = {
            p: ratelimit.asyncio.Limiter(url, "outage", usd=Budget(1), on_redis_error=p)
            for p in POLICIES
        }
        if kind == "stopped":  # they worked, then the server died
            for limiter in limiters.values():
                limiter.acquire(usd="0.1").settle(usd="0.1")
            for async_limiter in async_limiters.values():
                await (await async_limiter.acquire(usd="0.1")).settle(usd="0.1")
        break_it()

        for call in (limiters["raise"].try_acquire, limiters["raise"].acquire):
            with pytest.raises(RedisUnavailable) as caught:
                call(usd="0.5")
            assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
        with pytest.raises(RedisUnavailable):
            await async_limiters["raise"].try_acquire(usd="0.5")

        allowed: list[PermitData | None] = [
            limiters["allow"].try_acquire(usd="0.5") for _ in range(3)
        ]
        allowed.append(await async_limiters["allow"].try_acquire(usd="0.5"))
        assert all(p is not None and not p.backed for p in allowed)
        assert "admitting unmetered" in caplog.text

        assert limiters["deny"].try_acquire(usd="0.5") is None
        with pytest.raises(AcquireTimeout) as refused:
            limiters["deny"].acquire(usd="0.5")
        assert isinstance(refused.value.__cause__, RedisUnavailable)
        assert await async_limiters["deny"].try_acquire(usd="0.5") is None

        await asyncio.gather(*(limiter.client.aclose() for limiter in async_limiters.values()))
