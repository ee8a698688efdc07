"""Every exception this package raises derives from :class:`LimiterError`.

Invalid input raises :class:`InvalidArgument` (a ``ValueError``) or
:class:`InvalidArgumentType` (a ``TypeError``) before anything is sent to
Redis, so a rejected call never changes shared state.
"""

from __future__ import annotations

import functools
from datetime import datetime
from decimal import Decimal
from typing import Any


class LimiterError(Exception):
    """Root of every error raised by ``ratelimit``."""


class InvalidArgument(LimiterError, ValueError):
    """An argument has the right type but an unusable value (negative, NaN, empty...)."""


class InvalidArgumentType(InvalidArgument, TypeError):
    """An argument has the wrong type (a ``bool`` or ``str`` where a number belongs...)."""


class UnknownDimension(InvalidArgument):
    """A cost names a dimension the limiter was not configured with."""


class CostExceedsCapacity(InvalidArgument):
    """A cost is larger than its bucket can ever hold, so waiting would never end."""


class ConfigError(InvalidArgument):
    """A configuration file (:func:`ratelimit.load_config`) cannot be used as written.

    The message starts with ``<file>:<line>: <key>:``, the way compilers report,
    and the same are in ``file``, ``line`` (1-based; None when the file could
    not be read at all) and ``key`` (dotted, as the file spells it; "" for the
    file as a whole). Nothing is built from a file with an error in it.
    """

    def __init__(self, problem: str, *, file: str, line: int | None, key: str) -> None:
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.problem = problem
        self.file = file
        self.line = line
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        # Unpickled, the class is called again with the keyword-only details.
        rebuild = functools.partial(type(self), file=self.file, line=self.line, key=self.key)
        return rebuild, (self.problem,), self.__dict__


class AcquireTimeout(LimiterError):
    """Admission would come later than the caller's timeout; nothing was consumed.

    ``retry_after`` is the number of seconds after which the same request
    would have been admitted had nobody else asked in the meantime.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # By default unpickling calls the class with the message alone, which
        # __init__ refuses; Celery pickles a task's failure to pass it on.
        return type(self), (*self.args, self.retry_after), self.__dict__


class BackendError(LimiterError):
    """Redis could not be reached or answered with an error; the cause is chained."""


class UnknownModel(InvalidArgument):
    """A model ID has no entry in the price table and no fallback price is configured."""


class MissingPrice(InvalidArgument):
    """The table has no price for a kind of token that the usage contains.

    Raised, for example, for cache reads on a model whose cache prices are not
    published, for batch usage on a model without batch prices, and for fast
    mode, which the table does not price.  Supply the price in an override file
    (:meth:`ratelimit.Pricing.from_file`) if you know it.
    """


class NoQuotaForModel(InvalidArgument):
    """A wrapped client's model matches no entry of ``limits`` (and there is no ``"*"``).

    Raised before anything is sent or booked.
    """


class NoCurrentPermit(LimiterError, LookupError):
    """``current_permit()`` was called outside the body of a ``rate_limited`` task."""


class MissingExtra(LimiterError, ImportError):
    """A feature needs an optional extra that is not installed; the message names it."""


class ServerNotFound(LimiterError):
    """No server binary for the requested engine is installed, or it would not start."""


class RedisUnavailable(BackendError):
    """Redis could not be reached (connection refused or reset, timed out, loading).

    What admission does then is the limiter's ``on_redis_error`` choice:
    ``"raise"`` this error, ``"allow"`` the call unmetered, or ``"deny"`` it.
    """


class RedisMisconfigured(BackendError):
    """Redis answers, but not to this client as configured: a wrong password, an
    ACL user without a command, key or channel it needs, a TLS certificate that
    does not verify, a database that does not exist, a full connection pool.

    Never admitted unmetered, whatever ``on_redis_error`` says: the message
    says what to fix, and the cause is chained.
    """


class RedisRefused(BackendError):
    """Redis refused to write, in a state it is in: out of memory, a replica (or a
    demoted primary) that is read-only, too few replicas for
    ``min-replicas-to-write``, a cluster slot without a primary.

    Nothing was written (a script is refused at its first write). A limiter
    retries for a few seconds, so that a failover's new primary is found, then
    raises this; never admitted unmetered.
    """


class BudgetExceeded(LimiterError):
    """A budget cannot take this request's cost this period; waiting won't help.

    ``spent`` and ``reserved`` (USD, ``Decimal``) are what the period has
    settled and what permits in flight hold; ``limit`` is the budget;
    ``resets_at`` (an aware ``datetime``) is when the next period starts;
    ``scope`` names the limiter whose budget refused.
    """

    def __init__(
        self,
        message: str,
        *,
        scope: str,
        spent: Decimal,
        reserved: Decimal,
        limit: Decimal,
        resets_at: datetime,
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.spent = spent
        self.reserved = reserved
        self.limit = limit
        self.resets_at = resets_at

    def __reduce__(self) -> tuple[Any, ...]:
        # Unpickled, the class is called again with the message and, unlike
        # pickle's default, the keyword-only details it needs.
        details: dict[str, Any] = {
            "scope": self.scope,
            "spent": self.spent,
            "reserved": self.reserved,
            "limit": self.limit,
            "resets_at": self.resets_at,
        }
        return functools.partial(type(self), **details), self.args, self.__dict__


class LedgerStoreError(BackendError):
    """The ledger of record (PostgreSQL) could not be reached, or refused a statement.

    Raised by ``ratelimit.postgres``; the driver's error is chained. Nothing
    is acknowledged in Redis for an entry whose row was not committed.
    """


class DashboardRefused(LimiterError):
    """``ratelimit dashboard`` will not serve as asked, and says what to change.

    For example an address that other machines can reach (anything but
    loopback) without a token to demand of every request.
    """


class RestoreRefused(LimiterError):
    """``restore`` cannot rebuild a scope safely, so it changed nothing in it.

    For example the scope's budget is gone from Redis and no limit and period
    were given to rebuild it with, or its ledger stream holds more unsynced
    entries than one atomic restore may read. ``scope`` names it.
    """

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message)
        self.scope = scope

    def __reduce__(self) -> tuple[Any, ...]:
        return functools.partial(type(self), scope=self.scope), self.args, self.__dict__


class ClusterNotSupported(LimiterError):
    """A command that reads one server was pointed at a Redis Cluster.

    ``ratelimit sync`` follows many ledger streams with one blocking
    ``XREADGROUP``, which a cluster refuses across slots, and ``restore``
    runs a sync first; both refuse a cluster before doing anything.
    """
