"""The README's "Deploying" guidance holds: the compose file follows it, its ACL rule suffices.

There is no Docker engine on the test machines, so the compose file is read,
not run: every ``ratelimit`` command it runs must parse with the CLI's own
argument parser, every file it mounts or builds from must exist, and every
Redis server it starts must carry the settings the README's ``conf`` blocks
ask for. The ACL rule is run for real, as the user it creates.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import time
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import yaml
from redis.client import PubSub

from ratelimit import ALERT_CHANNEL, Budget, Limiter, Rate
from ratelimit.cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DEPLOYING = README.split("\n## Deploying\n", 1)[1].split("\n## ", 1)[0]


def command(service: dict[str, Any]) -> list[str]:
    value = service.get("command", [])
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def in_profile(profile: str | None) -> dict[str, dict[str, Any]]:
    """The services of ``profile`` (None: those that start without one)."""
    return {
        name: service
        for name, service in SERVICES.items()
        if (profile in service.get("profiles", []))
        or (profile is None and "profiles" not in service)
    }


def server_settings(service: dict[str, Any]) -> dict[str, str]:
    """A ``redis-server --key value ...`` command's settings."""
    args = command(service)[1:]
    settings: dict[str, str] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
            settings[arg[2:]] = value
    return settings


def servers() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in SERVICES.items()
        if command(service)[:1] in (["redis-server"], ["valkey-server"])
    }


def conf_blocks() -> list[dict[str, str]]:
    """The README's Deploying ``conf`` blocks, each as setting -> value."""
    blocks = re.findall(r"^```conf\n(.*?)^```", DEPLOYING, flags=re.S | re.M)
    return [
        dict(line.split(None, 1) for line in block.splitlines() if line and line[0] != "#")
        for block in blocks
    ]


# --------------------------------------------------------------------------- commands


def ratelimit_commands() -> list[tuple[str, list[str]]]:
    found = []
    for name, service in SERVICES.items():
        args = command(service)
        if args[:1] == ["ratelimit"]:
            found.append((name, args[1:]))
    return found


def test_the_default_profile_runs_redis_the_demo_and_the_exporter() -> None:
    default = in_profile(None)
    assert {"redis", "demo", "exporter"} <= set(default)
    assert command(default["demo"])[:2] == ["ratelimit", "demo"]
    assert command(default["exporter"])[:2] == ["ratelimit", "exporter"]
    assert "redis" in servers()


@pytest.mark.parametrize(("service", "args"), ratelimit_commands())
def test_every_ratelimit_command_parses(service: str, args: list[str]) -> None:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.suppress(SystemExit):
        build_parser().parse_args(args)
        return
    pytest.fail(f"{service}: ratelimit {shlex.join(args)}\n{errors.getvalue()}")


# --------------------------------------------------------------------------- files


def referenced_files() -> list[tuple[str, str]]:
    """(service, path in the repository) of every file the compose file builds or mounts."""
    files = []
    for name, service in SERVICES.items():
        build = service.get("build")
        if build:
            context = build["context"]
            files.append((name, str(Path(context) / build.get("dockerfile", "Dockerfile"))))
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                files.append((name, source))
    return files


@pytest.mark.parametrize(("service", "path"), referenced_files())
def test_every_file_the_compose_file_uses_exists(service: str, path: str) -> None:
    relative = Path(path).as_posix().removeprefix("./")
    assert (ROOT / relative).exists(), f"{service} uses {path}, which does not exist"


def project_extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["optional-dependencies"])


def test_the_image_installs_extras_the_project_has() -> None:
    dockerfile = (ROOT / "examples" / "compose" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+) ", dockerfile, flags=re.M):
        assert (ROOT / source).exists(), source
    extras = project_extras()
    [wanted] = re.findall(r'pip install [^"]*"\.\[([\w,]+)\]"', dockerfile)
    assert set(wanted.split(",")) <= extras


def test_the_readme_states_the_settings_this_file_checks() -> None:
    every, replicated = conf_blocks()
    assert every == {
        "maxmemory-policy": "noeviction",
        "appendonly": "yes",
        "appendfsync": "everysec",
    }
    assert set(replicated) == {"min-replicas-to-write", "min-replicas-max-lag"}
    assert int(replicated["min-replicas-to-write"]) >= 1


@pytest.mark.parametrize("name", sorted(servers()))
def test_every_redis_server_has_the_deploying_settings(name: str) -> None:
    every, replicated = conf_blocks()
    settings = server_settings(SERVICES[name])
    assert {key: settings.get(key) for key in every} == every
    if "sentinel" in SERVICES[name].get("profiles", []):
        assert {key: settings.get(key) for key in replicated} == replicated


def test_the_sentinel_profile_is_a_primary_a_replica_and_three_sentinels() -> None:
    sentinel = in_profile("sentinel")
    monitors = [
        re.search(r"sentinel monitor (\S+) (\S+) (\d+) (\d+)", " ".join(command(service)))
        for service in sentinel.values()
        if "redis-sentinel" in " ".join(command(service))
    ]
    assert len(monitors) == 3
    assert all(
        m is not None and (m[2], m[3], m[4]) == ("redis-primary", "6379", "2") for m in monitors
    )
    assert server_settings(sentinel["redis-replica"])["replicaof"] == "redis-primary"
    assert "replicaof" not in server_settings(sentinel["redis-primary"])


def test_the_cluster_profile_is_six_nodes_and_an_init_job() -> None:
    cluster = in_profile("cluster")
    nodes = {
        name: service["networks"]["cluster"]["ipv4_address"]
        for name, service in cluster.items()
        if server_settings(service).get("cluster-enabled") == "yes"
    }
    assert len(nodes) == 6
    init = " ".join(command(cluster["cluster-init"]))
    created = re.findall(r"(\d+\.\d+\.\d+\.\d+):6379", init.split("--cluster create", 1)[1])
    assert sorted(created) == sorted(nodes.values())
    assert "--cluster-replicas 1" in init


def test_prometheus_scrapes_the_exporter_and_grafana_is_provisioned() -> None:
    monitoring = in_profile("monitoring")
    assert {"prometheus", "grafana"} <= set(monitoring)
    scrape = yaml.safe_load((ROOT / "examples" / "compose" / "prometheus.yml").read_text())
    [target] = [
        t for job in scrape["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    port = command(SERVICES["exporter"])[command(SERVICES["exporter"]).index("--port") + 1]
    assert target == f"exporter:{port}"
    provisioning = ROOT / "examples" / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    dashboard = ROOT / "examples" / "grafana" / "ratelimit.json"
    if dashboard.exists():  # the dashboard's branch: its panels query the provisioned source
        uids = set(re.findall(r'"uid":\s*"([^"$]+)"', dashboard.read_text()))
        datasource_uids = {uid for uid in uids if "prom" in uid.lower()}
        assert datasource_uids <= {source["uid"]}


# --------------------------------------------------------------------------- the ACL rule


def test_the_readme_acl_rule_is_enough_for_limiters_and_readers(
    r: redis.Redis, redis_url: str
) -> None:
    [rule] = re.findall(r"^ACL SETUSER ratelimit .*$", DEPLOYING, flags=re.M)
    words = shlex.split(rule)
    user = words[2]
    [password] = [word[1:] for word in words if word.startswith(">")]
    r.execute_command(*words)  # type: ignore[no-untyped-call]  # untyped in redis-py
    listener = r.pubsub()  # type: ignore[no-untyped-call]
    try:
        listener.subscribe(ALERT_CHANNEL)
        assert wait_for_message(listener)["type"] == "subscribe"
        parts = urlsplit(redis_url)
        url = urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}"))
        team = Limiter(
            url, "team", slot="acme", requests=Rate(10, per=60), usd=Budget(1, alerts=(0.5,))
        )
        team.acquire(usd="0.6", model="claude-haiku-4-5").settle(usd="0.6")
        assert team.state().budget("usd").spent == Decimal("0.6")
        assert [entry.cost_usd for entry in team.ledger_entries()] == [Decimal("0.6")]
        assert team.spend() != {}
        assert [alert.threshold for alert in team.alert_history()] == [0.5]
        assert wait_for_message(listener)["type"] == "message"  # the script's PUBLISH
        chat = Limiter(url, "chat", requests=Rate(10, per=60))
        chat.acquire().settle(requests=1)
        assert chat.observe(requests=1) == 1
        # And nothing beyond the project's keys.
        client = redis.Redis.from_url(url)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("not-ours", 1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
        client.close()
    finally:
        listener.close()
        r.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]


def wait_for_message(listener: PubSub) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = listener.get_message(timeout=1.0)
        if message is not None:
            return cast(dict[str, Any], message)
    raise AssertionError("no message on the alert channel within 10 s")
