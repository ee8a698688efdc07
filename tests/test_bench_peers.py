"""The peers benchmark's quick run, against the suite's Redis, so the script cannot rot.

No timing figure is asserted (the machine is shared and noisy); only that
every scenario has its figures and ratios for every contender installed, that
nothing was refused (the figures measure admissions), and the server's counts:
one script call per admission (two with a settle), none admitted beyond the
bucket.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import redis
from bench_helpers import run_quick_benchmark

REPEAT = 2
HEADINGS = (
    "llm-quota-guard vs peers benchmark",
    "redis-py",
    "hiredis",
    "os.cpu_count()=",
    "peers",
    "[5] budgeted",
    "[6] Blocking contention",
    "[7] Per admission",
    "[8] asyncio",
    "Final table",
    "check: all",
)
SCENARIOS = {
    "1p-1d": {"ours", "limits", "pyrate", "throttled", "floor"},
    "1p-3d": {"ours_3dim"},
    "4p-1d": {"ours", "limits", "pyrate", "throttled", "floor"},
    "4p-3d": {"ours_3dim"},
    "pin-1d": {"ours", "limits", "pyrate", "throttled", "floor"},
    "pin-3d": {"ours_3dim"},
    "1p-cycle": {"ours_cycle"},
    "4p-cycle": {"ours_cycle"},
    "1p-budget": {"ours_budget_cycle"},
}
#: The module each peer is imported as: one whose library is not installed has no figures.
PEER_MODULES = {"limits": "limits", "pyrate": "pyrate_limiter", "throttled": "throttled"}
#: Script calls per admission of our limiter: one per try_acquire, one more per settle.
SCRIPT_CALLS = {"ours": 1, "ours_3dim": 1, "ours_cycle": 2, "ours_budget_cycle": 2, "floor": 1}


def expected(kinds: set[str]) -> set[str]:
    return {k for k in kinds if k not in PEER_MODULES or importlib.util.find_spec(PEER_MODULES[k])}


@pytest.mark.slow
def test_quick_peers_benchmark_reports_every_scenario(server_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(server_url)
    engine = client.info("server").get("server_name", "redis")
    client.close()
    if engine == "valkey" and not os.environ.get("REDIS_URL"):
        pytest.skip("the peers' quick round runs once per suite, on Redis")
    report = run_quick_benchmark(
        "bench_peers.py",
        server_url,
        tmp_path,
        HEADINGS,
        options=("--repeat", str(REPEAT), "--seconds", "0.05"),
    )
    pinned = hasattr(os, "sched_setaffinity")
    rows = {row["scenario"]: row for row in report["scenarios"]}
    assert set(rows) == {k for k in SCENARIOS if pinned or not k.startswith("pin")}
    for key, row in rows.items():
        figures = row["contenders"]
        assert set(figures) == expected(SCENARIOS[key]), key
        for kind, c in figures.items():
            assert len(c["calls_per_s"]) == len(c["ratio"]) == REPEAT, (key, kind)
            assert c["admitted"] == c["calls"] > 0, (key, kind)
            assert c["refused"] == 0, (key, kind)
            assert c["p50_us"] <= c["p99_us"]
        if "floor" in figures:
            assert figures["floor"]["ratio"] == [1.0] * REPEAT
    assert len(report["budget_cost_ratio"]["ratio"]) == REPEAT

    kinds = expected(set().union(*SCENARIOS.values()))
    assert set(report["server"]) == kinds
    for kind, counted in report["server"].items():
        assert counted["admitted"] == report["plan"]["counted_calls"], kind
        assert counted["commands_per_admission"] >= counted["script_calls_per_admission"] > 0
        if kind in SCRIPT_CALLS:  # the server's own count
            assert counted["script_calls_per_admission"] == SCRIPT_CALLS[kind], (kind, counted)

    booked = report["contention"]
    assert booked["processes"] == 16
    assert booked["admitted"] > 0
    assert booked["calls_per_admission"] <= 1.05  # booked waiting: one round trip each
    assert booked["over_admitted"] == 0
    assert 0 < booked["jain_index"] <= 1
    assert booked["commands_per_admission"] >= booked["calls_per_admission"]

    memory = {row["kind"]: row for row in report["memory"]}
    assert set(memory) == expected({"ours", "limits", "pyrate", "throttled", "floor"})
    for row in memory.values():
        assert row["admitted"] == report["plan"]["memory_calls"]
        assert row["waited_s"] >= report["plan"]["refill_s"]
    assert memory["ours"]["keys"] >= 1

    aio = report["asyncio"]
    assert aio["calls"] == 1000
    assert {len(v) for v in aio["ratio"].values()} == {REPEAT}
    assert isinstance(aio["problems"], dict)  # counted and reported, never raised
