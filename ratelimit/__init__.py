"""Shared LLM rate limits, decided atomically in Redis.

>>> import redis
>>> from ratelimit import Limiter, Rate
>>> limiter = Limiter(redis.Redis(), "anthropic/sonnet",
...                   requests=Rate(4000, per=60),
...                   input_tokens=Rate(2_000_000, per=60),
...                   output_tokens=Rate(400_000, per=60))   # doctest: +SKIP

The asyncio client is :mod:`ratelimit.asyncio`, with the same names.
:func:`load_config` builds the same limiters from one file (:mod:`ratelimit.config_file`).
"""

from ratelimit.config_file import Config, load_config
from ratelimit.core.keys import ALERT_CHANNEL
from ratelimit.core.results import (
    Alert,
    BudgetState,
    DimensionState,
    LimiterState,
    Settlement,
)
from ratelimit.core.settings import Budget, Rate, Retention
from ratelimit.errors import (
    AcquireTimeout,
    BackendError,
    BudgetExceeded,
    ConfigError,
    CostExceedsCapacity,
    InvalidArgument,
    InvalidArgumentType,
    LimiterError,
    RedisMisconfigured,
    RedisRefused,
    RedisUnavailable,
    UnknownDimension,
    UnknownModel,
)
from ratelimit.limiter import Limiter, LimiterGroup, Permit
from ratelimit.pricing import Pricing

__all__ = [
    "ALERT_CHANNEL",
    "AcquireTimeout",
    "Alert",
    "BackendError",
    "Budget",
    "BudgetExceeded",
    "BudgetState",
    "Config",
    "ConfigError",
    "CostExceedsCapacity",
    "DimensionState",
    "InvalidArgument",
    "InvalidArgumentType",
    "Limiter",
    "LimiterError",
    "LimiterGroup",
    "LimiterState",
    "Permit",
    "Pricing",
    "Rate",
    "RedisMisconfigured",
    "RedisRefused",
    "RedisUnavailable",
    "Retention",
    "Settlement",
    "UnknownDimension",
    "UnknownModel",
    "load_config",
]
