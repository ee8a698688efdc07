"""Prometheus metrics: the exporter scraped over HTTP, and the client metrics across processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import anthropic
import pytest
import redis
from anthropic.types import MessageParam
from fake_anthropic import FakeAnthropic
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ratelimit import (
    AcquireTimeout,
    Budget,
    BudgetExceeded,
    Limiter,
    LimiterGroup,
    Rate,
    metrics,
)
from ratelimit.anthropic import wrap
from ratelimit.cache import ResponseCache
from ratelimit.core.scope import ScopeSpec
from ratelimit.metrics import names
from ratelimit.server import EmbeddedServer

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE.parent / "examples" / "grafana" / "ratelimit.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def _metrics_off() -> Iterator[None]:
    """Every test starts and ends with the client metrics off (they are process-wide)."""
    metrics.disable()
    yield
    metrics.disable()


@contextmanager
def exporter(redis_url: str, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``ratelimit exporter`` on a free port, in a real process: yields its /metrics URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ratelimit",
            "exporter",
            "--port",
            "0",
            "--redis-url",
            redis_url,
            *list(args),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    try:
        lines = [process.stderr.readline(), process.stderr.readline()]
        assert lines[0].startswith("ratelimit exporter: server "), lines
        served = re.search(r"serving (http://\S+/metrics)", lines[1])
        assert served, lines
        yield served.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def scrape(url: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        page = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def test_the_exporter_serves_what_state_reports(redis_url: str, r: redis.Redis) -> None:
    chat = Limiter(r, "chat", requests=Rate(10, per=60), input_tokens=Rate(10_000, per=60))
    for _ in range(3):
        chat.try_acquire(input_tokens=2_000)
    team = Limiter(r, "team-b", usd=Budget("5", tz="Europe/Paris"), requests=Rate(100))
    team.acquire(usd="1", model="claude-x").settle(usd="0.42", model="claude-x")
    team.acquire(usd="1", model="claude-y").settle(usd="0.08", model="claude-y")
    team.acquire(usd="0.25")  # in flight
    family = Limiter(r, "wrap:sonnet", slot="wrap", requests=Rate(50, per=60))
    budget = Limiter(r, "wrap:budget", slot="wrap", usd=Budget("20"))
    LimiterGroup(family, budget).acquire(usd="0.1")

    with exporter(redis_url) as url:
        before = chat.state()
        samples = scrape(url)
        after = chat.state()

    assert value(samples, "ratelimit_up") == 1
    assert value(samples, "ratelimit_scopes") == 4
    for dim in ("requests", "input_tokens"):
        labels = {"scope": "chat", "dimension": dim}
        available = value(samples, "ratelimit_bucket_available", **labels)
        assert before.rate(dim).available <= available <= after.rate(dim).available
        assert value(samples, "ratelimit_bucket_capacity", **labels) == after.rate(dim).capacity
        assert value(samples, "ratelimit_bucket_rate_per_second", **labels) == pytest.approx(
            after.rate(dim).rate_per_s
        )
    state = team.state().budget("usd")
    scope = {"scope": "team-b"}
    assert value(samples, "ratelimit_budget_spent_usd", **scope) == float(state.spent) == 0.5
    assert value(samples, "ratelimit_budget_reserved_usd", **scope) == float(state.reserved)
    assert value(samples, "ratelimit_budget_limit_usd", **scope) == float(state.limit)
    resets = value(samples, "ratelimit_budget_resets_at_seconds", **scope)
    assert resets == state.resets_at.timestamp()
    assert value(samples, "ratelimit_permits_in_flight", **scope) == 1
    assert value(samples, "ratelimit_permits_in_flight", scope="wrap:budget") == 1
    assert value(samples, "ratelimit_budget_reserved_usd", scope="wrap:budget") == 0.1
    (day,) = team.spend()
    for model, usd in team.spend()[day].items():
        got = value(samples, "ratelimit_spend_usd", scope="team-b", model=model, day=day)
        assert Decimal(repr(got)) == usd


def test_a_scrape_that_cannot_read_redis_says_so_and_the_next_one_recovers() -> None:
    server = EmbeddedServer()
    server.start()
    try:
        Limiter(server.url, "q", requests=Rate(1, per=60)).try_acquire()
        with exporter(server.url) as url:
            assert value(scrape(url), "ratelimit_up") == 1
            server.stop()
            down = scrape(url)
            assert value(down, "ratelimit_up") == 0
            assert not any(name.startswith("ratelimit_bucket") for name, _ in down)
    finally:
        server.stop()


def scope_specs(*names_: str) -> list[ScopeSpec]:
    return [ScopeSpec.build(name, {"requests": Rate(1)}) for name in names_]


def test_client_metrics_count_each_outcome(r: redis.Redis) -> None:
    registry = CollectorRegistry()
    counted = metrics.enable(registry)
    try:
        assert metrics.enable() is counted  # idempotent
        rates = Limiter(r, "rates", requests=Rate(1, per=3600))
        money = Limiter(r, "money", usd=Budget("1"))
        permit = rates.try_acquire()
        assert permit is not None
        with pytest.raises(AcquireTimeout):
            rates.acquire(timeout=0)
        money.acquire(usd="0.6")
        with pytest.raises(BudgetExceeded):
            money.acquire(usd="0.6")
        metrics.provider_429("rates")
        metrics.cache_hit("rates")

        def sample(name: str, scope: str) -> float | None:
            return registry.get_sample_value(name, {"scope": scope})

        assert sample("ratelimit_client_admissions_total", "rates") == 1
        assert sample("ratelimit_client_admissions_total", "money") == 1
        assert sample("ratelimit_client_refusals_total", "rates") == 1
        assert sample("ratelimit_client_budget_refusals_total", "money") == 1
        assert sample("ratelimit_client_budget_refusals_total", "rates") is None
        assert sample("ratelimit_client_wait_seconds_count", "rates") == 1
        assert sample("ratelimit_client_provider_429s_total", "rates") == 1
        assert sample("ratelimit_client_cache_hits_total", "rates") == 1
    finally:
        metrics.disable()
    assert not metrics.enabled()
    assert (
        registry.get_sample_value("ratelimit_client_cache_hits_total", {"scope": "rates"}) is None
    )
    metrics.cache_hit("rates")  # off: nothing to count into, nothing raised


def test_the_limiters_report_their_bookings(r: redis.Redis) -> None:
    registry = CollectorRegistry()
    metrics.enable(registry)
    try:
        Limiter(r, "wired", requests=Rate(1, per=3600)).try_acquire()
        admitted = registry.get_sample_value(
            "ratelimit_client_admissions_total", {"scope": "wired"}
        )
        assert admitted == 1
    finally:
        metrics.disable()


def test_the_wrapper_counts_429s_and_cache_hits(redis_url: str, r: redis.Redis) -> None:
    registry = CollectorRegistry()
    metrics.enable(registry)
    model = "claude-sonnet-4-6"
    hello: list[MessageParam] = [{"role": "user", "content": "Say hello, briefly."}]
    limits = {"claude-sonnet-4": {"requests": Rate(100, per=1)}}
    try:
        # The provider allows 2 requests a second, our quota 100: the third meets a 429.
        with FakeAnthropic(rpm=2, minute_s=1.0) as server:
            sdk = anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=0)
            with wrap(sdk, redis_url, limits=limits, max_attempts=1) as client:
                for _ in range(2):
                    client.messages.create(model=model, max_tokens=8, messages=hello)
                with pytest.raises(anthropic.RateLimitError):
                    client.messages.create(model=model, max_tokens=8, messages=hello)
                scope = client.guard.limiter(model).name
        with FakeAnthropic() as server:
            sdk = anthropic.Anthropic(base_url=server.base_url, api_key="test")
            cache = ResponseCache(r)
            with wrap(sdk, redis_url, limits=limits, cache=cache, name="cached") as client:
                for _ in range(2):  # the second is answered by the cache
                    client.messages.create(
                        model=model, max_tokens=8, messages=hello, extra_body={"temperature": 0}
                    )
                cached_scope = client.guard.limiter(model).name
            assert server.stats().requests == 1

        def count(name: str, scope: str) -> float | None:
            return registry.get_sample_value(name, {"scope": scope})

        assert count("ratelimit_client_provider_429s_total", scope) == 1
        assert count("ratelimit_client_cache_hits_total", cached_scope) == 1
        assert count("ratelimit_client_cache_hits_total", scope) is None
    finally:
        metrics.disable()


def test_client_metrics_add_up_across_forked_workers(redis_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    workers = 4
    subprocess.run(
        [sys.executable, str(HERE / "metrics_workers.py"), redis_url, str(workers)],
        env=env,
        check=True,
        timeout=120,
    )
    assert len(list(folder.glob("counter_*.db"))) >= workers  # one file per process
    settled = Limiter(redis_url, "settled", usd=Budget("1"))
    settled.acquire(usd="0.1", model="m").settle(usd="0.05", model="m")  # a spend counter
    with exporter(redis_url, "--multiprocess-dir", str(folder)) as url:
        samples = scrape(url)
    # 4 workers tried 3 times each on a bucket of 5, and once each for 0.3 of a 1 USD budget.
    assert value(samples, "ratelimit_client_admissions_total", scope="mp") == 5
    assert value(samples, "ratelimit_client_refusals_total", scope="mp") == 7
    assert value(samples, "ratelimit_client_admissions_total", scope="mp-budget") == 3
    assert value(samples, "ratelimit_client_budget_refusals_total", scope="mp-budget") == 1
    assert value(samples, "ratelimit_client_wait_seconds_count", scope="mp") == 5
    assert value(samples, "ratelimit_client_provider_429s_total", scope="mp") == workers
    assert value(samples, "ratelimit_client_cache_hits_total", scope="mp") == 2 * workers
    assert value(samples, "ratelimit_client_unmetered_admissions_total", scope="mp-down") == workers
    # Served beside what Redis holds: one page for the dashboard.
    assert value(samples, "ratelimit_bucket_capacity", scope="mp", dimension="requests") == 5

    served = {name for name, _ in samples}
    for metric in (*names.EXPORTER_METRICS, *names.CLIENT_METRICS):
        assert set(names.sample_names(metric)) & served, metric.name
    queried = dashboard_metrics()
    assert queried, "the dashboard queries no metric"
    assert queried <= served, sorted(queried - served)


def dashboard_metrics() -> set[str]:
    """Every metric name the Grafana dashboard's queries use."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    exprs += [v.get("query", "") for v in dashboard.get("templating", {}).get("list", [])]
    return {m for expr in exprs for m in re.findall(r"\bratelimit_[a-z0-9_]+", expr)}


def test_the_readme_lists_every_metric() -> None:
    readme = (HERE.parent / "README.md").read_text()
    for metric in (*names.EXPORTER_METRICS, *names.CLIENT_METRICS):
        assert f"`{metric.name}" in readme, metric.name
