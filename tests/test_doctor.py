"""``ratelimit doctor``: each check on a server that passes it and on one that fails it."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shlex
import time
from pathlib import Path

import pytest
import redis
from topology import ServerFactory, acl_user

from ratelimit import Budget, Limiter, Rate
from ratelimit.cli import main
from ratelimit.core.keys import ScopeKeys
from ratelimit.postgres import SYNC_GROUP, sync_lag


def doctor(url: str, *options: str) -> tuple[int, dict[str, str]]:
    """Run ``ratelimit doctor`` on ``url``: its exit code and each check's line."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["doctor", "--redis-url", url, *options])
    lines = out.getvalue().splitlines()[1:]
    verdicts: dict[str, str] = {}
    for line in lines:
        mark, rest = line.split(" ", 1)
        name, detail = rest.strip().split(": ", 1)
        verdicts[name] = f"{mark} {detail}"
    return code, verdicts


def test_a_healthy_server_passes_every_check(redis_url: str) -> None:
    Limiter(redis_url, "chat", requests=Rate(10, per=60)).try_acquire()
    code, verdicts = doctor(redis_url)
    assert code == 0, verdicts
    for name in ("connection", "server version", "eviction", "persistence", "scripts"):
        assert verdicts[name].startswith("ok"), verdicts
    assert verdicts["data loss"] == "ok no budget lost its spend (0 budgets)"
    assert not [v for v in verdicts.values() if v.startswith("FAIL")]


def test_budgets_without_persistence_fail(start_server: ServerFactory) -> None:
    server = start_server()
    Limiter(server.url, "team", usd=Budget(5)).acquire(usd="1").settle(usd="0.5")
    code, verdicts = doctor(server.url)
    assert code == 1
    assert verdicts["persistence"].startswith("FAIL appendonly no: a restart loses")
    assert verdicts["data loss"] == "ok no budget lost its spend (1 budgets)"

    durable = start_server("--appendonly", "yes")
    Limiter(durable.url, "team", usd=Budget(5)).acquire(usd="1").settle(usd="0.5")
    assert doctor(durable.url)[0] == 0


def test_an_evicting_policy_fails(start_server: ServerFactory) -> None:
    server = start_server("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    code, verdicts = doctor(server.url)
    assert code == 1
    assert verdicts["eviction"].startswith("FAIL maxmemory 67108864 bytes, policy allkeys-lru")


def test_a_budget_whose_spend_was_lost_fails_and_names_the_fix(start_server: ServerFactory) -> None:
    server = start_server("--appendonly", "yes")
    team = Limiter(server.url, "team", usd=Budget(5))
    team.acquire(usd="1").settle(usd="0.75")
    server.admin.delete(ScopeKeys("team", "team").budget)  # as an eviction or a flush would
    team.acquire(usd="0.1")  # restores the floor this process saw, and marks the loss
    code, verdicts = doctor(server.url)
    assert code == 1
    assert verdicts["budget team"].startswith("FAIL Redis lost this budget's spend at 20")
    assert "a floor of $0.75 was restored" in verdicts["budget team"]
    assert verdicts["budget team"].endswith("ratelimit restore")


def test_a_user_missing_a_command_fails_and_the_readme_user_passes(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    with acl_user(server, "no-xadd", "~rl:v2:*", "+@all", "-xadd") as user:
        code, verdicts = doctor(user.url)
        assert code == 1
        assert verdicts["permissions"].startswith("FAIL the Redis user may not run: XADD")
    with acl_user(server, "no-channel", "~rl:v2:*", "resetchannels", "+@all") as user:
        code, verdicts = doctor(user.url)
        assert code == 1
        assert verdicts["alert channel"].startswith("FAIL alerts cannot be published")


def test_a_user_without_info_gets_a_skip_not_a_failure(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server()
    with acl_user(server, "no-info", "~rl:v2:*", "&*", "+@all", "-info") as user:
        code, verdicts = doctor(user.url)
        with caplog.at_level(logging.INFO, logger="ratelimit"):
            assert Limiter(user.url, "chat", requests=Rate(5)).try_acquire() is not None
    assert code == 0, verdicts
    assert verdicts["server"].startswith("skip INFO is not permitted here")
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        (
            "INFO",
            "deployment check server could not tell: INFO is not available: "
            "this user has no permissions to run the 'info' command",
        )
    ]


def test_a_wrong_password_fails_the_connection(start_server: ServerFactory) -> None:
    server = start_server()
    with acl_user(server, "someone", "~rl:v2:*", "+@all") as user:
        code, verdicts = doctor(user.wrong_password_url)
    assert code == 1
    assert list(verdicts) == ["connection"]
    assert verdicts["connection"].startswith("FAIL")


def wait_lag_over(client: redis.Redis, seconds: float) -> None:
    deadline = time.monotonic() + 30
    while True:
        [lag] = sync_lag(client)
        if lag.oldest_unsynced_age_s is not None and lag.oldest_unsynced_age_s > seconds:
            return
        assert time.monotonic() < deadline, lag
        time.sleep(0.05)


def test_a_sync_that_fell_behind_fails(r: redis.Redis, redis_url: str) -> None:
    team = Limiter(r, "team", usd=Budget(5))
    team.acquire(usd="1").settle(usd="0.5")
    ledger = ScopeKeys("team", "team").ledger
    assert "sync team" not in doctor(redis_url)[1]  # no sync follows: nothing to say

    r.xgroup_create(ledger, SYNC_GROUP, id="$")  # a sync that has read everything
    code, verdicts = doctor(redis_url)
    assert verdicts["sync team"] == "ok PostgreSQL holds every ledger entry"

    team.acquire(usd="1").settle(usd="0.25")  # an entry the sync has not read
    wait_lag_over(r, 0.2)
    code, verdicts = doctor(redis_url, "--max-sync-lag", "0.2")
    assert code == 1
    assert verdicts["sync team"].startswith("FAIL the oldest entry not in PostgreSQL is")
    code, verdicts = doctor(redis_url, "--max-sync-lag", "3600")
    assert verdicts["sync team"].startswith("ok ")


def test_doctor_needs_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["doctor"])
    assert exc.value.code == 2


def test_the_readme_operator_user_may_run_every_check(start_server: ServerFactory) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    [rule] = re.findall(r"^ACL SETUSER ratelimit-ops .*$", readme, flags=re.M)
    words = shlex.split(rule)
    [password] = [word[1:] for word in words if word.startswith(">")]
    server = start_server("--appendonly", "yes")
    server.admin.execute_command(*words)  # type: ignore[no-untyped-call]  # untyped in redis-py
    url = server.url_for(words[2], password)
    team = Limiter(url, "team", usd=Budget(5))
    team.acquire(usd="1").settle(usd="0.5")
    server.admin.xgroup_create(ScopeKeys("team", "team").ledger, SYNC_GROUP, id="$")
    code, verdicts = doctor(url)
    assert code == 0, verdicts
    assert [v for v in verdicts.values() if not v.startswith("ok")] == []
    assert verdicts["sync team"] == "ok PostgreSQL holds every ledger entry"
