"""The errors a caller may need to pass between processes survive pickling.

Celery pickles a task's failure to send it from the pool child that ran the
task; an error that does not come back as itself arrives as its nearest
picklable base class (here, a bare :class:`LimiterError`).
"""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

from ratelimit import AcquireTimeout, BudgetExceeded

E = TypeVar("E", bound=BaseException)


def _round_trip(exc: E) -> E:
    got: E = pickle.loads(pickle.dumps(exc))
    assert type(got) is type(exc)
    assert str(got) == str(exc)
    assert got.args == exc.args
    return got


def test_acquire_timeout_pickles() -> None:
    exc = AcquireTimeout("no room before the timeout", retry_after=2.5)
    exc.add_note("while summarizing")
    got = _round_trip(exc)
    assert got.retry_after == 2.5
    assert got.__notes__ == ["while summarizing"]
    assert copy.copy(exc).retry_after == 2.5


def test_budget_exceeded_pickles() -> None:
    resets_at = datetime(2026, 1, 2, tzinfo=UTC)
    exc = BudgetExceeded(
        "the $1 per day budget of 'b' cannot take this",
        scope="b",
        spent=Decimal("0.60"),
        reserved=Decimal("0.10"),
        limit=Decimal("1.00"),
        resets_at=resets_at,
    )
    got = _round_trip(exc)
    assert (got.scope, got.spent, got.reserved, got.limit, got.resets_at) == (
        "b",
        Decimal("0.60"),
        Decimal("0.10"),
        Decimal("1.00"),
        resets_at,
    )
