"""Prometheus metrics: the exporter's, read from Redis, and the opt-in client metrics.

``ratelimit exporter`` serves what Redis holds, read at scrape time
(:mod:`ratelimit.metrics.collector`). The client metrics count what the
processes that use the limiters see: admissions, refusals, budget refusals,
the booked wait, the provider's 429s and the response cache's hits, per
scope. They are off until :func:`enable` is called (it needs the
``metrics`` extra, prometheus_client); until then each hook below is one
test of a module global::

    from ratelimit import metrics
    metrics.enable()                          # into prometheus_client's REGISTRY
    prometheus_client.start_http_server(9100) # or: ratelimit exporter, see below

Under Celery's prefork workers (or any pool of processes), set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the workers start:
each process then writes its counts there, and ``ratelimit exporter``
serves their sum beside the Redis metrics.

The hooks (:func:`booked`, :func:`provider_429`, :func:`cache_hit`) are what
the limiters and the anthropic wrapper call; nothing else needs them.

- :mod:`~ratelimit.metrics.names`: every metric's name, type, labels and help.
- :mod:`~ratelimit.metrics.client`: the client metrics' counters and histogram.
- :mod:`~ratelimit.metrics.collector`: the exporter's metrics, read at scrape time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ratelimit.errors import MissingExtra

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ratelimit.core.results import Booking
    from ratelimit.core.scope import ScopeSpec
    from ratelimit.metrics.client import ClientMetrics

__all__ = [
    "DEFAULT_SPEND_DAYS",
    "METRICS_EXTRA",
    "booked",
    "cache_hit",
    "disable",
    "enable",
    "enabled",
    "provider_429",
]

#: What to install for the exporter and the client metrics.
METRICS_EXTRA = "llm-quota-guard[metrics]"
#: The exporter serves the spend counters of this many most recent days (older
#: days stay in Prometheus's own history; serving them all would grow forever).
DEFAULT_SPEND_DAYS = 2


class _Switch:
    """Where the client metrics are once enabled (None: off)."""

    metrics: ClientMetrics | None = None


_switch = _Switch()


def enable(registry: CollectorRegistry | None = None) -> ClientMetrics:
    """Start counting in this process (and the processes it forks); idempotent.

    The metrics go into ``registry`` (default: prometheus_client's
    ``REGISTRY``). Raises :class:`~ratelimit.errors.MissingExtra` without
    the ``metrics`` extra.
    """
    if _switch.metrics is None:
        try:
            from prometheus_client import REGISTRY

            from ratelimit.metrics.client import ClientMetrics
        except ImportError as exc:
            raise MissingExtra(
                f"client metrics need prometheus_client: pip install '{METRICS_EXTRA}'"
            ) from exc
        _switch.metrics = ClientMetrics(REGISTRY if registry is None else registry)
    return _switch.metrics


def disable() -> None:
    """Stop counting, and take the metrics out of their registry."""
    if _switch.metrics is not None:
        _switch.metrics.unregister()
        _switch.metrics = None


def enabled() -> bool:
    """Whether :func:`enable` was called (and not undone)."""
    return _switch.metrics is not None


def booked(scopes: Sequence[ScopeSpec], booking: Booking) -> None:
    """Hook: an acquire (or try_acquire) of ``scopes`` was decided as ``booking``."""
    active = _switch.metrics
    if active is not None:
        active.booked(scopes, booking)


def provider_429(scope: str) -> None:
    """Hook: the provider answered 429 to a call admitted by ``scope``."""
    active = _switch.metrics
    if active is not None:
        active.provider_429s.labels(scope).inc()


def cache_hit(scope: str) -> None:
    """Hook: the response cache answered a call that ``scope`` would have admitted."""
    active = _switch.metrics
    if active is not None:
        active.cache_hits.labels(scope).inc()
