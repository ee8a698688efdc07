"""The budget benchmark's quick run, against the suite's server, so the script cannot rot.

No timing figure is asserted (the machine is shared and noisy); only counts:
every phase, budgeted or not, grouped or not, is one script call per operation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import run_quick_benchmark

SECTIONS = (
    "llm-quota-guard budget benchmark",
    "redis-py",
    "os.cpu_count()=",
    "[1] Latency",
    "[2] Ratio to A",
    "[3] Script calls per operation",
)
PHASES = {
    "A": "rate-only acquire",
    "B": "budgeted acquire",
    "C": "rate-only settle",
    "D": "budgeted settle",
    "E": "group acquire",
}


@pytest.mark.slow
def test_quick_budget_benchmark_reports_one_script_call_per_operation(
    server_url: str, tmp_path: Path
) -> None:
    report = run_quick_benchmark(
        "bench_budget.py", server_url, tmp_path, (*SECTIONS, *PHASES.values())
    )
    assert {"conditions", "plan", "phases"} <= report.keys()
    rows = report["phases"]
    assert {row["phase"]: row["op"] for row in rows} == PHASES
    expected_ops = report["plan"]["rounds"] * report["plan"]["calls_per_round"]
    for row in rows:
        assert row["ops"] == expected_ops
        # The server's own count: exactly one script call per operation.
        assert row["script_calls"] == row["ops"], row
        assert row["script_calls_per_op"] == 1
        assert len(row["round_ratio_p50"]) == report["plan"]["rounds"]
    assert rows[0]["ratio_p50"] == 1
