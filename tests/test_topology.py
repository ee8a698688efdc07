"""The fault topologies of the ``topology`` package do what they say, on real servers.

These tests prove the test infrastructure, not the library: each builds one
topology, breaks it the way the fail-closed tests will, and checks the fault
really happened (data lost or kept, a new primary, a refused login...).
"""

from __future__ import annotations

import socket

import pytest
import redis
import redis.exceptions
import topology.server
from topology import (
    ClusterTopology,
    MaxmemoryPolicy,
    ReplicaPair,
    SentinelTopology,
    Server,
    ServerFactory,
    TlsFiles,
    TopologyError,
    acl_user,
    fill_memory,
    maxmemory_server,
    wait_for,
)

from ratelimit.server import free_port


def test_a_restart_keeps_the_port_and_only_an_aof_keeps_the_data(
    start_server: ServerFactory,
) -> None:
    volatile = start_server()
    durable = start_server("--appendonly", "yes", "--appendfsync", "always")
    clients = {server: server.client() for server in (volatile, durable)}
    for server, client in clients.items():
        client.set("k", "v")
        port = server.port
        server.restart(graceful=False)  # a crash: only what reached the disk is back
        assert server.port == port
    # The clients made before the crash reconnect by themselves (same port).
    assert clients[volatile].get("k") is None
    assert clients[durable].get("k") == b"v"

    durable.config_set("appendfsync", "everysec")
    clients[durable].set("k2", "v2")
    durable.restart()  # SIGTERM: the server flushes its AOF before it exits
    assert clients[durable].get("k2") == b"v2"
    assert durable.info("persistence")["loading"] == 0
    for client in clients.values():
        client.close()


def test_a_port_taken_before_the_first_start_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], free_port()])
        monkeypatch.setattr(topology.server, "free_port", lambda: next(ports))
        with Server() as server:
            assert server.port != taken.getsockname()[1]
            assert server.role() == "master"


def test_a_server_that_cannot_start_leaves_nothing_behind() -> None:
    server = Server("--no-such-option", "1")
    with pytest.raises(TopologyError, match="no-such-option"), server:
        pass
    assert not server.running
    assert not server.workdir.exists()


def test_a_paused_server_answers_nothing_until_resumed(start_server: ServerFactory) -> None:
    server = start_server()
    client = server.client(socket_timeout=0.3, retry=None)
    server.pause()
    with pytest.raises(redis.exceptions.TimeoutError):
        client.ping()
    server.resume()
    assert wait_for(client.ping, "the resumed server to answer")
    client.close()


def test_a_replica_pair_splits_its_brain(replica_pair: ReplicaPair) -> None:
    primary = replica_pair.primary.client()
    replica = replica_pair.replica.client()
    primary.set("k", "before")
    replica_pair.wait_synced()
    assert replica.get("k") == b"before"

    replica_pair.kill_primary()
    replica_pair.promote_replica()
    replica_pair.revive_old_primary()
    # Two primaries that both take writes, neither seeing the other's.
    assert replica_pair.primary.role() == replica_pair.replica.role() == "master"
    primary.set("k", "old side")
    replica.set("k", "new side")
    assert (primary.get("k"), replica.get("k")) == (b"old side", b"new side")
    primary.close()
    replica.close()


@pytest.mark.slow
def test_a_sentinel_failover_moves_the_primary(sentinel_topology: SentinelTopology) -> None:
    sentinel = sentinel_topology.sentinel_client()
    client = sentinel_topology.master_client()
    before = sentinel_topology.master_address()
    client.set("k", "v")
    sentinel_topology.wait_healthy()  # the replica has it before the switch

    after = sentinel_topology.failover()
    assert after != before
    assert sentinel.discover_master(sentinel_topology.master_name) == after  # type: ignore[no-untyped-call]
    assert sentinel_topology.server_at(before).role() == "slave"
    # The same client reconnects to the new primary: it has the data and takes writes.
    assert client.get("k") == b"v"
    assert client.set("after", "w")
    new_primary = sentinel_topology.server_at(after).client()
    assert new_primary.get("after") == b"w"
    new_primary.close()
    client.close()


@pytest.mark.slow
def test_a_stale_primary_refuses_writes_with_min_replicas() -> None:
    with SentinelTopology(replicas=2, min_replicas_to_write=1) as topology:
        killed = topology.kill_primary()
        topology.wait_healthy()  # the other replica now follows the new primary
        new_primary = topology.primary().client()
        assert new_primary.set("k", "v")

        killed.start()  # back on its port, a primary again, with no replica
        stale = killed.client()
        assert killed.role() == "master"
        with pytest.raises(redis.exceptions.ResponseError, match="NOREPLICAS"):
            stale.set("k", "lost")
        stale.close()
        new_primary.close()


@pytest.mark.slow
def test_a_cluster_keeps_serving_a_key_when_its_primary_dies(
    cluster_topology: ClusterTopology,
) -> None:
    client = cluster_topology.client()
    client.set("{quota}:k", "v")
    cluster_topology.wait_replicated()

    killed = cluster_topology.kill_primary_of("{quota}:k")
    assert cluster_topology.primary_of("{quota}:k") is not killed
    assert client.get("{quota}:k") == b"v"
    assert client.set("{quota}:k", "w")

    killed.start()  # it rejoins as the replica of the node that took over
    cluster_topology.wait_healthy()
    assert killed.role() == "slave"
    client.close()


def test_an_acl_user_runs_only_what_its_rules_allow(start_server: ServerFactory) -> None:
    server = start_server()
    rules = ("~rl:v1:*", "resetchannels", "-@all", "+eval", "+evalsha", "+set", "+get")
    with acl_user(server, "limited", *rules) as user:
        client = redis.Redis.from_url(user.url)
        assert client.eval("return redis.call('SET', KEYS[1], 'x')", 1, "rl:v1:a") == b"OK"
        assert client.get("rl:v1:a") == b"x"
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()  # not among its commands
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get("other")  # nor is this key among its keys
        client.close()

        intruder = redis.Redis.from_url(user.wrong_password_url)
        with pytest.raises(redis.exceptions.AuthenticationError):
            intruder.ping()
        intruder.close()


def test_tls_verifies_with_its_ca_and_fails_with_another(
    tls_redis: Server, tls_certificates: TlsFiles
) -> None:
    client = redis.Redis.from_url(tls_redis.url)
    assert client.ping()
    client.close()

    other_ca_url = tls_redis.url_for(ca_cert=tls_certificates.other_ca_cert)
    stranger = redis.Redis.from_url(other_ca_url, retry=None)
    with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)certificate verify failed"):
        stranger.ping()
    stranger.close()


@pytest.mark.parametrize(
    ("policy", "ttl_s", "evicts"),
    [("volatile-lru", 3600, True), ("volatile-lru", None, False), ("noeviction", 3600, False)],
)
def test_a_full_server_evicts_or_refuses(
    policy: MaxmemoryPolicy, ttl_s: int | None, evicts: bool
) -> None:
    with maxmemory_server(policy) as server:
        result = fill_memory(server, ttl_s=ttl_s)
        assert result.keys_written > 0
        assert (result.evicted_keys > 0, result.out_of_memory) == (evicts, not evicts)
