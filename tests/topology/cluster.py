"""A Redis Cluster with a replica behind every primary, built by hand."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import redis.cluster
from redis.crc import key_slot

from ratelimit.server import Engine
from topology.replication import wait_replicas_caught_up
from topology.server import Server, ServerGroup
from topology.waiting import ADMIN_TIMEOUT_S, DEADLINE_S, command, wait_for

SLOTS = 16384


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of ``CLUSTER NODES``: how one node sees another."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]
    """Inclusive slot ranges this node serves, as the viewer believes."""

    @classmethod
    def parse(cls, line: str) -> ClusterNodeView:
        """Parse ``<id> <ip:port@bus> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...``"""
        node_id, address, flags, primary, _, _, _, link, *slots = line.split()
        ranges = []
        for item in slots:
            if item.startswith("["):
                continue  # a slot being migrated or imported
            start, _, end = item.partition("-")
            ranges.append((int(start), int(end or start)))
        return cls(
            node_id=node_id,
            port=int(address.split("@")[0].rsplit(":", 1)[1]),
            flags=frozenset(flags.split(",")),
            primary_id=None if primary == "-" else primary,
            connected=link == "connected",
            slots=tuple(ranges),
        )


def cluster_view(node: Server) -> list[ClusterNodeView]:
    """``CLUSTER NODES`` as ``node`` sees the cluster."""
    text: str = command(node.admin, "CLUSTER", "NODES")
    return [ClusterNodeView.parse(line) for line in text.splitlines() if line.strip()]


class ClusterTopology(ServerGroup):
    """A Redis Cluster of ``primaries`` primaries with one replica each, built by hand.

    Slots are split evenly (``CLUSTER ADDSLOTSRANGE``), the nodes meet, then
    node ``primaries + i`` replicates node ``i``. ``node_timeout_ms`` is the
    cluster's failure-detection time (milliseconds), small so a killed
    primary's replica takes over within a few seconds.
    """

    def __init__(
        self,
        *options: str,
        primaries: int = 3,
        node_timeout_ms: int = 2000,
        engine: Engine = "redis",
    ) -> None:
        super().__init__()
        node_options = (
            "--cluster-enabled", "yes",
            "--cluster-node-timeout", str(node_timeout_ms),
            *options,
        )  # fmt: skip
        self.primary_count = primaries
        self.nodes = [Server(*node_options, engine=engine) for _ in range(2 * primaries)]

    @property
    def startup_nodes(self) -> list[redis.cluster.ClusterNode]:
        """Every node, as ``redis.cluster.RedisCluster(startup_nodes=...)`` takes them."""
        return [
            redis.cluster.ClusterNode("127.0.0.1", n.port)  # type: ignore[no-untyped-call]
            for n in self.nodes
        ]

    @property
    def url(self) -> str:
        """The URL of the first running node (``RedisCluster.from_url`` discovers the rest)."""
        return next(n for n in self.nodes if n.running).url

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A new ``RedisCluster`` client over every node (5 s timeouts); the caller closes it."""
        options: dict[str, Any] = {"socket_timeout": ADMIN_TIMEOUT_S, **kwargs}
        return redis.cluster.RedisCluster(startup_nodes=self.startup_nodes, **options)

    def running_nodes(self) -> list[Server]:
        """The nodes whose process is alive."""
        return [n for n in self.nodes if n.running]

    def primary_of(self, key: str | bytes) -> Server:
        """The node serving ``key``'s slot now, as the running nodes agree."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        owners = wait_for(self._agreed_owners, "the nodes to agree on slot owners")
        port = next(port for (start, end), port in owners.items() if start <= slot <= end)
        return next(n for n in self.nodes if n.port == port)

    def replicas_of(self, primary: Server) -> list[Server]:
        """The running nodes that report ``primary`` as their primary."""
        return [
            n
            for n in self.running_nodes()
            if n is not primary and n.info("replication").get("master_port") == primary.port
        ]

    def kill_primary_of(self, key: str | bytes, *, timeout_s: float = DEADLINE_S) -> Server:
        """SIGKILL the primary serving ``key`` and wait for its replica to take over.

        Returns when every running node agrees that a running primary serves
        every slot and reports ``cluster_state:ok``. Returns the killed node;
        ``killed.start()`` brings it back, and it rejoins as a replica.
        """
        killed = self.primary_of(key)
        killed.kill()
        self.wait_healthy(timeout_s=timeout_s)
        return killed

    def wait_replicated(self, *, timeout_s: float = DEADLINE_S) -> None:
        """Wait until every running replica has all its primary wrote so far."""
        for node in self.running_nodes():
            if node.role() == "master":
                wait_replicas_caught_up(node, self.replicas_of(node), timeout_s=timeout_s)

    def wait_healthy(self, *, timeout_s: float = DEADLINE_S) -> None:
        """Wait until the running nodes agree that running primaries serve every
        slot, each reports ``cluster_state:ok``, and each running replica's link
        to its primary is up."""

        def healthy() -> bool:
            if self._agreed_owners() is None:
                return False
            for node in self.running_nodes():
                if node.admin.cluster("INFO")["cluster_state"] != "ok":
                    return False
                replication = node.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
            return True

        wait_for(healthy, "the cluster to be healthy", timeout_s=timeout_s, interval_s=0.1)

    def start_all(self, stack: ExitStack) -> None:
        """Start the nodes, assign slots and replicas, wait until healthy."""
        for node in self.nodes:
            stack.enter_context(node)
        self._build()
        self.wait_healthy()

    def _build(self) -> None:
        primaries = self.nodes[: self.primary_count]
        replicas = self.nodes[self.primary_count :]
        share = SLOTS // len(primaries)
        for i, node in enumerate(primaries):
            end = SLOTS - 1 if i == len(primaries) - 1 else (i + 1) * share - 1
            command(node.admin, "CLUSTER", "ADDSLOTSRANGE", i * share, end)
            # Distinct epochs up front, as redis-cli does: no collision to
            # resolve before the first failover can be voted on.
            command(node.admin, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for node in self.nodes[1:]:
            command(self.nodes[0].admin, "CLUSTER", "MEET", "127.0.0.1", node.port)
        ids = {n.port: str(command(n.admin, "CLUSTER", "MYID")) for n in self.nodes}

        def everyone_met() -> bool:
            return all(
                len([v for v in cluster_view(n) if v.connected and "handshake" not in v.flags])
                == len(self.nodes)
                for n in self.nodes
            )

        wait_for(everyone_met, "the cluster nodes to meet", interval_s=0.1)
        for primary, replica in zip(primaries, replicas, strict=True):
            command(replica.admin, "CLUSTER", "REPLICATE", ids[primary.port])

    def _agreed_owners(self) -> dict[tuple[int, int], int] | None:
        # Slot range -> port of its primary, if every running node sees the
        # same running, unfailed primaries covering all slots; else None.
        running = {n.port for n in self.running_nodes()}
        views = []
        for node in self.running_nodes():
            owners = {
                slots: view.port
                for view in cluster_view(node)
                if "master" in view.flags
                for slots in view.slots
            }
            if not set(owners.values()) <= running:
                return None
            if sum(end - start + 1 for start, end in owners) != SLOTS:
                return None
            views.append(owners)
        if not views or any(v != views[0] for v in views):
            return None
        return views[0]
