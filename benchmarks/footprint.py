"""What one admission of each contender (``peers.py``) costs the server: the commands it
runs, the time it takes there, and the memory it leaves behind.

Both measurements run one contender at a time in this process, against the
server of ``client``; a contender's keys have ``<run_id>-count-<kind>`` or
``<run_id>-mem-<kind>`` in their names and are deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import peers
import redis
from common import (
    MICRO,
    delete_run_keys,
    key_bytes,
    reset_stats,
    server_counts,
    server_time_us,
    used_memory,
    wait_server_time,
)
from peers import Kind


def _warmed(kind: Kind, url: str, name: str, calls: int) -> tuple[peers.Connection, peers.Admit]:
    """A connection of ``kind`` whose scripts are loaded, and its admitter on ``name``."""
    connection = peers.connect(kind, url)
    admit = connection.admitter(name)
    for _ in range(calls):
        admit()
    return connection, admit


def count_server_work(
    client: redis.Redis, url: str, run_id: str, kinds: Iterable[Kind], *, warmup: int, calls: int
) -> dict[str, dict[str, Any]]:
    """Script calls, commands and server µs per admission of each contender, alone.

    Warmed up, then ``CONFIG RESETSTAT`` and ``calls`` admissions, read back
    from ``INFO commandstats``.
    """
    counted: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        connection, admit = _warmed(kind, url, f"{run_id}-count-{kind}", warmup)
        reset_stats(client)
        before = server_counts(client)
        admitted = sum(admit() for _ in range(calls))
        server = server_counts(client) - before
        connection.close()
        counted[kind] = {
            "admitted": admitted,
            "script_calls_per_admission": server.scripts.calls / max(1, admitted),
            "commands_per_admission": server.commands.calls / max(1, admitted),
            "server_us_per_admission": server.scripts.usec / max(1, admitted),
        }
    delete_run_keys(client, f"{run_id}-count")
    return counted


def measure_memory(
    client: redis.Redis,
    url: str,
    run_id: str,
    kinds: Iterable[Kind],
    *,
    warmup: int,
    calls: int,
    refill_s: float,
) -> list[dict[str, Any]]:
    """Bytes and keys retained per never-settled admission, after ``calls`` and after the refill.

    One contender at a time, alone among the run's keys (the earlier phases'
    keys and its own warm-up keys are deleted first, so none expires meanwhile):
    ``used_memory``, ``DBSIZE`` and the ``MEMORY USAGE`` of its own keys before
    and after its admissions, then again once the server's clock has passed
    the last one by ``refill_s`` (every bucket refilled); then its keys go.
    """
    rows: list[dict[str, Any]] = []
    delete_run_keys(client, run_id)
    for kind in kinds:
        connection, _ = _warmed(kind, url, f"{run_id}-memwarm-{kind}", warmup)
        delete_run_keys(client, f"{run_id}-memwarm")
        admit = connection.admitter(f"{run_id}-mem-{kind}")
        memory, keys = used_memory(client), client.dbsize()
        admitted = sum(admit() for _ in range(calls))
        last_us = server_time_us(client)
        row: dict[str, Any] = {"kind": kind, "admitted": admitted}
        for stage in ("", "_after_refill"):
            if stage:
                until_us = last_us + int(refill_s * MICRO)
                row["waited_s"] = (
                    wait_server_time(client, until_us, refill_s + 5) - last_us
                ) / MICRO
            own_keys, own_bytes = key_bytes(client, f"*{run_id}-mem-{kind}*")
            row[f"used_memory_per_admission{stage}"] = (used_memory(client) - memory) / calls
            row[f"key_bytes_per_admission{stage}"] = own_bytes / calls
            row[f"dbsize_growth{stage}"] = client.dbsize() - keys
            row[f"keys{stage}"] = own_keys
        rows.append(row)
        connection.close()
        delete_run_keys(client, f"{run_id}-mem")
    return rows
