"""A primary and its replica: wait for them to agree, break them apart."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

from ratelimit.server import Engine
from topology.server import Server, ServerGroup
from topology.waiting import DEADLINE_S, wait_for


def wait_replicas_caught_up(
    primary: Server, replicas: Sequence[Server], *, timeout_s: float = DEADLINE_S
) -> None:
    """Wait until every replica is linked to ``primary`` and has everything it had.

    "Everything" is the primary's replication offset when this is called;
    the primary must also have received each replica's acknowledgement of it,
    so ``WAIT`` and ``min-replicas-to-write`` count the replica as good.
    """
    target = int(primary.info("replication")["master_repl_offset"])

    def caught_up() -> bool:
        acked = {
            int(value["port"]): int(value["offset"])
            for key, value in primary.info("replication").items()
            if key.startswith("slave") and isinstance(value, dict) and value["state"] == "online"
        }
        for replica in replicas:
            info = replica.info("replication")
            if info.get("master_link_status") != "up" or info["master_port"] != primary.port:
                return False
            if info["slave_repl_offset"] < target or acked.get(replica.port, -1) < target:
                return False
        return True

    wait_for(
        caught_up,
        f"replicas {[r.port for r in replicas]} to catch up with {primary.port}",
        timeout_s=timeout_s,
    )


class ReplicaPair(ServerGroup):
    """A primary and one replica (``REPLICAOF``), for replication faults.

    ``options`` go to both servers (``"--min-replicas-to-write", "1"``...).
    On entry the replica is linked and caught up. The replica is made one
    at runtime, so either server restarted on its own comes back a primary.
    """

    def __init__(self, *options: str, engine: Engine = "redis") -> None:
        super().__init__()
        self.primary = Server(*options, engine=engine)
        self.replica = Server(*options, engine=engine)

    def wait_synced(self, *, timeout_s: float = DEADLINE_S) -> None:
        """Wait until the replica has all the primary wrote so far, acknowledged."""
        wait_replicas_caught_up(self.primary, [self.replica], timeout_s=timeout_s)

    def kill_primary(self) -> None:
        """SIGKILL the primary and wait until the replica sees its link down."""
        self.primary.kill()
        wait_for(
            lambda: self.replica.info("replication")["master_link_status"] == "down",
            "the replica to see its primary gone",
        )

    def promote_replica(self) -> None:
        """``REPLICAOF NO ONE`` on the replica; returns when it reports role:master."""
        self.replica.replicaof(None)
        wait_for(lambda: self.replica.role() == "master", "the replica to become a primary")

    def revive_old_primary(self) -> None:
        """Start the killed primary again on its port, as a primary (not a replica).

        With the replica promoted, both now take writes: a split brain.
        Without persistence it comes back empty; with an AOF, with its old data.
        """
        self.primary.start()

    def start_all(self, stack: ExitStack) -> None:
        """Start both, make one the other's replica and wait until it caught up."""
        stack.enter_context(self.primary)
        stack.enter_context(self.replica)
        self.replica.replicaof(self.primary)
        self.wait_synced()
