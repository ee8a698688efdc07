"""The exporter's metrics: a Prometheus collector that reads Redis at scrape time.

Each scrape takes one snapshot (:func:`ratelimit.deployment.read`: one SCAN
and two pipelined reads, Redis TIME as the clock) and turns it into gauges
per scope and dimension. A scrape that cannot read Redis still answers,
with ``ratelimit_up 0``, so an outage shows on the dashboard instead of as
a failed scrape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ratelimit.core.numbers import MICRO
from ratelimit.core.scope import ScopeSpec
from ratelimit.deployment import Snapshot, read
from ratelimit.errors import LimiterError
from ratelimit.limiter import SyncClient
from ratelimit.metrics import DEFAULT_SPEND_DAYS, names

log = logging.getLogger("ratelimit")


def _family(metric: names.Metric) -> GaugeMetricFamily:
    return GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)


def snapshot_metrics(snapshot: Snapshot, spend_days: int = DEFAULT_SPEND_DAYS) -> list[Metric]:
    """The gauges of one snapshot, per scope and dimension (and model and day for spend)."""
    available, capacity, rate = (
        _family(m) for m in (names.BUCKET_AVAILABLE, names.BUCKET_CAPACITY, names.BUCKET_RATE)
    )
    spent, reserved, limit, resets = (
        _family(m)
        for m in (
            names.BUDGET_SPENT,
            names.BUDGET_RESERVED,
            names.BUDGET_LIMIT,
            names.BUDGET_RESETS_AT,
        )
    )
    permits, expired, spend = (
        _family(m) for m in (names.PERMITS_IN_FLIGHT, names.PERMITS_EXPIRED, names.SPEND)
    )
    for scope in snapshot.scopes:
        for r in scope.rates:
            labels = [scope.name, r.dimension]
            available.add_metric(labels, r.available_micro / MICRO)
            capacity.add_metric(labels, r.capacity_micro / MICRO)
            rate.add_metric(labels, float(r.rate_per_s))
        budget = scope.budget
        if budget is not None:
            spent.add_metric([scope.name], float(budget.spent))
            reserved.add_metric([scope.name], float(budget.reserved))
            limit.add_metric([scope.name], float(budget.limit))
            if budget.resets_at_us is not None:
                resets.add_metric([scope.name], budget.resets_at_us / MICRO)
        permits.add_metric([scope.name], scope.in_flight.permits)
        expired.add_metric([scope.name], scope.in_flight.expired)
        for day in sorted(scope.spend)[-spend_days:] if spend_days else []:
            for model, usd in sorted(scope.spend[day].items()):
                spend.add_metric([scope.name, model, day], float(usd))
    scopes = _family(names.SCOPES)
    scopes.add_metric([], len(snapshot.scopes))
    return [scopes, available, capacity, rate, spent, reserved, limit, resets, permits, expired,
            spend]  # fmt: skip


class DeploymentCollector(Collector):
    """Every scope of the deployment behind ``client``, read when Prometheus scrapes.

    ``configured`` scopes show even when Redis holds nothing of them (full);
    ``spend_days`` bounds the days of spend counters exported.
    """

    def __init__(
        self,
        client: SyncClient,
        *,
        configured: Sequence[ScopeSpec] = (),
        spend_days: int = DEFAULT_SPEND_DAYS,
    ) -> None:
        self.client = client
        self.configured = list(configured)
        self.spend_days = spend_days

    def describe(self) -> Iterable[Metric]:
        # Nothing up front: registering the collector must not read Redis.
        return []

    def collect(self) -> Iterator[Metric]:
        """One read of Redis, as gauges; ``ratelimit_up 0`` when it fails."""
        up, took = _family(names.UP), _family(names.READ_SECONDS)
        started = time.monotonic()
        try:
            snapshot = read(self.client, configured=self.configured, with_spend=True)
        except LimiterError as exc:
            log.warning("ratelimit exporter: cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        took.add_metric([], time.monotonic() - started)
        up.add_metric([], 1)
        yield up
        yield took
        yield from snapshot_metrics(snapshot, self.spend_days)
