"""Every scope of a deployment as Redis holds it, read without its configuration.

``ratelimit status`` and ``ratelimit exporter`` read through this package,
and so can any program::

    import redis
    from ratelimit import deployment

    snapshot = deployment.read(redis.Redis())
    for scope in snapshot.scopes:
        for rate in scope.rates:
            print(scope.name, rate.dimension, rate.available, "of", rate.capacity)

The strings the scripts store describe themselves (each bucket carries its
capacity and rate, a budget its period and limit), so a reader needs no
configuration; given one (:func:`configured_scopes`, or a configuration
file's scopes), it shows the configured limits beside what Redis holds and
lists configured scopes that Redis holds nothing of as full and idle.

- :mod:`~ratelimit.deployment.keys`: key names read back into scopes and groups.
- :mod:`~ratelimit.deployment.stored`: the stored strings parsed, and read as of a Redis time.
- :mod:`~ratelimit.deployment.snapshot`: the readings of a scope, and of the deployment.
- :mod:`~ratelimit.deployment.reader`: the SCAN and the two pipelined reads.
"""

from ratelimit.deployment.reader import MAX_PERMITS_READ, MAX_SCOPES, find_keys, read
from ratelimit.deployment.snapshot import (
    BudgetReading,
    GroupReading,
    RateReading,
    ScopeReading,
    Snapshot,
    configured_scopes,
    read_scope,
)
from ratelimit.deployment.stored import InFlight

__all__ = [
    "MAX_PERMITS_READ",
    "MAX_SCOPES",
    "BudgetReading",
    "GroupReading",
    "InFlight",
    "RateReading",
    "ScopeReading",
    "Snapshot",
    "configured_scopes",
    "find_keys",
    "read",
    "read_scope",
]
