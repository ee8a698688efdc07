"""Every metric the project exports, by name, with its help text and labels.

One list for the exporter (:mod:`ratelimit.metrics.collector`), the client
metrics (:mod:`ratelimit.metrics.client`), the Grafana dashboard's test and
the README's metric list, so none of them can name a metric that is not served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class Metric:
    """A metric's name (as scraped, without a counter's ``_total``), type, labels and help."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str


# -- read from Redis at scrape time by `ratelimit exporter` --------------------------

UP = Metric("ratelimit_up", "gauge", (), "1 when the last scrape read Redis, 0 when it could not")
READ_SECONDS = Metric(
    "ratelimit_read_duration_seconds", "gauge", (), "How long the scrape's read of Redis took"
)
SCOPES = Metric("ratelimit_scopes", "gauge", (), "Scopes (named quotas) found in Redis")
BUCKET_AVAILABLE = Metric(
    "ratelimit_bucket_available",
    "gauge",
    ("scope", "dimension"),
    "Units in the bucket now (negative while callers are booked ahead or in debt)",
)
BUCKET_CAPACITY = Metric(
    "ratelimit_bucket_capacity", "gauge", ("scope", "dimension"), "Bucket capacity in units"
)
BUCKET_RATE = Metric(
    "ratelimit_bucket_rate_per_second",
    "gauge",
    ("scope", "dimension"),
    "Refill speed in units per second",
)
BUDGET_SPENT = Metric(
    "ratelimit_budget_spent_usd", "gauge", ("scope",), "USD settled in the current period"
)
BUDGET_RESERVED = Metric(
    "ratelimit_budget_reserved_usd", "gauge", ("scope",), "USD held by permits in flight"
)
BUDGET_LIMIT = Metric("ratelimit_budget_limit_usd", "gauge", ("scope",), "The limit per period")
BUDGET_RESETS_AT = Metric(
    "ratelimit_budget_resets_at_seconds",
    "gauge",
    ("scope",),
    "When the next period starts (Unix seconds)",
)
PERMITS_IN_FLIGHT = Metric(
    "ratelimit_permits_in_flight", "gauge", ("scope",), "Permits admitted and not yet settled"
)
PERMITS_EXPIRED = Metric(
    "ratelimit_permits_lease_ended",
    "gauge",
    ("scope",),
    "Permits past their lease, to be charged in full by the scope's next call",
)
SPEND = Metric(
    "ratelimit_spend_usd",
    "gauge",
    ("scope", "model", "day"),
    "USD settled per day and model (the daily spend counters)",
)

EXPORTER_METRICS = (
    UP, READ_SECONDS, SCOPES, BUCKET_AVAILABLE, BUCKET_CAPACITY, BUCKET_RATE, BUDGET_SPENT,
    BUDGET_RESERVED, BUDGET_LIMIT, BUDGET_RESETS_AT, PERMITS_IN_FLIGHT, PERMITS_EXPIRED, SPEND,
)  # fmt: skip

# -- counted in the processes that use the limiters (ratelimit.metrics.enable) -------

ADMISSIONS = Metric(
    "ratelimit_client_admissions", "counter", ("scope",), "Permits admitted, per scope asked"
)
UNMETERED = Metric(
    "ratelimit_client_unmetered_admissions",
    "counter",
    ("scope",),
    "Permits admitted unmetered while Redis was unreachable (on_redis_error='allow')",
)
REFUSALS = Metric(
    "ratelimit_client_refusals",
    "counter",
    ("scope",),
    "Acquires refused by a rate: try_acquire denied, or acquire past its timeout",
)
BUDGET_REFUSALS = Metric(
    "ratelimit_client_budget_refusals",
    "counter",
    ("scope",),
    "Acquires refused by the scope's budget (BudgetExceeded)",
)
WAIT_SECONDS = Metric(
    "ratelimit_client_wait_seconds",
    "histogram",
    ("scope",),
    "Seconds an admitted permit was booked to wait before going ahead",
)
PROVIDER_429S = Metric(
    "ratelimit_client_provider_429s",
    "counter",
    ("scope",),
    "429 responses from the provider (the wrapped anthropic client)",
)
CACHE_HITS = Metric(
    "ratelimit_client_cache_hits",
    "counter",
    ("scope",),
    "Calls the response cache answered (the wrapped anthropic client)",
)

CLIENT_METRICS = (
    ADMISSIONS, UNMETERED, REFUSALS, BUDGET_REFUSALS, WAIT_SECONDS, PROVIDER_429S, CACHE_HITS,
)  # fmt: skip

#: Buckets of the wait histogram, in seconds: most admissions wait nothing;
#: a booked wait is bounded by the caller's timeout.
WAIT_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def sample_names(metric: Metric) -> tuple[str, ...]:
    """The names of the samples a scrape shows for ``metric``."""
    if metric.type == "counter":
        return (f"{metric.name}_total",)
    if metric.type == "histogram":
        return tuple(f"{metric.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    return (metric.name,)
