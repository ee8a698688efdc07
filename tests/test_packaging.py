"""The Lua scripts and the price table are found from an editable install and from a built wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter outside the repository: imports ratelimit, says
# where its scripts come from, makes one admission through them, and prices a
# usage with the packaged table.
PROBE = """
import sys
import ratelimit, ratelimit.scripts as s
from ratelimit import Limiter, Pricing, Rate
permit = Limiter(sys.argv[1], "packaging", requests=Rate(5, per=60)).acquire()
print(ratelimit.__file__)
print(s.lua_dir())
print(permit.settle().status)
print(Pricing.default().cost("claude-haiku-4-5", {"input_tokens": 10**6}))
"""


def _probe(redis_url: str, tmp_path: Path, pythonpath: str | None = None) -> list[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run(
        [sys.executable, "-c", PROBE, redis_url],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


@pytest.mark.slow
def test_scripts_found_from_a_built_wheel(redis_url: str, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(dist)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = dist.glob("llm_quota_guard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for script in ("lib/bucket", "lib/args", "acquire", "settle", "state", "restore"):
        assert f"ratelimit/lua/{script}.lua" in names
    assert "ratelimit/pricing/prices.toml" in names
    for static in ("index.html", "dashboard.js", "dashboard.css"):  # the dashboard's page
        assert f"ratelimit/dashboard/static/{static}" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    module, lua, status, cost = _probe(redis_url, tmp_path, pythonpath=str(target))
    assert Path(module).is_relative_to(target)
    assert Path(lua) == target / "ratelimit" / "lua"
    assert status == "settled"
    assert cost == "1.000000"


def test_scripts_found_from_the_editable_install(redis_url: str, tmp_path: Path) -> None:
    module, lua, status, cost = _probe(redis_url, tmp_path)
    assert Path(module) == REPO / "ratelimit" / "__init__.py"
    assert Path(lua) == REPO / "lua"
    assert status == "settled"
    assert cost == "1.000000"
