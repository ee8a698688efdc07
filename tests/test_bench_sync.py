"""The sync benchmark's quick run, against the suite's server and PostgreSQL, so it cannot rot.

No timing figure is asserted (the machine is shared and noisy); only that
both phases ran and ended with exactly one row per ledger entry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_helpers import run_quick_benchmark

SECTIONS = (
    "llm-quota-guard ledger sync benchmark",
    "PostgreSQL 1",
    "[1] Backlog",
    "[2] Follow",
    "rows/s",
    "lag p99 ms",
)


@pytest.mark.slow
def test_quick_sync_benchmark_copies_every_entry_once(
    server_url: str, ledger_dsn: str, tmp_path: Path
) -> None:
    report = run_quick_benchmark(
        "bench_sync.py", server_url, tmp_path, SECTIONS, options=("--to", ledger_dsn)
    )
    backlog, follow = report["backlog"], report["follow"]
    assert backlog["entries"] == backlog["rows"] == backlog["inserted"] >= 2000
    assert follow["entries"] == follow["rows"] > 0
    assert backlog["exactly_once"]
    assert follow["exactly_once"]
    assert backlog["rows_per_s"] > 0
    assert 0 <= follow["lag_p50_ms"] <= follow["lag_p99_ms"] <= follow["lag_max_ms"]
