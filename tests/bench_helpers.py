"""What the benchmark tests share: a benchmark script's quick run, as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_quick_benchmark(
    script: str,
    server_url: str,
    tmp_path: Path,
    headings: Iterable[str] = (),
    *,
    options: Iterable[str] = (),
    timeout_s: float = 180,
) -> dict[str, Any]:
    """Run ``benchmarks/<script> --quick [options]`` on ``server_url``; its saved JSON report.

    Fails, with the script's output, unless it exits 0 and prints every one of
    ``headings``.
    """
    saved = tmp_path / "bench.json"
    path = str(BENCHMARKS / script)
    run = subprocess.run(
        [
            *(sys.executable, path, "--quick", *options),
            *("--redis-url", server_url, "--json", str(saved)),
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    for heading in headings:
        assert heading in run.stdout, f"{heading!r} missing from:\n{run.stdout}"
    report: dict[str, Any] = json.loads(saved.read_text(encoding="utf-8"))
    return report
