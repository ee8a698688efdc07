"""``ratelimit status`` as a user runs it, and ``$REDIS_URL`` for every command."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from rich.console import Console

from ratelimit import Budget, Limiter, LimiterGroup, Rate, deployment
from ratelimit.cli import main
from ratelimit.cli.parser import build_parser
from ratelimit.cli.status import run_status

COMMANDS = (["status"], ["ledger", "x"], ["spend", "x"], ["alerts", "x"], ["exporter"])


def ratelimit(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m ratelimit ARGS`` in a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "ratelimit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def url_env(redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return {**env, **extra}


@pytest.fixture
def deployment_in_use(r: redis.Redis) -> dict[str, Limiter]:
    """A few scopes as an application leaves them: used, booked, with a budget in flight."""
    chat = Limiter(r, "chat", requests=Rate(10, per=60), input_tokens=Rate(10_000, per=60))
    for _ in range(4):
        chat.try_acquire(input_tokens=1_500)
    team = Limiter(r, "team-b", usd=Budget("5"), requests=Rate(100, per=60))
    team.acquire(usd="1").settle(usd="0.42")
    team.acquire(usd="0.25")  # stays in flight
    family = Limiter(r, "wrap:sonnet", slot="wrap", requests=Rate(50, per=60))
    budget = Limiter(r, "wrap:budget", slot="wrap", usd=Budget("20"))
    LimiterGroup(family, budget).acquire(usd="0.1")
    return {"chat": chat, "team-b": team, "wrap:sonnet": family, "wrap:budget": budget}


def test_status_prints_every_scope_as_a_table(
    redis_url: str, deployment_in_use: dict[str, Limiter]
) -> None:
    result = ratelimit("status", env=url_env(redis_url, COLUMNS="140"))
    assert result.returncode == 0, result.stderr
    assert f"ratelimit status: server {redis_url} (from $REDIS_URL)" in result.stderr
    out = result.stdout
    for name in ("chat", "team-b", "wrap:sonnet", "wrap:budget", "{wrap}"):
        assert name in out
    assert "Rates" in out
    assert "Budgets (USD)" in out
    assert "Permits in flight" in out
    # team-b: spent 0.42, 0.25 reserved, limit 5, so 4.33 available.
    team_row = next(line for line in out.splitlines() if "team-b" in line and "0.42" in line)
    assert team_row.split()[1:5] == ["0.42", "0.25", "5.00", "4.33"]
    assert "usd=$0.10" in out  # the group's permit, counted for the budget scope


def test_status_json_is_the_snapshot_with_decimals_as_strings(
    redis_url: str, deployment_in_use: dict[str, Limiter]
) -> None:
    result = ratelimit("status", "--json", "team-b", "chat", "--redis-url", redis_url)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["server"] == redis_url
    assert set(document) == {"server", "time", "time_us", "truncated", "scopes", "unmatched_groups"}
    scopes = {scope["name"]: scope for scope in document["scopes"]}
    assert set(scopes) == {"chat", "team-b"}
    state = deployment_in_use["team-b"].state().budget("usd")
    budget = scopes["team-b"]["budget"]
    assert budget["spent_usd"] == "0.42"
    assert budget["reserved_usd"] == "0.25"
    assert Decimal(budget["limit_usd"]) == state.limit
    assert budget["resets_at"] == state.resets_at.isoformat()
    assert scopes["team-b"]["in_flight"] == {
        "permits": 1,
        "expired": 0,
        "summed": True,
        "reserved": {"requests": "1", "usd": "0.25"},
    }
    rates = {rate["dimension"]: rate for rate in scopes["chat"]["rates"]}
    assert rates["input_tokens"]["capacity"] == "10000"
    assert rates["input_tokens"]["rate_fraction"] == "500/3"
    assert isinstance(rates["requests"]["available"], str)


def test_status_names_a_scope_it_cannot_find(redis_url: str) -> None:
    result = ratelimit("status", "nobody", "--json", env=url_env(redis_url))
    assert result.returncode == 0
    assert json.loads(result.stdout)["scopes"] == []
    assert "nobody: no keys in Redis" in result.stderr


def test_watch_redraws_in_place_for_a_bounded_time(
    redis_url: str, deployment_in_use: dict[str, Limiter]
) -> None:
    args = build_parser().parse_args(
        ["status", "--watch", "--interval", "0.05", "--count", "3", "--redis-url", redis_url]
    )
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=140)
    assert run_status(args, console=console) == 0
    drawn = screen.getvalue()
    # Three reads, each drawn (rich draws the last once more as the view closes).
    assert drawn.count("ratelimit status") >= 3
    assert "\x1b[1A" in drawn or "\x1b[A" in drawn  # the cursor goes back up: in place


def test_watch_json_prints_one_document_per_refresh(redis_url: str, r: redis.Redis) -> None:
    Limiter(r, "w", requests=Rate(1, per=60)).try_acquire()
    result = ratelimit(
        "status",
        "--json",
        "--watch",
        "--interval",
        "0.05",
        "--count",
        "2",
        "--redis-url",
        redis_url,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["time_us"] < second["time_us"]
    assert [scope["name"] for scope in second["scopes"]] == ["w"]


def test_watch_stops_cleanly_on_ctrl_c(redis_url: str) -> None:
    import signal

    process = subprocess.Popen(
        [sys.executable, "-m", "ratelimit", "status", "--watch", "--interval", "0.1"],
        env=url_env(redis_url, COLUMNS="120", FORCE_COLOR="1"),  # drawn as on a terminal
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert "ratelimit status" in process.stdout.readline()  # the live view is up
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err


def test_status_with_configured_scopes_shows_limits_and_idle_scopes(
    redis_url: str, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    Limiter(r, "chat", requests=Rate(10, per=60)).try_acquire()
    configured = deployment.configured_scopes(
        {"chat": {"requests": Rate(20, per=60)}, "quiet": {"requests": Rate(5)}}
    )
    args = build_parser().parse_args(["status", "--redis-url", redis_url])
    screen = io.StringIO()
    assert run_status(args, configured=configured, console=Console(file=screen, width=140)) == 0
    out = screen.getvalue()
    assert "configured" in out
    assert "20 at 0.3/s" in out
    assert "full / idle (no keys in Redis): quiet" in out


def test_every_command_reads_redis_url_and_says_which_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret@127.0.0.1:1/0")
    # The exporter serves ratelimit_up 0 while Redis is down: see test_metrics.py.
    for command in COMMANDS[:-1]:
        assert main(command) == 2  # nothing listens there
        err = capsys.readouterr().err
        assert f"ratelimit {command[0]}: server redis://***@127.0.0.1:1/0 (from $REDIS_URL)" in err
        assert "s3cret" not in err
    monkeypatch.delenv("REDIS_URL")
    for command in COMMANDS:
        with pytest.raises(SystemExit) as stopped:
            main(command)
        assert stopped.value.code == 2
        assert "give --redis-url URL or set REDIS_URL" in capsys.readouterr().err


def test_the_demo_uses_redis_url(redis_url: str) -> None:
    result = ratelimit(
        "demo", "--workers", "1", "--seconds", "1", "--name", "via-env", env=url_env(redis_url)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"at {redis_url}" in result.stdout
    assert "(from $REDIS_URL)" in result.stderr


def test_without_the_extras_the_commands_name_them(redis_url: str, tmp_path: Path) -> None:
    # A Python that cannot import rich or prometheus_client, as after a bare install.
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\nfor name in ('rich', 'prometheus_client'):\n    sys.modules[name] = None\n"
    )
    env = url_env(redis_url, PYTHONPATH=str(tmp_path))
    table = ratelimit("status", env=env)
    assert table.returncode == 2
    assert "pip install 'llm-quota-guard[cli]'" in table.stderr
    assert ratelimit("status", "--json", env=env).returncode == 0
    exporter = ratelimit("exporter", env=env)
    assert exporter.returncode == 2
    assert "pip install 'llm-quota-guard[metrics]'" in exporter.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ratelimit.metrics\n"
            "try:\n    ratelimit.metrics.enable()\nexcept ratelimit.errors.MissingExtra as e:\n"
            "    print(e)\n",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pip install 'llm-quota-guard[metrics]'" in missing.stdout
    # Installed or not, the base import and the command line do not load them.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ratelimit, ratelimit.cli, ratelimit.metrics, ratelimit.deployment\n"
            "assert 'rich' not in sys.modules and 'prometheus_client' not in sys.modules\n",
        ],
        check=True,
    )
