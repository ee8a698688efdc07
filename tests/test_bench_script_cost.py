"""The instruction-count benchmark's quick run, so the script cannot rot.

It starts its own server under callgrind (valgrind), so it does not take the
suite's server; without valgrind it skips and says so. No figure is asserted
beyond its being counted: instruction counts differ between servers' builds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench_helpers import BENCHMARKS

FIGURES = (
    "ping",
    "try_acquire_1_dim",
    "try_acquire_3_dims",
    "settle_1_dim",
    "rate_cycle",
    "budgeted_acquire",
    "budgeted_settle",
    "budgeted_cycle",
)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("callgrind_control") is None,
    reason="valgrind is not installed (apt-get install valgrind)",
)
def test_quick_script_cost_benchmark_counts_every_call(tmp_path: Path) -> None:
    saved = tmp_path / "cost.json"
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_script_cost.py"), "--quick", "--json", str(saved)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "budgeted cycle / rate-only cycle, in the server" in run.stdout
    figures = json.loads(saved.read_text(encoding="utf-8"))["figures"]
    assert all(figures[name] > 0 for name in FIGURES), figures
    assert figures["rate_cycle"] == pytest.approx(
        figures["try_acquire_1_dim"] + figures["settle_1_dim"]
    )
    assert figures["budgeted_over_rate_cycle"] == pytest.approx(
        figures["budgeted_cycle"] / figures["rate_cycle"]
    )
