"""The core benchmark's quick run, against the suite's server, so the script cannot rot.

No timing figure is asserted (the machine is shared and noisy); only counts:
the booked ``acquire`` makes one script call per admission and nothing is
admitted beyond what the bucket allows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import run_quick_benchmark

SECTIONS = (
    "llm-quota-guard core benchmark",
    "[1] Latency",
    "[2] Throughput",
    "[3] Contention",
    "[4] Polling baseline",
    "script calls per admission: booked",
)


@pytest.mark.slow
def test_quick_benchmark_runs_and_reports_every_section(server_url: str, tmp_path: Path) -> None:
    report = run_quick_benchmark("bench_core.py", server_url, tmp_path, SECTIONS)
    assert {"conditions", "latency", "throughput", "contention"} <= report.keys()
    assert [row["processes"] for row in report["throughput"]] == [1, 4]
    assert {(row["quota"], row["op"]) for row in report["latency"]} >= {
        (quota, op) for quota in ("3-dim", "1-dim") for op in ("try_acquire", "acquire", "settle")
    }

    booked = report["contention"]["booked"]
    polling = report["contention"]["polling"]
    assert booked["processes"] == polling["processes"] == 16
    assert booked["admitted"] > 0
    assert polling["admitted"] > 0
    # Waiting is booked: one script call per admission (the server's own count).
    assert booked["script_calls"] / booked["admitted"] <= 1.05
    # Exact integer bookkeeping: no prefix of the admissions exceeds burst + rate x elapsed.
    assert booked["over_admitted"] == 0
    assert polling["over_admitted"] == 0
