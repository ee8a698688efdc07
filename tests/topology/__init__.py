"""Real fault topologies for the tests: servers the suite starts, breaks and repairs.

The promises of the library (no over-admission, no over-spend, exactly-once
money) must hold when Redis fails for real, so these helpers run real server
processes and real faults rather than mocks:

- ``Server``: one ``redis-server`` that can be killed (SIGKILL), stopped
  gracefully (SIGTERM), paused (SIGSTOP) and restarted on the same port and
  directory, so clients reconnect to it and it reloads its own AOF.
- ``ReplicaPair``: a primary and a replica; kill the primary, promote the
  replica, bring the old primary back as a stale primary (split brain).
- ``SentinelTopology``: a primary, replicas and three real sentinels.
- ``ClusterTopology``: a Redis Cluster of three primaries, each with a replica.
- ``acl_user``, ``tls_files`` and ``fill_memory``: restricted users, TLS
  certificates (a CA that verifies and one that does not), and a server filled
  until it evicts or refuses writes.

Everything is a context manager that leaves no process behind, also when a
start fails halfway; ``atexit`` kills whatever a crashed test left running.
Every wait polls the servers' own view (INFO, SENTINEL, CLUSTER NODES) until
a deadline, never a fixed sleep: the suite shares two loaded cores. A missing
binary skips the test with the reason.

One module per topology; everything a test needs is importable from here.
"""

from topology.acl import AclUser, acl_user
from topology.cluster import ClusterNodeView, ClusterTopology, cluster_view
from topology.memory import FillResult, MaxmemoryPolicy, fill_memory, maxmemory_server
from topology.replication import ReplicaPair, wait_replicas_caught_up
from topology.sentinel import SentinelProcess, SentinelTopology
from topology.server import Server, ServerFactory, ServerGroup
from topology.tls import TlsFiles, tls_files, tls_server
from topology.waiting import (
    ADMIN_TIMEOUT_S,
    DEADLINE_S,
    TopologyError,
    as_dict,
    command,
    wait_for,
)

__all__ = [
    "ADMIN_TIMEOUT_S",
    "DEADLINE_S",
    "AclUser",
    "ClusterNodeView",
    "ClusterTopology",
    "FillResult",
    "MaxmemoryPolicy",
    "ReplicaPair",
    "SentinelProcess",
    "SentinelTopology",
    "Server",
    "ServerFactory",
    "ServerGroup",
    "TlsFiles",
    "TopologyError",
    "acl_user",
    "as_dict",
    "cluster_view",
    "command",
    "fill_memory",
    "maxmemory_server",
    "tls_files",
    "tls_server",
    "wait_for",
    "wait_replicas_caught_up",
]
