"""Shared LLM rate limits, decided atomically in Redis.

>>> import redis
>>> from ratelimit import Limiter, Rate
>>> limiter = Limiter(redis.Redis(), "anthropic/sonnet",
...                   requests=Rate(4000, per=60),
...                   input_tokens=Rate(2_000_000, per=60),
...                   output_tokens=Rate(400_000, per=60))   # doctest: +SKIP

The asyncio client is :mod:`ratelimit.asyncio`, with the same names.
"""

from ratelimit._core import (
    Alert,
    Budget,
    BudgetState,
    DimensionState,
    Ledger,
    QuotaState,
    Rate,
    Settlement,
)
from ratelimit.errors import (
    AcquireTimeout,
    BackendError,
    BudgetExceeded,
    CostExceedsCapacity,
    InvalidArgument,
    InvalidArgumentType,
    LimiterError,
    RedisUnavailable,
    UnknownDimension,
    UnknownModel,
)
from ratelimit.limiter import Limiter, LimiterGroup, Permit
from ratelimit.pricing import Pricing

__all__ = [
    "AcquireTimeout",
    "Alert",
    "BackendError",
    "Budget",
    "BudgetExceeded",
    "BudgetState",
    "CostExceedsCapacity",
    "DimensionState",
    "InvalidArgument",
    "InvalidArgumentType",
    "Ledger",
    "Limiter",
    "LimiterError",
    "LimiterGroup",
    "Permit",
    "Pricing",
    "QuotaState",
    "Rate",
    "RedisUnavailable",
    "Settlement",
    "UnknownDimension",
    "UnknownModel",
]
