"""Three real sentinels watching a primary and its replicas."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import redis
import redis.sentinel

from ratelimit.server import Engine
from topology.replication import wait_replicas_caught_up
from topology.server import Server, ServerGroup
from topology.waiting import ADMIN_TIMEOUT_S, DEADLINE_S, as_dict, command, wait_for


class SentinelProcess(Server):
    """One sentinel (``redis-server <conf> --sentinel``) with its own config file.

    Sentinels rewrite their config file as they learn the topology, so each
    has its own directory.
    """

    def __init__(
        self,
        master_name: str,
        primary: Server,
        *,
        down_after_ms: int,
        failover_timeout_ms: int,
        engine: Engine = "redis",
    ) -> None:
        super().__init__(engine=engine)
        self.master_name = master_name
        self.monitored = primary
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def command_line(self) -> list[str]:
        """``<binary> <dir>/sentinel.conf --sentinel``: the port is in the file."""
        return [self.binary, str(self.workdir / "sentinel.conf"), "--sentinel"]

    def prepare_workdir(self) -> None:
        """Write the sentinel's config file for this port and this primary."""
        super().prepare_workdir()
        name = self.master_name
        (self.workdir / "sentinel.conf").write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.workdir}\n"
            "logfile server.log\n"
            "sentinel resolve-hostnames no\n"
            # Quorum 2 of 3: one sentinel alone cannot declare the primary down.
            f"sentinel monitor {name} 127.0.0.1 {self.monitored.port} 2\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 2\n"
        )

    def serving(self, probe: redis.Redis) -> bool:
        """Whether the sentinel answers PING (it has no data to load)."""
        return bool(probe.ping())

    def master_state(self) -> dict[str, str]:
        """``SENTINEL MASTER <name>`` as a dict of strings (``flags``, ``num-slaves``...)."""
        return as_dict(command(self.admin, "SENTINEL", "MASTER", self.master_name))

    def master_address(self) -> tuple[str, int]:
        """Where this sentinel says the primary is now."""
        host, port = command(self.admin, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return (str(host), int(port))


class SentinelTopology(ServerGroup):
    """A primary, ``replicas`` replicas and three sentinels (quorum 2).

    ``down_after_ms`` (milliseconds without an answer before a sentinel calls
    a server down) and ``failover_timeout_ms`` are small so failovers take a
    few seconds. ``min_replicas_to_write=1`` with ``min_replicas_max_lag_s``
    makes every server refuse writes (NOREPLICAS) while it has no replica
    that acknowledged within that many seconds: an isolated or stale primary
    then cannot accept what the real primary will never see. Use two replicas
    with it, so a promoted replica still has one to count.
    """

    def __init__(
        self,
        *options: str,
        replicas: int = 1,
        master_name: str = "mymaster",
        down_after_ms: int = 2000,
        failover_timeout_ms: int = 6000,
        min_replicas_to_write: int = 0,
        min_replicas_max_lag_s: int = 10,
        engine: Engine = "redis",
    ) -> None:
        super().__init__()
        if min_replicas_to_write:
            options = (
                *options,
                "--min-replicas-to-write", str(min_replicas_to_write),
                "--min-replicas-max-lag", str(min_replicas_max_lag_s),
            )  # fmt: skip
        self.master_name = master_name
        self.servers = [Server(*options, engine=engine) for _ in range(1 + replicas)]
        self.sentinel_processes = [
            SentinelProcess(
                master_name,
                self.servers[0],
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                engine=engine,
            )
            for _ in range(3)
        ]

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The sentinels' addresses, as ``redis.sentinel.Sentinel`` takes them."""
        return [s.address for s in self.sentinel_processes]

    def sentinel_client(self, **kwargs: Any) -> redis.sentinel.Sentinel:
        """A ``redis.sentinel.Sentinel`` over the three sentinels (5 s timeouts)."""
        options: dict[str, Any] = {"socket_timeout": ADMIN_TIMEOUT_S, **kwargs}
        return redis.sentinel.Sentinel(self.sentinels, **options)  # type: ignore[no-untyped-call]

    def master_client(self, **kwargs: Any) -> redis.Redis:
        """A client that asks the sentinels where the primary is, on every reconnect."""
        sentinel = self.sentinel_client()
        client: redis.Redis = sentinel.master_for(self.master_name, **kwargs)  # type: ignore[no-untyped-call]
        return client

    def server_at(self, address: tuple[str, int]) -> Server:
        """The data server listening at ``address``."""
        return next(s for s in self.servers if s.address == address)

    def master_address(self) -> tuple[str, int]:
        """The primary's address, as every running sentinel agrees on it."""
        return wait_for(self._agreed_master, "the sentinels to agree on a primary")

    def primary(self) -> Server:
        """The data server the sentinels agree is the primary."""
        return self.server_at(self.master_address())

    def wait_healthy(self, *, timeout_s: float = DEADLINE_S) -> None:
        """Wait until the sentinels agree on a primary that reports role:master,
        every other running server is its caught-up replica, and every sentinel
        knows the two others and those replicas."""

        deadline = time.monotonic() + timeout_s

        def agreed() -> tuple[Server, list[Server]] | None:
            address = self._agreed_master()
            if address is None:
                return None
            primary = self.server_at(address)
            replicas = [s for s in self.servers if s.running and s is not primary]
            if primary.role() != "master" or any(s.role() != "slave" for s in replicas):
                return None
            for sentinel in self.running_sentinels():
                state = sentinel.master_state()
                if state["flags"] != "master" or int(state["num-other-sentinels"]) < 2:
                    return None
                known = {(s["ip"], int(s["port"])) for s in self._replicas_known_to(sentinel)}
                if not {r.address for r in replicas} <= known:
                    return None
            return primary, replicas

        primary, replicas = wait_for(agreed, "the sentinels to agree", timeout_s=timeout_s)
        left_s = max(deadline - time.monotonic(), 1.0)
        wait_replicas_caught_up(primary, replicas, timeout_s=left_s)

    def failover(self, *, timeout_s: float = DEADLINE_S) -> tuple[str, int]:
        """``SENTINEL FAILOVER`` and wait for its end; returns the new primary's address.

        The end: every sentinel names the same new primary, it reports
        role:master, and the old one reports role:slave (sentinels demote it
        about ten seconds after the switch) or is down.
        """
        old = self.master_address()
        sentinel = self.running_sentinels()[0]

        def started() -> bool:
            try:
                command(sentinel.admin, "SENTINEL", "FAILOVER", self.master_name)
            except redis.ResponseError as exc:
                # A sentinel that has not yet heard from a replica has no
                # candidate (NOGOODSLAVE); one already failing over says INPROG.
                if "INPROG" in str(exc):
                    return True
                raise
            return True

        wait_for(started, "a sentinel to accept SENTINEL FAILOVER", timeout_s=timeout_s)
        return self._wait_switched_from(old, timeout_s)

    def kill_primary(self, *, timeout_s: float = DEADLINE_S) -> Server:
        """SIGKILL the primary, wait until a replica is promoted; return the killed server.

        ``killed.start()`` brings it back on its port as a stale primary,
        which the sentinels then demote to a replica.
        """
        old = self.master_address()
        killed = self.server_at(old)
        killed.kill()
        self._wait_switched_from(old, timeout_s)
        return killed

    def running_sentinels(self) -> list[SentinelProcess]:
        """The sentinels whose process is alive."""
        return [s for s in self.sentinel_processes if s.running]

    def start_all(self, stack: ExitStack) -> None:
        """Start the servers, link the replicas, start the sentinels, wait until healthy."""
        primary, *replicas = (stack.enter_context(s) for s in self.servers)
        for replica in replicas:
            replica.replicaof(primary)
        wait_replicas_caught_up(primary, replicas)
        for sentinel in self.sentinel_processes:
            stack.enter_context(sentinel)
        self.wait_healthy()

    def _agreed_master(self) -> tuple[str, int] | None:
        addresses = {s.master_address() for s in self.running_sentinels()}
        return addresses.pop() if len(addresses) == 1 else None

    def _replicas_known_to(self, sentinel: SentinelProcess) -> list[dict[str, str]]:
        reply = command(sentinel.admin, "SENTINEL", "REPLICAS", self.master_name)
        return [as_dict(item) for item in reply]

    def _wait_switched_from(self, old: tuple[str, int], timeout_s: float) -> tuple[str, int]:
        old_server = self.server_at(old)

        def switched() -> tuple[str, int] | None:
            address = self._agreed_master()
            if address is None or address == old:
                return None
            if self.server_at(address).role() != "master":
                return None
            if old_server.running and old_server.role() != "slave":
                return None
            return address

        return wait_for(switched, f"the sentinels to fail over from {old}", timeout_s=timeout_s)
