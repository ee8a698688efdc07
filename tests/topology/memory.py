"""A server with little memory, and filling it until it evicts or refuses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import redis

from topology.server import Server
from topology.waiting import TopologyError

MaxmemoryPolicy = Literal[
    "noeviction",
    "volatile-lru",
    "allkeys-lru",
    "volatile-lfu",
    "allkeys-lfu",
    "volatile-random",
    "allkeys-random",
    "volatile-ttl",
]


def maxmemory_server(
    policy: MaxmemoryPolicy = "noeviction", maxmemory: str = "2mb", *options: str
) -> Server:
    """A ``Server`` (not started) limited to ``maxmemory`` (e.g. ``2mb``) under ``policy``."""
    return Server("--maxmemory", maxmemory, "--maxmemory-policy", policy, *options)


@dataclass(frozen=True)
class FillResult:
    """What ``fill_memory`` did: keys written, keys the server evicted, whether
    it refused a write with OOM."""

    keys_written: int
    evicted_keys: int
    out_of_memory: bool


def fill_memory(
    server: Server,
    *,
    ttl_s: int | None = None,
    value_bytes: int = 4096,
    prefix: str = "filler:",
    batch: int = 50,
) -> FillResult:
    """Write ``prefix<n>`` keys of ``value_bytes`` bytes (with a TTL of ``ttl_s``
    seconds, or none) until the server evicts a key or refuses a write with OOM.

    Bounded: gives up with ``TopologyError`` after writing twenty times
    ``maxmemory``.
    """
    maxmemory = int(server.info("memory")["maxmemory"])
    if maxmemory == 0:
        raise TopologyError(f"the server on port {server.port} has no maxmemory")
    evicted_before = int(server.info("stats")["evicted_keys"])
    value = b"x" * value_bytes
    written = 0
    client = server.client()
    try:
        while written * value_bytes < 20 * maxmemory:
            pipe = client.pipeline(transaction=False)
            for n in range(written, written + batch):
                pipe.set(f"{prefix}{n}", value, ex=ttl_s)
            replies = pipe.execute(raise_on_error=False)
            written += sum(1 for reply in replies if reply is True)
            out_of_memory = any(isinstance(r, redis.exceptions.OutOfMemoryError) for r in replies)
            evicted = int(server.info("stats")["evicted_keys"]) - evicted_before
            if out_of_memory or evicted:
                return FillResult(written, evicted, out_of_memory)
    finally:
        client.close()
    raise TopologyError(f"wrote {written} keys to port {server.port}: no eviction, no OOM")
