"""The client metrics' Prometheus objects: counters and the wait histogram, per scope.

Made by :func:`ratelimit.metrics.enable`; the limiters and the anthropic
wrapper report to them through the hooks of :mod:`ratelimit.metrics`. Under
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, e.g.
Celery's prefork workers) every process writes its own file there, and
``ratelimit exporter`` (or a ``MultiProcessCollector``) adds them up.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from ratelimit.core.results import Booking
from ratelimit.core.scope import ScopeSpec
from ratelimit.errors import BudgetExceeded
from ratelimit.metrics import names
from ratelimit.metrics.names import Metric


def _counter(metric: Metric, registry: CollectorRegistry) -> Counter:
    return Counter(metric.name, metric.help, metric.labels, registry=registry)


class ClientMetrics:
    """What the processes that use the limiters count, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.admissions = _counter(names.ADMISSIONS, registry)
        self.unmetered = _counter(names.UNMETERED, registry)
        self.refusals = _counter(names.REFUSALS, registry)
        self.budget_refusals = _counter(names.BUDGET_REFUSALS, registry)
        self.provider_429s = _counter(names.PROVIDER_429S, registry)
        self.cache_hits = _counter(names.CACHE_HITS, registry)
        wait = names.WAIT_SECONDS
        self.wait = Histogram(
            wait.name, wait.help, wait.labels, buckets=names.WAIT_BUCKETS, registry=registry
        )

    def booked(self, scopes: Sequence[ScopeSpec], booking: Booking) -> None:
        """Count an acquire's outcome for every scope it asked (a budget refusal: its own)."""
        permit, error = booking.permit, booking.error
        if permit is not None:
            for scope in scopes:
                self.admissions.labels(scope.name).inc()
                if not permit.backed:
                    self.unmetered.labels(scope.name).inc()
                self.wait.labels(scope.name).observe(permit.wait_s)
        elif isinstance(error, BudgetExceeded):
            self.budget_refusals.labels(error.scope).inc()
        elif error is not None:
            for scope in scopes:
                self.refusals.labels(scope.name).inc()

    def unregister(self) -> None:
        """Take every metric out of the registry."""
        for collector in (
            self.admissions, self.unmetered, self.refusals, self.budget_refusals,
            self.provider_429s, self.cache_hits, self.wait,
        ):  # fmt: skip
            self.registry.unregister(collector)
