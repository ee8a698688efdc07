"""Restricted Redis users: what a user without the alert channel sees, and the minimal ACL rule.

The issue measured, with a user allowed the project's keys but no channel
(Redis 7's default ``resetchannels``): a settle that crossed an alert
threshold failed at ``PUBLISH`` after it had written the spend counter, the
ledger entry and the alert entry; each retry wrote them again ($1.80 in the
ledger, $0 spent), and once the lease ended every ``acquire`` and ``state()``
raised and appended another "reclaimed" entry. Now the ``PUBLISH`` runs under
``redis.pcall``: the alert reaches the stream and ``on_alert``, a WARNING says
publishing is denied, and nothing is written twice.

Then the README's rule (Deploying, "TLS and users"): an explicit list of
commands on the project's keys and its one channel, no categories. Every
public operation works as that user, each command of the list is needed by
one of them, and the user touches nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import re
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from topology import Server, ServerFactory, acl_user

import ratelimit.asyncio
from ratelimit import Alert, Budget, Limiter, LimiterGroup, Rate, RedisMisconfigured
from ratelimit.cli import main
from ratelimit.core.keys import ALERT_CHANNEL, ScopeKeys

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
DEPLOYING = README.split("\n## Deploying\n", 1)[1].split("\n## ", 1)[0]


def server_time_s(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return int(seconds) + int(micros) / 1e6


def wait_server_time(client: redis.Redis, until_s: float) -> None:
    """Poll the server's clock until it passes ``until_s`` (bounded)."""
    deadline = time.monotonic() + 30
    while server_time_s(client) <= until_s:
        assert time.monotonic() < deadline, "the server's clock did not move"
        time.sleep(0.02)


# -- a user with the keys but no channel ---------------------------------------------------


def test_a_user_without_the_channel_gets_its_alerts_once_and_keeps_working(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server()
    with acl_user(server, "no-channel", "~rl:v2:*", "resetchannels", "+@all") as user:
        heard: list[Alert] = []
        team = Limiter(
            user.url,
            "team",
            usd=Budget(1, alerts=(0.5, 0.8)),
            lease_s=0.5,
            on_alert=heard.append,
        )
        permit = team.acquire(usd="0.6")
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("alert channel" in w and "cannot be published" in w for w in warnings)

        settlement = permit.settle(usd="0.6")  # crosses 50%: its PUBLISH is denied
        assert settlement.applied
        assert [a.threshold for a in settlement.alerts] == [0.5]
        assert [a.threshold for a in heard] == [0.5]
        assert "could not be published" in caplog.text
        assert not permit.settle(usd="0.6").applied  # a retry writes nothing again
        assert team.settle(permit.id, usd="0.6").status == "unknown"

        keys = ScopeKeys("team", "team")
        assert team.state().budget("usd").spent == Decimal("0.6")
        assert [e.cost_usd for e in team.ledger_entries()] == [Decimal("0.6")]
        assert server.admin.xlen(keys.alerts) == 1
        assert team.spend() == {team.ledger_entries()[0].day: {"": Decimal("0.6")}}

        # A permit whose lease ends unsettled is reclaimed by the next call, whose
        # charge crosses 80%: the reclaim publishes nothing either, and goes on.
        lost = team.acquire(usd="0.25")
        wait_server_time(server.admin, lost.admitted_at_us / 1e6 + 0.5)
        assert team.try_acquire(usd="0.1") is not None
        assert [a.threshold for a in heard] == [0.5, 0.8]
        kinds = [e.kind for e in team.ledger_entries()]
        assert kinds == ["settled", "reclaimed"]
        assert server.admin.xlen(keys.alerts) == 2
        state = team.state().budget("usd")
        assert (state.spent, state.reserved) == (Decimal("0.85"), Decimal("0.1"))
        assert [a.threshold for a in team.alert_history()] == [0.5, 0.8]
        assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_user_without_a_command_the_scripts_need_is_refused_before_anything_is_written(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    with acl_user(server, "no-xadd", "~rl:v2:*", "+@all", "-xadd") as user:
        team = Limiter(user.url, "team", usd=Budget(1), on_redis_error="allow")
        with pytest.raises(RedisMisconfigured, match="XADD"):
            team.acquire(usd="0.5")
        assert server.admin.dbsize() == 0


# -- the README's rule ---------------------------------------------------------------------


def readme_rule() -> list[str]:
    [rule] = re.findall(r"^ACL SETUSER ratelimit .*$", DEPLOYING, flags=re.M)
    return shlex.split(rule)


def test_the_readme_rule_is_an_explicit_list() -> None:
    words = readme_rule()
    assert words[:4] == ["ACL", "SETUSER", "ratelimit", "reset"]  # starts from nothing
    assert "~rl:v2:*" in words
    assert words.index("resetchannels") < words.index(f"&{ALERT_CHANNEL}")
    assert [w for w in words if w.startswith(("~", "%", "&"))] == ["~rl:v2:*", f"&{ALERT_CHANNEL}"]
    assert not [w for w in words if "@" in w], "no command categories: each command by name"
    assert not [w for w in words if w.startswith("-")]
    assert len(commands_of(words)) == len(set(commands_of(words)))


def commands_of(words: list[str]) -> list[str]:
    return [w[1:] for w in words if w.startswith("+")]


@contextmanager
def readme_user(server: Server, *, without: str | None = None) -> Iterator[str]:
    """The README's user on ``server`` (less the command ``without``); its URL."""
    words = readme_rule()
    name, password = words[2], secrets_of(words)
    rules = [w for w in words[3:] if w != f"+{without}"]
    server.admin.execute_command("ACL", "SETUSER", name, *rules)  # type: ignore[no-untyped-call]
    try:
        yield server.url_for(name, password)
    finally:
        server.admin.execute_command("ACL", "DELUSER", name)  # type: ignore[no-untyped-call]


def secrets_of(words: list[str]) -> str:
    [password] = [w[1:] for w in words if w.startswith(">")]
    return password


class TerminalStderr(io.StringIO):
    """A stderr that says it is a terminal: the ledger export then counts entries first."""

    def isatty(self) -> bool:
        return True


def exercise_sync(url: str, server: Server) -> None:
    """Every public operation of the sync client, as the user of ``url``."""
    heard: list[Alert] = []
    team = Limiter(
        url,
        "team",
        slot="acme",
        requests=Rate(10, per=60),
        usd=Budget(1, alerts=(0.5,)),
        lease_s=0.3,
        on_alert=heard.append,
    )
    org = Limiter(url, "org", slot="acme", usd=Budget(5))
    chat = Limiter(url, "chat", requests=Rate(10, per=60))
    team.acquire(usd="0.6", model="claude-haiku-4-5", tags={"user": "ann"}).settle(usd="0.6")
    assert [a.threshold for a in heard] == [0.5]
    left = team.try_acquire(usd="0.1")  # left to its lease: reclaimed below
    assert left is not None
    team.acquire(usd="0.1").cancel()
    assert team.record_saving("0.02", model="claude-haiku-4-5") == 1
    assert team.observe(requests=5) == 1
    assert team.state().rate("requests").available < 6
    assert team.spend() != {}
    assert team.saved() != {}
    assert [e.kind for e in team.ledger_entries()] == ["settled", "cancelled", "cache_hit"]
    assert [a.threshold for a in team.alert_history()] == [0.5]

    group = LimiterGroup(team, org)
    wait_server_time(server.admin, left.admitted_at_us / 1e6 + 0.3)
    booked = group.acquire(usd="0.1")  # reclaims the permit whose lease ended first
    assert booked.settle(usd="0.05").applied
    assert group.state()["org.usd"].spent == Decimal("0.05")  # type: ignore[union-attr]
    group.acquire(usd="0.1").cancel()

    chat.acquire().cancel()  # every bucket full again: the rates key goes
    assert not server.admin.exists(ScopeKeys("chat", "chat").rates)
    chat.acquire().settle(requests=1)
    assert chat.try_acquire() is not None  # a permit never settled
    assert 8 <= chat.state().rate("requests").available < 9


async def exercise_async(url: str) -> None:
    """Every public operation of the asyncio client, as the user of ``url``."""
    team = ratelimit.asyncio.Limiter(
        url, "a-team", slot="a-acme", requests=Rate(10, per=60), usd=Budget(1, alerts=(0.5,))
    )
    org = ratelimit.asyncio.Limiter(url, "a-org", slot="a-acme", usd=Budget(5))
    permits = await asyncio.gather(*(team.try_acquire(usd="0.1") for _ in range(5)))
    assert all(p is not None for p in permits)
    settled = await asyncio.gather(*(p.settle(usd="0.12") for p in permits if p is not None))
    assert [s.status for s in settled] == ["settled"] * 5
    await (await team.acquire(usd="0.1")).cancel()
    assert await team.record_saving("0.01", model="m") == 1
    assert await team.observe(requests=2) == 1
    assert (await team.state()).budget("usd").spent == Decimal("0.6")
    assert len(await team.ledger_entries()) == 7
    assert await team.spend() != {}
    assert await team.saved() != {}
    assert [a.threshold for a in await team.alert_history()] == [0.5]
    group = ratelimit.asyncio.LimiterGroup(team, org)
    await (await group.acquire(usd="0.1")).settle(usd="0.1")
    assert (await group.state())["a-org.usd"].spent == Decimal("0.1")  # type: ignore[union-attr]
    await team.client.aclose()
    await org.client.aclose()


def exercise_cli(url: str, capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    """``ratelimit status / ledger / spend / alerts``, as the user of ``url``."""

    def run(*argv: str) -> tuple[str, str]:
        capsys.readouterr()
        code = main([*argv, "--redis-url", url])
        out, err = capsys.readouterr()
        assert code == 0, (argv, err)
        assert "cannot" not in err, (argv, err)
        return out, err

    status = json.loads(run("status", "--json")[0])
    assert {s["name"] for s in status["scopes"]} >= {"team", "org", "a-team"}
    rows = run("ledger", "team", "--slot", "acme", "--format", "csv")[0].splitlines()[1:]
    assert [row.split(",")[4] for row in rows[:3]] == ["settled", "cancelled", "cache_hit"]
    assert "total" in run("spend", "team", "--slot", "acme")[0]
    assert "50%" in run("alerts", "team", "--slot", "acme")[0]
    assert "50%" in run("alerts", "team", "--slot", "acme", "--count", "1")[0]
    # A scope with no ledger: the reader says which key it looked at.
    assert "there is no rl:v2:{nobody}:nobody:ledger" in run("ledger", "nobody")[1]
    terminal = TerminalStderr()
    with monkeypatch.context() as patch:  # on a terminal, the export counts entries first
        patch.setattr(sys, "stderr", terminal)
        code = main(["ledger", "team", "--slot", "acme", "--redis-url", url])
    assert code == 0, terminal.getvalue()
    assert f"total, {len(rows)} entries" in capsys.readouterr().out


def follow_one_alert(url: str, publish: Callable[[], object]) -> str:
    """``ratelimit alerts --follow --count 1`` as the user: the line it prints for ``publish``."""
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ratelimit",
            "alerts",
            "--follow",
            "--count",
            "1",
            "--redis-url",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stderr is not None
        said = ""
        deadline = time.monotonic() + 30
        while "listening on" not in said:  # printed once subscribed
            assert time.monotonic() < deadline, f"not listening within 30 s: {said}"
            if select.select([follow.stderr], [], [], 0.1)[0]:
                line = follow.stderr.readline()
                assert line, f"exited before listening: {said}"
                said += line
        publish()
        out, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
        follow.wait()
    assert follow.returncode == 0, err
    return out


def test_every_public_operation_works_as_the_readme_user(
    start_server: ServerFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start_server()
    with readme_user(server) as url:
        exercise_sync(url, server)
        asyncio.run(exercise_async(url))
        exercise_cli(url, capsys, monkeypatch)
        alert = Limiter(url, "followed", usd=Budget(1, alerts=(0.5,)))
        line = follow_one_alert(url, lambda: alert.acquire(usd="0.7").settle(usd="0.7"))
        assert "followed" in line
        assert "50% reached" in line
    # The deployment checks ran (INFO is allowed) and found every permission.
    messages = [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert not [m for m in messages if "permission" in m or "channel" in m or "INFO" in m]


def test_the_readme_user_touches_nothing_else(start_server: ServerFactory) -> None:
    server = start_server()
    server.admin.set("theirs", "untouched")
    with readme_user(server) as url:
        client = redis.Redis.from_url(url)
        denied: list[Callable[[], object]] = [
            lambda: client.get("theirs"),
            lambda: client.set("theirs", "overwritten"),
            lambda: client.delete("theirs"),
            lambda: client.set("rl:v1:old", 1),
            lambda: client.hset("rl:v2-not-quite", "f", 1),
            lambda: client.publish("another-channel", "hello"),
            lambda: client.eval("return redis.call('SET', KEYS[1], 'x')", 1, "theirs"),
            lambda: client.evalsha("0" * 40, 1, "theirs"),
            client.flushall,
            lambda: client.config_set("maxmemory-policy", "allkeys-lru"),
            lambda: client.keys("*"),
            lambda: client.acl_setuser("ratelimit", rules=["+@all"]),
        ]
        for attempt in denied:
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
        # A script it may load still runs every command under its rights.
        sha = client.script_load("return redis.call('SET', 'theirs', 'from a script')")
        with pytest.raises(redis.exceptions.ResponseError, match="can't access"):
            client.evalsha(sha, 0)
        client.close()
    assert server.admin.get("theirs") == "untouched"


@pytest.mark.slow
def test_each_command_of_the_readme_rule_is_needed(
    start_server: ServerFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without any one of the rule's commands, some public operation fails.

    Two are needed for less: without ``publish`` alerts are not published
    (they reach the stream and ``on_alert``, with a warning); ``info`` is
    optional, and without it the deployment checks cannot tell what they
    check (``ratelimit doctor`` says so), while the limiter works on.
    """
    for command in commands_of(readme_rule()):
        server = start_server()
        caplog.clear()
        with readme_user(server, without=command) as url:
            failures = []
            runs: list[Callable[[], object]] = [
                functools.partial(exercise_sync, url, server),
                functools.partial(asyncio.run, exercise_async(url)),
                functools.partial(exercise_cli, url, capsys, monkeypatch),
            ]
            for run in runs:
                try:
                    run()
                except (Exception, SystemExit) as exc:
                    failures.append(repr(exc))
            if command == "subscribe":
                with pytest.raises(AssertionError, match="no permissions to run the 'subscribe'"):
                    follow_one_alert(url, lambda: None)
                continue
            if command == "info":  # the deployment checks cannot tell; all else works
                assert failures == []
                continue
            if command == "publish":  # alerts reach the stream and on_alert, with a warning
                assert failures == []
                assert "could not be published" in caplog.text
                continue
            assert failures, f"nothing needs {command!r}"
            assert any(command in failure.lower() for failure in failures), failures
        server.stop()
