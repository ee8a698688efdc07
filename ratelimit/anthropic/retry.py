"""Retry policy and the provider's headers: when to try again, and what is left.

A failed attempt gives its permit back and goes through the limiter again,
with the SDK's own rules for what is retryable and how long to pause (the
SDK's retries are off inside the wrapper). A 429 holds every process back for
its ``retry-after``; a 429 for an enforced spend limit is final. The
``anthropic-ratelimit-*-remaining`` headers of a response say what the
provider has left, to bring the shared buckets down to.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import anthropic

from ratelimit.core.settings import Rate

RETRY_INITIAL_S: float = 0.5
"""First pause (seconds) before retrying a 5xx, 529 or connection error; doubles per
attempt up to :data:`RETRY_MAX_S`, less up to a quarter of jitter (the SDK's rule)."""

RETRY_MAX_S: float = 8.0
"""Longest pause (seconds) between two attempts of one call, unless a ``retry-after``
header says otherwise."""

_REMAINING_HEADER: Final[dict[str, str]] = {
    "requests": "anthropic-ratelimit-requests-remaining",
    "input_tokens": "anthropic-ratelimit-input-tokens-remaining",
    "output_tokens": "anthropic-ratelimit-output-tokens-remaining",
}
"""The response header that says what is left of each rate dimension."""


@dataclass(frozen=True)
class RetryDecision:
    """What to do after a failed attempt (its permit already cancelled)."""

    again: bool
    """Try again, through the limiter."""
    hold_s: float | None = None
    """For a 429: seconds every process holds back (``observe(retry_after=...)``)."""
    sleep_s: float = 0.0
    """This caller's own pause before the next attempt, in seconds."""


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds a response asks to wait: ``retry-after-ms``, ``retry-after`` (seconds
    or an HTTP date), as the SDK reads them; None when absent or unreadable."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        # An HTTP date is wall-clock by definition: the server's instant to resume.
        seconds = float(email.utils.mktime_tz(parsed) - time.time())  # client-clock-ok
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _backoff_s(attempt: int) -> float:
    """The SDK's backoff for ``attempt`` (1 = the first failure), with jitter."""
    pause = min(RETRY_INITIAL_S * 2.0 ** min(attempt - 1, 30), RETRY_MAX_S)
    return pause * (1 - 0.25 * random.random())


def _should_retry(response_headers: Mapping[str, str], status: int) -> bool:
    """The SDK's rule: ``x-should-retry`` decides; else 408, 409, 429 and 5xx retry."""
    verdict = response_headers.get("x-should-retry")
    if verdict == "true":
        return True
    if verdict == "false":
        return False
    return status in (408, 409, 429) or status >= 500


def _spend_limit(exc: BaseException) -> bool:
    """A 429 that no wait cures: the organisation's monthly spend cap."""
    return isinstance(exc, anthropic.EnforcedSpendLimitReachedError) or (
        getattr(exc, "error_code", None) == "enforced_spend_limit_reached"
    )


def decide_retry(exc: BaseException, attempt: int, max_attempts: int) -> RetryDecision:
    """How to go on after an attempt failed with ``exc``."""
    more = attempt < max_attempts
    if isinstance(exc, anthropic.APIStatusError):
        if _spend_limit(exc):
            return RetryDecision(False)
        headers = exc.response.headers
        allowed = more and _should_retry(headers, exc.status_code)
        wait = _retry_after_s(headers)
        if exc.status_code == 429:
            # The limiter does the waiting: observe() holds every process back.
            return RetryDecision(allowed, hold_s=_backoff_s(attempt) if wait is None else wait)
        return RetryDecision(allowed, sleep_s=_backoff_s(attempt) if wait is None else wait)
    if isinstance(exc, anthropic.APIConnectionError):  # timeouts included
        return RetryDecision(more, sleep_s=_backoff_s(attempt))
    return RetryDecision(False)


def remaining_levels(
    rates: Mapping[str, Rate],
    headers: Mapping[str, str],
    *,
    age_s: float = 0.0,
    pending_output: int = 0,
) -> dict[str, int]:
    """What the provider's headers say is left of ``rates``, per dimension, brought to now.

    ``age_s`` (seconds since the headers were written) adds the refill since
    then; ``pending_output`` takes off output the provider charges after the
    headers (a stream's). Empty when no dimension is below its bucket's
    capacity: such headers can lower nothing, so no script call is needed.
    """
    left: dict[str, int] = {}
    useful = False
    for dim, rate in rates.items():
        value = _header_int(headers, _REMAINING_HEADER[dim])
        if value is None:
            continue
        aged = value + rate.rate_per_s * max(0.0, age_s)
        if dim == "output_tokens":
            aged -= pending_output
        level = max(0, math.floor(min(aged, rate.capacity)))
        useful = useful or level < rate.capacity
        left[dim] = level
    return left if useful else {}


def request_tags(headers: Mapping[str, str] | None) -> dict[str, object] | None:
    """The ledger tags of a response: its ``request-id``, when the headers carry one."""
    request_id = None if headers is None else headers.get("request-id")
    return {"request_id": request_id} if request_id else None


def headers_of(stream: Any) -> Mapping[str, str]:
    """The HTTP headers of an open SDK stream's response."""
    headers: Mapping[str, str] = stream.response.headers
    return headers
