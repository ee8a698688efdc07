"""A Redis Cluster reached by the URL of one node: limiters and every CLI command.

The three-primary cluster of ``conftest.py`` is started once for this module;
each test empties it. Scopes are named so that their hash tags land on each
primary, so a reader that looked at one node only would miss two thirds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from test_cli import wait_for_line
from test_metrics import exporter, scrape, value

import ratelimit.asyncio
from ratelimit import Budget, InvalidArgument, Limiter, Rate, RedisMisconfigured
from ratelimit.backend import connect, connect_async
from ratelimit.cli import main
from ratelimit.cli.postgres import ledger_client
from ratelimit.core.keys import ScopeKeys
from ratelimit.dashboard.sources import read_live, read_redis_spend, redis_today
from ratelimit.errors import ClusterNotSupported

#: Admission attempts per scope and thread: far more than its capacity.
ATTEMPTS = 25
THREADS = 4
CAPACITY = 5


@pytest.fixture
def cluster_url(cluster: redis.cluster.RedisCluster, cluster_nodes: list[int]) -> str:
    """The URL of the first node alone, on the emptied cluster."""
    return f"redis://127.0.0.1:{cluster_nodes[0]}/0"


def one_scope_per_node(cluster: redis.cluster.RedisCluster, prefix: str) -> dict[str, str]:
    """A scope name whose keys live on each primary: ``{node name: scope name}``."""
    chosen: dict[str, str] = {}
    for i in range(1000):
        name = f"{prefix}-{i}"
        node = cluster.get_node_from_key(ScopeKeys(name, name).rates).name  # type: ignore[no-untyped-call]
        chosen.setdefault(node, name)
        if len(chosen) == len(cluster.get_primaries()):  # type: ignore[no-untyped-call]
            return chosen
    raise AssertionError("no scope name found for every primary")


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``ratelimit ARGV``: its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_a_node_url_gives_cluster_clients(cluster_url: str) -> None:
    client = connect(cluster_url)
    try:
        assert isinstance(client, redis.cluster.RedisCluster)
        assert len(client.get_primaries()) == 3  # type: ignore[no-untyped-call]  # found from one
        pool = client.get_default_node().redis_connection.connection_pool  # type: ignore[no-untyped-call]
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.connection_kwargs["socket_timeout"] == 1.0
    finally:
        client.close()
    assert isinstance(connect_async(cluster_url), redis.asyncio.cluster.RedisCluster)


def test_a_cluster_url_keeps_the_url_checks(cluster_nodes: list[int]) -> None:
    port = cluster_nodes[0]
    with pytest.raises(InvalidArgument, match="TLS options need a rediss:// URL"):
        Limiter(f"redis://127.0.0.1:{port}/0?ssl_ca_certs=/ca.pem", "q", requests=Rate(5))
    with pytest.raises(InvalidArgument, match="only database 0: end the URL with /0"):
        Limiter(f"redis://127.0.0.1:{port}/3", "q", requests=Rate(5))
    with pytest.raises(InvalidArgument, match="only database 0: end the URL with /0"):
        ratelimit.asyncio.Limiter(f"redis://127.0.0.1:{port}/3", "q", requests=Rate(5))


def test_no_over_admission_across_slots(
    cluster: redis.cluster.RedisCluster, cluster_url: str
) -> None:
    names = list(one_scope_per_node(cluster, "quota").values())
    admitted = {name: 0 for name in names}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            # Each thread builds its own limiters from the URL, as separate processes would.
            limiters = [Limiter(cluster_url, n, requests=Rate(CAPACITY, per=3600)) for n in names]
            for _ in range(ATTEMPTS):
                for limiter in limiters:
                    if limiter.try_acquire() is not None:
                        with lock:
                            admitted[limiter.name] += 1
            for limiter in limiters:
                limiter.client.close()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    # A bucket of 5 refilling at 5 per hour: exactly 5 each, whichever node holds it.
    assert admitted == {name: CAPACITY for name in names}


async def test_async_limiters_from_a_node_url(
    cluster: redis.cluster.RedisCluster, cluster_url: str
) -> None:
    for name in one_scope_per_node(cluster, "async").values():
        limiter = ratelimit.asyncio.Limiter(cluster_url, name, requests=Rate(1, per=3600))
        try:
            assert await limiter.try_acquire() is not None
            assert await limiter.try_acquire() is None
        finally:
            await limiter.client.aclose()


async def test_a_thousand_concurrent_acquires_on_a_cluster_url_complete(
    cluster: redis.cluster.RedisCluster, cluster_url: str
) -> None:
    """As on one server (tests/test_faults_errors.py): no pool error, nothing unmetered."""
    names = list(one_scope_per_node(cluster, "crowd").values())
    limiters = [
        ratelimit.asyncio.Limiter(cluster_url, name, requests=Rate(100, per=3600)) for name in names
    ]
    try:
        results = await asyncio.gather(
            *(limiters[i % len(limiters)].try_acquire() for i in range(1000)),
            return_exceptions=True,
        )
    finally:
        for limiter in limiters:
            await limiter.client.aclose()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    admitted = [r for r in results if r is not None]
    assert len(admitted) == 100 * len(names)
    assert all(permit.backed for permit in admitted)  # type: ignore[union-attr]


def test_a_plain_client_on_a_node_is_told_it_is_a_cluster(
    cluster: redis.cluster.RedisCluster, cluster_nodes: list[int]
) -> None:
    first = f"127.0.0.1:{cluster_nodes[0]}"
    elsewhere = next(n for node, n in one_scope_per_node(cluster, "moved").items() if node != first)
    plain = redis.Redis(port=cluster_nodes[0])
    try:
        with pytest.raises(RedisMisconfigured, match="Redis Cluster node"):
            Limiter(plain, elsewhere, requests=Rate(5), on_redis_error="allow").acquire()
    finally:
        plain.close()


def spend_everywhere(cluster: redis.cluster.RedisCluster, url: str) -> dict[str, str]:
    """A budgeted scope on each primary, each settled once for $0.60 of its $1 (alerts at 50%)."""
    names = one_scope_per_node(cluster, "team")
    for name in names.values():
        limiter = Limiter(url, name, requests=Rate(10, per=60), usd=Budget("1", alerts=(0.5,)))
        limiter.acquire(usd="0.60").settle(usd="0.60", model="claude-sonnet-4")
    return names


def test_status_lists_the_scopes_of_every_node(
    cluster: redis.cluster.RedisCluster, cluster_url: str
) -> None:
    names = spend_everywhere(cluster, cluster_url)
    code, out, err = run_cli("status", "--json", "--redis-url", cluster_url)
    assert code == 0, err
    scopes = {scope["name"]: scope for scope in json.loads(out)["scopes"]}
    assert set(scopes) == set(names.values())
    for name in names.values():
        assert scopes[name]["budget"]["spent_usd"] == "0.6"


def test_the_exporter_serves_the_scopes_of_every_node(
    cluster: redis.cluster.RedisCluster, cluster_url: str
) -> None:
    names = spend_everywhere(cluster, cluster_url)
    with exporter(cluster_url) as url:
        samples = scrape(url)
    assert value(samples, "ratelimit_up") == 1
    assert value(samples, "ratelimit_scopes") == len(names)
    for name in names.values():
        assert value(samples, "ratelimit_budget_spent_usd", scope=name) == 0.6


def test_doctor_checks_every_primary(
    cluster: redis.cluster.RedisCluster, cluster_url: str, cluster_nodes: list[int]
) -> None:
    spend_everywhere(cluster, cluster_url)
    nodes = [redis.Redis(port=port) for port in cluster_nodes]
    try:
        for node in nodes:  # budgets need persistence, per node
            node.config_set("appendonly", "yes")
        code, out, err = run_cli("doctor", "--redis-url", cluster_url)
    finally:
        for node in nodes:
            node.config_set("appendonly", "no")
            node.close()
    assert code == 0, out + err
    lines = out.splitlines()
    assert "ok   cluster: 3 primaries, cluster_state ok" in lines
    for port in cluster_nodes:
        for check in ("server version", "eviction", "persistence"):
            assert any(
                line.startswith(f"ok   {check}: primary 127.0.0.1:{port}: ") for line in lines
            ), (check, port, out)
    assert "ok   data loss: no budget lost its spend (3 budgets)" in lines
    assert any(line.startswith("ok   scripts: all ") for line in lines)
    assert "ok   permissions: every command the scripts run is allowed" in lines


def test_the_dashboard_reads_the_scopes_of_every_node(
    cluster: redis.cluster.RedisCluster, cluster_url: str
) -> None:
    names = spend_everywhere(cluster, cluster_url)
    client = connect(cluster_url)
    try:
        live = read_live(client)
        spend = read_redis_spend(client, redis_today(client))
    finally:
        client.close()
    assert {b["scope"]: b["spent_usd"] for b in live["budgets"]} == {
        name: "0.6" for name in names.values()
    }
    assert sorted(alert["scope"] for alert in live["alerts"]) == sorted(names.values())
    assert {row["name"]: row["usd"] for row in spend["top_scopes"]} == {
        name: "0.6" for name in names.values()
    }
    assert spend["total_usd"] == "1.8"


@pytest.mark.parametrize(
    ("command", "expect"),
    [
        (("ledger", "--format", "jsonl"), lambda out: json.loads(out)["cost_usd"] == "0.6"),
        (("spend",), lambda out: "claude-sonnet-4" in out and "0.6" in out),
        (("alerts",), lambda out: "50%" in out),
    ],
)
def test_readers_on_a_scope_of_another_node(
    cluster: redis.cluster.RedisCluster,
    cluster_url: str,
    cluster_nodes: list[int],
    command: tuple[str, ...],
    expect: Callable[[str], bool],
) -> None:
    first = f"127.0.0.1:{cluster_nodes[0]}"
    names = spend_everywhere(cluster, cluster_url)
    for node, name in names.items():
        code, out, err = run_cli(command[0], name, *command[1:], "--redis-url", cluster_url)
        assert code == 0, err
        assert expect(out), (node, node == first, out)


def test_alerts_follow_hears_every_node(
    cluster: redis.cluster.RedisCluster, cluster_url: str
) -> None:
    command = ["alerts", "--follow", "--count", "3", "--redis-url", cluster_url]
    follow = subprocess.Popen(
        [sys.executable, "-m", "ratelimit", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_line(follow, "listening on rl:v2:alerts")
        # Each alert is published by the node of its scope; a cluster relays it to all.
        names = spend_everywhere(cluster, cluster_url)
        out, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    heard = {line.split()[2] for line in out.splitlines()}
    assert heard == set(names.values()), out


def test_sync_and_restore_refuse_a_cluster(cluster_url: str) -> None:
    with pytest.raises(ClusterNotSupported, match="Redis Cluster"):
        ledger_client(cluster_url, 1.0)
    dsn = "postgresql://nobody@127.0.0.1:1/none"  # never reached: Redis is refused first
    for argv in (["sync", "--to", dsn, "--all"], ["restore", "--from", dsn, "--all"]):
        code, _, err = run_cli(*argv, "--redis-url", cluster_url)
        assert code == 2
        assert "do not support Redis Cluster" in err, err
