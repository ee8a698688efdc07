"""Redis unreachable: the limiter does what on_redis_error says, never a silent fallback."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

import ratelimit.asyncio
from ratelimit import AcquireTimeout, BackendError, InvalidArgument, Limiter, Rate, RedisUnavailable
from ratelimit.server import EmbeddedServer, free_port


@pytest.fixture
def dead_url() -> str:
    """A URL where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


def test_raise_is_the_default(dead_url: str) -> None:
    limiter = Limiter(dead_url, "q", requests=Rate(1))
    with pytest.raises(RedisUnavailable) as caught:
        limiter.acquire()
    assert caught.value.__cause__ is not None
    with pytest.raises(RedisUnavailable):
        limiter.try_acquire()
    with pytest.raises(BackendError):
        limiter.state()


def test_allow_admits_unmetered(dead_url: str, caplog: pytest.LogCaptureFixture) -> None:
    limiter = Limiter(dead_url, "q", requests=Rate(1), on_redis_error="allow")
    permit = limiter.acquire()
    assert not permit.backed
    assert permit.settle().status == "unbacked"
    assert limiter.try_acquire() is not None
    assert "Redis unreachable" in caplog.text


def test_deny_refuses(dead_url: str) -> None:
    limiter = Limiter(dead_url, "q", requests=Rate(1), on_redis_error="deny")
    assert limiter.try_acquire() is None
    with pytest.raises(AcquireTimeout) as caught:
        limiter.acquire(timeout=10)
    assert isinstance(caught.value.__cause__, RedisUnavailable)


async def test_async_policies(dead_url: str) -> None:
    raising = ratelimit.asyncio.Limiter(dead_url, "q", requests=Rate(1))
    with pytest.raises(RedisUnavailable):
        await raising.acquire()
    allowing = ratelimit.asyncio.Limiter(dead_url, "q", requests=Rate(1), on_redis_error="allow")
    assert not (await allowing.acquire()).backed
    denying = ratelimit.asyncio.Limiter(dead_url, "q", requests=Rate(1), on_redis_error="deny")
    assert await denying.try_acquire() is None


@pytest.fixture
def frozen_server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as server:
        yield server


def test_hung_server_times_out_quickly_then_recovers(frozen_server: EmbeddedServer) -> None:
    limiter = Limiter(frozen_server.url, "q", requests=Rate(100, per=60))
    limiter.acquire()
    process = frozen_server._process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RedisUnavailable):
            limiter.acquire()
        assert time.monotonic() - started < 5  # the URL client's short socket timeout
    finally:
        os.kill(process.pid, signal.SIGCONT)
    # The request that timed out may have run after all: at most it is booked
    # once, never admitted twice.
    assert limiter.acquire().settle().applied
    assert 97 <= limiter.state().rate("requests").available <= 98.1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0", "must start with redis://"),
        ("127.0.0.1:6379", "must start with redis://"),
        ("redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem", "TLS options need a rediss:// URL"),
    ],
)
def test_a_url_that_cannot_work_is_refused_at_once(url: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Limiter(url, "q", requests=Rate(5))
    with pytest.raises(InvalidArgument, match=message):
        ratelimit.asyncio.Limiter(url, "q", requests=Rate(5))
