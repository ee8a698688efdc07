"""ratelimit.toml: load_config, its errors (file, line, key), and what it builds on real servers."""

from __future__ import annotations

import pickle
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
import redis
from fake_anthropic import FakeAnthropic

import ratelimit.asyncio
from ratelimit import (
    Budget,
    BudgetExceeded,
    ConfigError,
    InvalidArgument,
    Limiter,
    Rate,
    Retention,
    load_config,
)
from ratelimit.anthropic import DIMENSIONS, wrap
from ratelimit.anthropic.config import WrapConfig
from ratelimit.cli import main
from ratelimit.config_file import CONFIG_ENV
from ratelimit.config_file.schema import WRAPPER_DIMENSIONS

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ratelimit.toml"
#: Seconds over which a test's rates refill: slow enough that levels stay exact.
SLOW = 10**9


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ratelimit.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the example


def test_the_example_file_loads_with_every_kind_of_setting() -> None:
    config = load_config(EXAMPLE)
    assert config.limiters == (
        "sonnet",
        "team-b",
        "org",
        "anthropic:claude-sonnet-4",
        "anthropic:claude-haiku-4-5",
        "anthropic:budget",
    )
    sonnet = config.scope("sonnet")
    assert sonnet.rates == {
        "requests": Rate(4000, per=60),
        "input_tokens": Rate(2_000_000, per=60),
        "output_tokens": Rate(400_000, per=60, burst=200_000),
    }
    assert (sonnet.slot, sonnet.lease_s, sonnet.on_redis_error) == ("acme", 600.0, "raise")
    assert sonnet.keys.slot == "acme"
    team = config.scope("team-b")
    assert team.rates == {}
    assert team.budget == Budget("50", per="day", tz="Europe/Paris", alerts=(0.5, 0.8, 1.0))
    assert team.retention == Retention(max_age_s=2_592_000, tz="UTC")
    assert team.limiter_kwargs() == {
        "slot": "acme",
        "retention": team.retention,
        "usd": team.budget,
    }
    # The wrapper's scopes, named as wrap() names them, in its slot.
    family = config.scope("anthropic:claude-sonnet-4")
    assert family.slot == "anthropic"
    assert family.rates["requests"] == Rate(4000, per=60, burst=3996)
    assert config.scope("anthropic:budget").dimensions == {"usd": Budget(50, per="day")}


def test_the_example_wrap_kwargs_are_what_wrap_accepts() -> None:
    kwargs = load_config(EXAMPLE).wrap_kwargs()
    assert kwargs["budget"] == Budget(50, per="day")
    assert set(kwargs["limits"]) == {"claude-sonnet-4", "claude-haiku-4-5"}
    built = WrapConfig.build(kwargs)
    assert (built.name, built.estimate, built.max_attempts) == ("anthropic", "local", 5)
    assert (built.lease_s, built.acquire_timeout) == (600.0, 60.0)


def test_the_file_accepts_exactly_the_anthropic_dimensions() -> None:
    assert WRAPPER_DIMENSIONS == DIMENSIONS


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("name", '""'),
        ("name", "3"),
        ("estimate", '"exact"'),
        ("estimate", "1"),
        ("max_attempts", "0"),
        ("max_attempts", "2.5"),
        ("max_attempts", "true"),
        ("lease_s", "0"),
        ("lease_s", '"600"'),
        ("acquire_timeout", "-1"),
        ("acquire_timeout", '"soon"'),
    ],
)
def test_the_file_refuses_what_wrap_refuses(tmp_path: Path, key: str, value: str) -> None:
    path = write(
        tmp_path,
        f"[anthropic]\n{key} = {value}\n[anthropic.limits.claude]\nrequests = {{ amount = 1 }}\n",
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert (refused.value.line, refused.value.key) == (2, f"anthropic.{key}")
    options: dict[str, Any] = {"limits": {"claude": {"requests": Rate(1)}}}
    options[key] = tomllib.loads(f"v = {value}")["v"]
    with pytest.raises(InvalidArgument) as wrap_refused:
        WrapConfig.build(options)
    assert refused.value.problem == str(wrap_refused.value)


# --------------------------------------------------------------------------- errors

ERRORS = [
    # (file text, line, key, part of the problem)
    ("[scope.a]\nlease_s = = 3\n", 2, "scope.a.lease_s", "not valid TOML"),
    ("[scope.a.rates]\nrequests = { amount = 1 \n", 2, "scope.a.rates.requests", "not valid TOML"),
    ("timeout = 3\n", 1, "timeout", "unknown key; expected one of scope, anthropic"),
    ("scope = 3\n", 1, "scope", "must be a table"),
    ("[scope.a]\nrates = {}\nleese_s = 3\n", 3, "scope.a.leese_s", "unknown key"),
    ('[scope.""]\nslot = "x"\n', 1, 'scope.""', "a scope name must not be empty"),
    ("[scope.a]\nslot = 'x'\n", 1, "scope.a", "needs at least one dimension"),
    (
        "[scope.a.rates]\nrequests = { amount = -1, per = 60 }\n",
        2,
        "scope.a.rates.requests.amount",
        "Rate amount must be positive, got -1",
    ),
    (
        '[scope."anthropic/sonnet".rates]\nrequests = { amount = 1, per = "60" }\n',
        2,
        'scope."anthropic/sonnet".rates.requests.per',
        "Rate per must be a number, not str",
    ),
    (
        "[scope.a.rates.requests]\namount = 1\n\nburst = 0.0000001\n",
        4,
        "scope.a.rates.requests.burst",
        "must hold at least one micro-unit",
    ),
    ("[scope.a.rates]\nrequests = 40\n", 2, "scope.a.rates.requests", "must be a table"),
    ("[scope.a.rates]\nrequests = { per = 60 }\n", 2, "scope.a.rates.requests", "'amount'"),
    (
        "[scope.a.rates]\nrequests = { amount = 1, every = 60 }\n",
        2,
        "scope.a.rates.requests.every",
        "unknown key; expected one of amount, per, burst",
    ),
    ("[scope.a.rates]\ntimeout = { amount = 1 }\n", 2, "scope.a.rates.timeout", "invalid"),
    (
        "[scope.a]\non_redis_error = 'maybe'\nrates = { requests = { amount = 1 } }\n",
        2,
        "scope.a.on_redis_error",
        "on_redis_error must be one of",
    ),
    (
        "[scope.a]\nslot = ''\nrates = { requests = { amount = 1 } }\n",
        2,
        "scope.a.slot",
        "slot must not be empty",
    ),
    (
        "[scope.a]\nlease_s = -5\nrates = { requests = { amount = 1 } }\n",
        2,
        "scope.a.lease_s",
        "lease_s must be positive",
    ),
    ("[scope.a.budget]\nusd = -5\n", 2, "scope.a.budget.usd", "between one nano-dollar"),
    ("[scope.a.budget]\nusd = true\n", 2, "scope.a.budget.usd", "must be a number, not bool"),
    ("[scope.a.budget]\nper = 'day'\n", 1, "scope.a.budget", "'usd' is required"),
    ("[scope.a.budget]\nusd = 5\nper = 'week'\n", 3, "scope.a.budget.per", "'day' or 'month'"),
    ("[scope.a.budget]\nusd = 5\n\ntz = 'Mars/Base'\n", 4, "scope.a.budget.tz", "unknown time"),
    (
        "[scope.a.budget]\nusd = 5\nalerts = [0.5,\n  -1]\n",
        3,
        "scope.a.budget.alerts",
        "alert threshold must be positive",
    ),
    (
        "[scope.a]\nbudget = { usd = 1 }\n[scope.a.rates]\nusd = { amount = 1 }\n",
        4,
        "scope.a.rates.usd",
        "the budget is the dimension 'usd'",
    ),
    (
        "[scope.a]\nbudget = { usd = 1 }\nretention = { maxlen = 1.5 }\n",
        3,
        "scope.a.retention.maxlen",
        "maxlen must be a non-negative int",
    ),
    ("scope.a.rates.requests.amount = 0\n", 1, "scope.a.rates.requests.amount", "positive"),
    ("[anthropic]\nname = 'x'\n", 1, "anthropic", "'limits' is required"),
    ("[anthropic]\nlimits = {}\n", 2, "anthropic.limits", "at least one model family"),
    ("[anthropic.limits.claude]\n", 1, "anthropic.limits.claude", "must set a rate"),
    (
        "[anthropic.limits.claude]\nusd = { amount = 1 }\n",
        2,
        "anthropic.limits.claude.usd",
        "unknown key; expected one of requests, input_tokens, output_tokens",
    ),
    (
        "[anthropic]\nlimts = 1\n[anthropic.limits.claude]\nrequests = { amount = 1 }\n",
        2,
        "anthropic.limts",
        "unknown key",
    ),
    (
        "[anthropic.limits.claude]\nrequests = { amount = 1 }\n[anthropic.budget]\nusd = 0\n",
        4,
        "anthropic.budget.usd",
        "between one nano-dollar",
    ),
    (
        "[scope.'anthropic:claude'.rates]\nrequests = { amount = 1 }\n"
        "[anthropic.limits.claude]\nrequests = { amount = 1 }\n",
        3,
        "anthropic.limits.claude",
        "'anthropic:claude' is also a [scope] table, line 1",
    ),
    (
        # A multi-line string that looks like keys does not move the line found.
        '[scope.a]\nslot = """\nlease_s = 1\n"""\nlease_s = 0\nrates = { r = { amount = 1 } }\n',
        5,
        "scope.a.lease_s",
        "lease_s must be positive",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "problem"), ERRORS)
def test_every_error_names_the_file_the_line_and_the_key(
    tmp_path: Path, text: str, line: int, key: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    error = refused.value
    assert isinstance(error, InvalidArgument)
    assert (error.file, error.line, error.key) == (str(path), line, key)
    assert problem in error.problem
    assert str(error) == f"{path}:{line}: {key}: {error.problem}"


def test_a_file_that_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it") as refused:
        load_config(tmp_path / "missing.toml")
    assert refused.value.line is None
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(path)


def test_config_error_pickles() -> None:
    error = ConfigError("Rate amount must be positive", file="r.toml", line=3, key="scope.a")
    got = pickle.loads(pickle.dumps(error))
    assert type(got) is ConfigError
    assert (str(got), got.file, got.line, got.key) == (
        str(error),
        "r.toml",
        3,
        "scope.a",
    )


def test_the_environment_variable_names_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(InvalidArgument, match=CONFIG_ENV):
        load_config()
    path = write(tmp_path, "[scope.a.rates]\nrequests = { amount = 5 }\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    config = load_config()
    assert (config.file, config.limiters) == (str(path), ("a",))
    with pytest.raises(InvalidArgument, match="configures no scope 'b'; it configures 'a'"):
        config.scope("b")


def test_wrap_kwargs_needs_an_anthropic_table(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[scope.a.rates]\nrequests = { amount = 5 }\n"))
    with pytest.raises(InvalidArgument, match=r"no \[anthropic\] table"):
        config.wrap_kwargs()


# --------------------------------------------------------------------------- on a real server

LIMITS = f"""\
[scope.chat]
slot = "acme"
lease_s = 30

[scope.chat.rates]
requests = {{ amount = 2, per = {SLOW} }}

[scope.team]
slot = "acme"
budget = {{ usd = "1.00", per = "day", alerts = [0.5] }}
"""


def test_a_limiter_from_the_file_admits_and_refuses_as_configured(
    tmp_path: Path, r: redis.Redis
) -> None:
    config = load_config(write(tmp_path, LIMITS))
    chat = config.limiter("chat", r)
    assert isinstance(chat, Limiter)
    assert chat.try_acquire() is not None
    assert chat.try_acquire() is not None
    assert chat.try_acquire() is None  # two per SLOW seconds, as the file says
    assert any(b"{acme}" in key for key in r.keys("rl:v2:*"))
    alerts: list[object] = []
    team = config.limiter("team", r, on_alert=alerts.append)
    team.acquire(usd="0.60").settle(usd="0.60")
    with pytest.raises(BudgetExceeded):
        team.acquire(usd="0.60")
    assert team.state().budget("usd").limit == Decimal("1.00")
    assert len(alerts) == 1  # the file's one threshold, 50%
    # Another process building the same scope from the same file shares the bucket.
    assert load_config(write(tmp_path, LIMITS)).limiter("chat", r).try_acquire() is None


async def test_the_async_twin_shares_the_same_scope(tmp_path: Path, redis_url: str) -> None:
    config = load_config(write(tmp_path, LIMITS))
    limiter = config.async_limiter("chat", redis_url)
    assert isinstance(limiter, ratelimit.asyncio.Limiter)
    assert await limiter.try_acquire() is not None
    assert config.limiter("chat", redis_url).try_acquire() is not None
    assert await limiter.try_acquire() is None
    await limiter.client.aclose()


WRAPPER = f"""\
[anthropic]
name = "svc"
max_attempts = 2

[anthropic.budget]
usd = 5

[anthropic.limits.claude-sonnet-4]
requests = {{ amount = 10, per = {SLOW} }}
output_tokens = {{ amount = 10_000, per = {SLOW} }}
"""


def test_wrap_kwargs_configure_the_real_anthropic_client(tmp_path: Path, redis_url: str) -> None:
    config = load_config(write(tmp_path, WRAPPER))
    with FakeAnthropic() as fake:
        sdk = anthropic.Anthropic(
            base_url=fake.base_url,
            api_key="test",
            http_client=anthropic.DefaultHttpxClient(verify=False),
        )
        with wrap(sdk, redis_url, **config.wrap_kwargs()) as client:
            message = client.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=64,
                messages=[{"role": "user", "content": "Say hello."}],
            )
            budget = client.guard.budget
            assert budget is not None
            assert budget.name == "svc:budget"
            assert budget.state().budget("usd").limit == Decimal(5)
            [entry] = budget.ledger_entries()
            assert entry.model == "claude-sonnet-4-6"
        assert fake.stats().accepted == 1
    # The configuration names the scope the wrapper used, and reads its buckets.
    family = config.limiter("svc:claude-sonnet-4", redis_url).state()
    assert family.rate("requests").available == pytest.approx(9, abs=0.01)
    assert family.rate("output_tokens").available == pytest.approx(
        10_000 - message.usage.output_tokens, abs=0.01
    )


# --------------------------------------------------------------------------- the command line


def test_the_cli_takes_a_scopes_slot_from_the_file(
    tmp_path: Path, r: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, LIMITS)
    team = load_config(path).limiter("team", r)
    team.acquire(usd="0.25", model="claude-haiku-4-5").settle(usd="0.25")
    assert main(["--config", str(path), "spend", "team", "--redis-url", redis_url]) == 0
    assert "0.25" in capsys.readouterr().out
    # Without the file, the scope is looked for in its own slot, where it is not.
    assert main(["spend", "team", "--redis-url", redis_url]) == 0
    assert "there is no rl:v2:{team}:team:spend" in capsys.readouterr().err


def test_the_cli_reports_an_error_in_the_file_and_exits_2(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[scope.team]\nbudget = { usd = -1 }\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    result = subprocess.run(
        [sys.executable, "-m", "ratelimit", "ledger", "team", "--redis-url", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"ratelimit ledger: {path}:2: scope.team.budget.usd: Budget usd" in result.stderr
