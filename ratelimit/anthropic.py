"""Claude API calls through the shared limiter and budget: wrap an ``anthropic`` client.

>>> import anthropic
>>> from ratelimit import Budget, Rate
>>> from ratelimit.anthropic import wrap
>>> client = wrap(anthropic.Anthropic(), "redis://localhost:6379/0",
...               limits={"claude-sonnet-4": {"requests": Rate(4000, per=60),
...                                           "input_tokens": Rate(2_000_000, per=60),
...                                           "output_tokens": Rate(400_000, per=60)}},
...               budget=Budget(50, per="day"))                     # doctest: +SKIP
>>> message = client.messages.create(model="claude-sonnet-4-6", max_tokens=1024,
...                                  messages=[{"role": "user", "content": "Hi"}])  # doctest: +SKIP

``client.messages.create`` (streamed or not), ``client.messages.stream`` and
``client.messages.parse`` keep the SDK's signatures and return types; each call

1. estimates its input tokens (:func:`estimate_input_tokens`, or exactly with
   ``messages.count_tokens`` when ``estimate="count_tokens"``), reserves its
   ``max_tokens`` of output and, with a budget, its worst-case cost
   (:meth:`~ratelimit.Pricing.max_cost`), in one script call for the model's
   family quota and the budget together;
2. sends the request with the SDK's own retries off, so that every retry goes
   through the limiter too;
3. settles with the real usage: input as the API counts it for its input-token
   limit (``input_tokens + cache_creation_input_tokens``; cache reads are free),
   output as generated, and the priced cost in the budget's ledger;
4. reads the ``anthropic-ratelimit-*-remaining`` headers of every response and
   lowers the shared buckets to them when the provider has less left than we
   think (another client spends the same account). A 429 holds every process
   back for its ``retry-after`` before this one tries again.

With a ``cache`` (:class:`~ratelimit.cache.ResponseCache`), a repeated
deterministic request is answered from Redis without touching the limiter or
the API, and the budget's ledger records what it saved. With a ``policy``
(:class:`~ratelimit.routing.ModelPolicy`), the call goes to the first of the
policy's models whose quota admits it within ``policy.max_wait_s``.

Everything else (``client.models``, ``client.messages.count_tokens``,
``client.messages.batches``, ``with_raw_response``...) is the real client's,
unmetered. ``client.with_options(...)`` returns a wrapped copy under the same
limits.

This module needs the ``anthropic`` extra (``pip install 'llm-quota-guard[anthropic]'``);
``import ratelimit`` does not import it.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import logging
import math
import os
import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar, cast, overload

try:
    import anthropic
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "ratelimit.anthropic needs the anthropic SDK: pip install 'llm-quota-guard[anthropic]'"
    ) from exc

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from anthropic.lib.streaming import (
    AsyncMessageStream,
    AsyncMessageStreamManager,
    MessageStream,
    MessageStreamManager,
)
from anthropic.resources.messages import AsyncMessages, Messages
from anthropic.types import Message, RawMessageStreamEvent

from ratelimit import asyncio as rl_asyncio
from ratelimit.backend import connect
from ratelimit.cache import AsyncResponseCache, ResponseCache
from ratelimit.core.numbers import exact, positive
from ratelimit.core.results import Alert, LimiterState
from ratelimit.core.scope import DEFAULT_LEASE_S, validate_name
from ratelimit.core.settings import Budget, Rate
from ratelimit.errors import (
    AcquireTimeout,
    BudgetExceeded,
    InvalidArgument,
    InvalidArgumentType,
    LimiterError,
    NoQuotaForModel,
)
from ratelimit.limiter import Limiter, LimiterGroup, SyncClient
from ratelimit.pricing import Pricing, token_counts
from ratelimit.routing import ModelPolicy, RoutingContext

__all__ = [
    "BYTES_PER_TOKEN",
    "DIMENSIONS",
    "DOCUMENT_TOKENS",
    "IMAGE_TOKENS",
    "MESSAGE_TOKENS",
    "TOOL_USE_SYSTEM_TOKENS",
    "AsyncGuard",
    "AsyncLimitedAnthropic",
    "AsyncLimitedMessages",
    "Guard",
    "LimitedAnthropic",
    "LimitedMessages",
    "NoQuotaForModel",
    "estimate_input_tokens",
    "wrap",
]

log = logging.getLogger("ratelimit")

Dimension = Literal["requests", "input_tokens", "output_tokens"]
Estimate = Literal["local", "count_tokens"]
Limits = Mapping[str, Mapping[str, Rate]]
"""``limits``: a model ID or family prefix (or ``"*"``) to its rates by dimension."""

DIMENSIONS: Final[tuple[Dimension, ...]] = ("requests", "input_tokens", "output_tokens")
"""The rate dimensions a ``limits`` entry may set, as the API limits them (RPM, ITPM, OTPM)."""

_REMAINING_HEADER: Final[dict[str, str]] = {
    "requests": "anthropic-ratelimit-requests-remaining",
    "input_tokens": "anthropic-ratelimit-input-tokens-remaining",
    "output_tokens": "anthropic-ratelimit-output-tokens-remaining",
}

# -- the local estimate -------------------------------------------------------------

BYTES_PER_TOKEN: Final = 3
"""UTF-8 bytes of prompt JSON per estimated token. Claude's tokenizer averages some
3.5 to 4 characters a token on English and code; counting bytes of the JSON (keys,
quotes and escapes included) and dividing by 3 errs high there, and is about even
for scripts of 3-byte characters (CJK), where a token is roughly one character."""

MESSAGE_TOKENS: Final = 8
"""Tokens added per message, system block and tool definition: the role markers and
separators the API wraps them in, which the JSON does not show."""

TOOL_USE_SYSTEM_TOKENS: Final = 500
"""Tokens added when ``tools`` are given: the API prepends a tool-use system prompt
(some 300 to 350 tokens on current models), rounded up."""

IMAGE_TOKENS: Final = 5_000
"""Tokens counted per image block, whatever its source: above the largest image the
API keeps after resizing (about 4,800 tokens at its highest resolution)."""

DOCUMENT_TOKENS: Final = 50_000
"""Tokens counted per document block that is not plain text (a PDF as base64, URL or
file): a guess of some ten pages. Plain-text and content-block documents are counted
by their text. For PDFs prefer ``estimate="count_tokens"``."""

#: Request fields that make up the prompt the API counts as input.
_PROMPT_FIELDS: Final = ("system", "messages", "tools", "tool_choice", "output_config")

#: What ``messages.count_tokens`` accepts of a ``messages.create`` request.
_COUNT_FIELDS: Final = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config"}
)

# -- retries ---------------------------------------------------------------------------

RETRY_INITIAL_S: float = 0.5
"""First pause (seconds) before retrying a 5xx, 529 or connection error; doubles per
attempt up to :data:`RETRY_MAX_S`, less up to a quarter of jitter (the SDK's rule)."""

RETRY_MAX_S: float = 8.0
"""Longest pause (seconds) between two attempts of one call, unless a ``retry-after``
header says otherwise."""


# -- the pure part: configuration, estimates, usage, headers ----------------------------


@dataclass(frozen=True)
class _Config:
    """What ``wrap`` validated: names, rates by family, budget, pricing and options."""

    name: str
    limits: Mapping[str, Mapping[str, Rate]]
    budget: Budget | None
    pricing: Pricing
    estimate: Estimate
    max_attempts: int
    lease_s: float
    acquire_timeout: float | None

    @classmethod
    def build(
        cls,
        *,
        name: object,
        limits: object,
        budget: object,
        pricing: object,
        estimate: object,
        max_attempts: object,
        lease_s: object,
        acquire_timeout: object,
    ) -> _Config:
        scope = validate_name(name, "name")
        if not isinstance(limits, Mapping) or not limits:
            raise InvalidArgumentType(
                'limits must map model IDs or family prefixes to {"requests": Rate(...), ...}'
            )
        families: dict[str, dict[str, Rate]] = {}
        for key, rates in limits.items():
            family = validate_name(key, "a limits key")
            if not isinstance(rates, Mapping) or not rates:
                raise InvalidArgumentType(
                    f"limits[{family!r}] must map dimensions to Rate objects, e.g. "
                    '{"requests": Rate(50, per=60)}'
                )
            for dim, rate in rates.items():
                if dim not in DIMENSIONS:
                    raise InvalidArgument(
                        f"limits[{family!r}] has an unknown dimension {dim!r}; "
                        f"the API limits {list(DIMENSIONS)}"
                    )
                if not isinstance(rate, Rate):
                    raise InvalidArgumentType(
                        f"limits[{family!r}][{dim!r}] must be a Rate, not {type(rate).__name__}"
                    )
            families[family] = dict(rates)
        if budget is not None and not isinstance(budget, Budget):
            raise InvalidArgumentType(f"budget must be a Budget, not {type(budget).__name__}")
        if pricing is None:
            pricing = Pricing.default()
        elif not isinstance(pricing, Pricing):
            raise InvalidArgumentType(f"pricing must be a Pricing, not {type(pricing).__name__}")
        if estimate not in ("local", "count_tokens"):
            raise InvalidArgument(f"estimate must be 'local' or 'count_tokens', got {estimate!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise InvalidArgumentType("max_attempts must be an int")
        if max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be at least 1, got {max_attempts}")
        lease = float(positive(lease_s, "lease_s"))
        timeout: float | None = None
        if acquire_timeout is not None:
            wait = exact(acquire_timeout, "acquire_timeout")
            if wait < 0:
                raise InvalidArgument(f"acquire_timeout must not be negative, got {wait}")
            timeout = float(wait)
        mode: Estimate = "local" if estimate == "local" else "count_tokens"
        return cls(scope, families, budget, pricing, mode, max_attempts, lease, timeout)

    def family(self, model: object) -> str:
        """The ``limits`` key that governs ``model``: the longest matching prefix, else "*"."""
        if not isinstance(model, str) or not model:
            raise InvalidArgumentType(f"model must be a non-empty str, got {model!r}")
        best: str | None = None
        for key in self.limits:
            if key != "*" and model.startswith(key) and (best is None or len(key) > len(best)):
                best = key
        if best is not None:
            return best
        if "*" in self.limits:
            return "*"
        raise NoQuotaForModel(
            f"no limits entry matches model {model!r}; the entries are {sorted(self.limits)} "
            '(add the model, a prefix of it, or a "*" default)'
        )

    def scope_name(self, family: str) -> str:
        """The limiter (scope) name of a family's quota."""
        return f"{self.name}:{family}"

    @property
    def budget_name(self) -> str:
        """The budget limiter's scope name."""
        return f"{self.name}:budget"

    def costs(self, model: str, family: str, plan: _Plan) -> dict[str, Any]:
        """What admission reserves for ``plan`` on ``model``, by dimension.

        A local estimate larger than the input bucket is cut to a full bucket (it
        errs high by design, and the settle charges the real count); an exact count
        is not, so a prompt that can never fit fails at once. Output is reserved as
        ``max_tokens``, at most a full bucket, as the API itself does.
        """
        rates = self.limits[family]
        costs: dict[str, Any] = {}
        if "requests" in rates:
            costs["requests"] = 1
        if "input_tokens" in rates:
            cap = math.floor(rates["input_tokens"].capacity)
            costs["input_tokens"] = plan.input_tokens if plan.exact else min(plan.input_tokens, cap)
        if "output_tokens" in rates:
            costs["output_tokens"] = min(
                plan.max_tokens, math.floor(rates["output_tokens"].capacity)
            )
        if self.budget is not None:
            costs["usd"] = self.pricing.max_cost(
                model, input_tokens=plan.input_tokens, max_output_tokens=plan.max_tokens
            )
        return costs

    def fits(self, family: str, costs: Mapping[str, Any], levels: Mapping[str, float]) -> bool:
        """Whether buckets at ``levels`` could pay ``costs`` now (a routing hint only)."""
        return all(levels.get(dim, math.inf) >= float(costs[dim]) for dim in self.limits[family])

    def remaining(
        self,
        family: str,
        headers: Mapping[str, str],
        *,
        age_s: float = 0.0,
        pending_output: int = 0,
    ) -> dict[str, int]:
        """What the provider's headers say is left, per dimension, brought to now.

        ``age_s`` (seconds since the headers were written) adds the refill since
        then; ``pending_output`` takes off output the provider charges after the
        headers (a stream's). Empty when no dimension is below its bucket's
        capacity: such headers can lower nothing, so no script call is needed.
        """
        rates = self.limits[family]
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


@dataclass
class _Plan:
    """One call before admission: the request, its estimate and its candidate models."""

    request: dict[str, Any]
    input_tokens: int
    exact: bool
    max_tokens: int
    candidates: list[str] = field(default_factory=list)


PermitT = TypeVar("PermitT")
R = TypeVar("R")


@dataclass
class _Booked(Generic[PermitT]):
    """An admitted attempt: the model it goes to, that model's family, and the permit."""

    model: str
    family: str
    permit: PermitT


@dataclass(frozen=True)
class _Retry:
    """What to do after a failed attempt (its permit already cancelled)."""

    again: bool
    """Try again, through the limiter."""
    hold_s: float | None = None
    """For a 429: seconds every process holds back (``observe(retry_after=...)``)."""
    sleep_s: float = 0.0
    """This caller's own pause before the next attempt, in seconds."""


def _sentinel(value: object) -> bool:
    return isinstance(value, anthropic.NotGiven | anthropic.Omit)


def _materialize(value: Any) -> Any:
    """``value`` with every one-shot iterable turned into a list, recursively.

    The SDK accepts iterables (a generator of messages); the wrapper reads a
    request several times (estimate, cache key, each attempt), so it reads them
    once into lists. Strings, binary data, file objects and SDK models stay.
    """
    if value is None or isinstance(value, str | bytes | bytearray | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: _materialize(v) for k, v in value.items()}
    if hasattr(value, "model_dump") or hasattr(value, "read") or isinstance(value, os.PathLike):
        return value
    if isinstance(value, Iterable):
        return [_materialize(v) for v in value]
    return value


class _PromptSize:
    """Bytes of a prompt's JSON, with media blocks counted apart at a fixed cost."""

    def __init__(self) -> None:
        self.bytes = 0
        self.media_tokens = 0

    def walk(self, value: object) -> None:
        if value is None or isinstance(value, bool):
            self.bytes += 5
        elif isinstance(value, str):
            self.bytes += len(value.encode("utf-8", "surrogatepass")) + 2
        elif isinstance(value, int | float):
            self.bytes += len(repr(value))
        elif isinstance(value, Mapping):
            self._mapping(value)
        elif isinstance(value, list | tuple):
            self.bytes += 2 + len(value)
            for item in value:
                self.walk(item)
        else:
            dump = getattr(value, "model_dump", None)
            if callable(dump):  # a content block of an earlier response
                self.walk(dump(mode="json", exclude_unset=True))
            # Anything else is binary data (a file, a path), which only media blocks
            # hold; they are counted whole below.

    def _mapping(self, block: Mapping[Any, Any]) -> None:
        kind = block.get("type")
        if kind == "image":
            self.media_tokens += IMAGE_TOKENS
            return
        if kind == "document":
            source = block.get("source")
            source_kind = source.get("type") if isinstance(source, Mapping) else None
            if source_kind == "text" and isinstance(source, Mapping):
                self.walk(source.get("data"))
            elif source_kind == "content" and isinstance(source, Mapping):
                self.walk(source.get("content"))
            else:
                self.media_tokens += DOCUMENT_TOKENS
            block = {k: v for k, v in block.items() if k != "source"}
        self.bytes += 2
        for key, item in block.items():
            if _sentinel(item):
                continue
            self.bytes += len(str(key)) + 4
            self.walk(item)


def estimate_input_tokens(request: Mapping[str, Any]) -> int:
    """A fast local estimate of a request's input tokens that errs high.

    The rule: the UTF-8 bytes of the JSON of the request's ``system``,
    ``messages``, ``tools``, ``tool_choice`` and ``output_config`` (``extra_body``
    merged over them), divided by :data:`BYTES_PER_TOKEN` (3) and rounded up,
    plus :data:`MESSAGE_TOKENS` (8) per message, system block and tool, plus
    :data:`TOOL_USE_SYSTEM_TOKENS` (500) when tools are given. Media are not
    counted by their bytes: each image block counts :data:`IMAGE_TOKENS`
    (5,000) and each PDF document block :data:`DOCUMENT_TOKENS` (50,000). The
    result is at least 1. It counts the whole prompt, cached parts included
    (which parts the API reads from its cache is known only afterwards).
    """
    merged: dict[str, Any] = dict(request)
    extra = merged.get("extra_body")
    if isinstance(extra, Mapping):
        merged.update(extra)
    size = _PromptSize()
    for name in _PROMPT_FIELDS:
        value = merged.get(name)
        if value is not None and not _sentinel(value):
            size.walk(value)
    parts = 0
    for name in ("messages", "tools"):
        value = merged.get(name)
        if isinstance(value, list | tuple):
            parts += len(value)
    system = merged.get("system")
    if isinstance(system, str):
        parts += 1
    elif isinstance(system, list | tuple):
        parts += len(system)
    tools = merged.get("tools")
    overhead = TOOL_USE_SYSTEM_TOKENS if isinstance(tools, list | tuple) and tools else 0
    tokens = math.ceil(size.bytes / BYTES_PER_TOKEN) + size.media_tokens
    return max(1, tokens + MESSAGE_TOKENS * parts + overhead)


def _count_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a create request that ``messages.count_tokens`` takes."""
    return {k: v for k, v in request.items() if k in _COUNT_FIELDS and not _sentinel(v)}


def _content_bytes(blocks: Iterable[Any]) -> int:
    """UTF-8 bytes of the content generated so far (text, thinking, tool input)."""
    total = 0
    for block in blocks:
        for attr in ("text", "thinking", "data"):
            value = getattr(block, attr, None)
            if isinstance(value, str):
                total += len(value.encode("utf-8", "surrogatepass"))
        tool_input = getattr(block, "input", None)
        if tool_input is not None:
            total += len(json.dumps(tool_input, default=str).encode())
    return total


@dataclass
class _Usage:
    """What a response used, as far as it got: the provider's counts, by kind."""

    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0
    content_bytes: int = 0
    """UTF-8 bytes of generated content seen, for a stream cut short."""
    started: bool = False
    """Whether any usage arrived (a message, or a stream's ``message_start``)."""
    finished: bool = False
    """Whether the output count is final (a stop reason arrived)."""
    final: object = None
    """The provider's own ``Usage`` of a finished response, priced as is."""
    cache_creation: dict[str, int] | None = None

    @classmethod
    def of_message(cls, message: Any) -> _Usage:
        """The usage of a complete message, or of a stream's snapshot (maybe partial)."""
        found = cls()
        if message is None:
            return found
        usage = message.usage
        found.started = True
        found._absorb(usage)
        found.content_bytes = _content_bytes(message.content)
        found.finished = message.stop_reason is not None
        if found.finished:
            found.final = usage
        return found

    def _absorb(self, usage: Any) -> None:
        for name in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
        ):
            value = getattr(usage, name, None)
            if isinstance(value, int):
                setattr(self, name, value)
        split = getattr(usage, "cache_creation", None)
        if split is not None:
            self.cache_creation = {
                "ephemeral_5m_input_tokens": int(getattr(split, "ephemeral_5m_input_tokens", 0)),
                "ephemeral_1h_input_tokens": int(getattr(split, "ephemeral_1h_input_tokens", 0)),
            }

    def see(self, event: RawMessageStreamEvent) -> None:
        """Follow one raw stream event."""
        if event.type == "message_start":
            self.started = True
            self._absorb(event.message.usage)
        elif event.type == "message_delta":
            # Counts on a message_delta are cumulative: they replace, never add.
            self._absorb(event.usage)
            self.finished = event.delta.stop_reason is not None
        elif event.type == "content_block_delta":
            delta = event.delta
            text = getattr(delta, "text", None) or getattr(delta, "thinking", None)
            text = text or getattr(delta, "partial_json", None)
            if isinstance(text, str):
                self.content_bytes += len(text.encode("utf-8", "surrogatepass"))

    @property
    def itpm_tokens(self) -> int:
        """Input as the API's input-token limit counts it: uncached plus cache writes."""
        return self.input_tokens + self.cache_creation_input_tokens

    def output_so_far(self, max_tokens: int) -> int:
        """Output tokens to charge: the final count, or for a stream cut short, the
        larger of the count reported and its content's bytes / 3, at most ``max_tokens``."""
        if self.finished:
            return self.output_tokens
        seen = math.ceil(self.content_bytes / BYTES_PER_TOKEN)
        return min(max_tokens, max(self.output_tokens, seen))

    def priced(self, max_tokens: int) -> object:
        """A usage for pricing: the provider's own when final, else the counts so far."""
        if self.finished and self.final is not None:
            return self.final
        usage: dict[str, object] = {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": self.output_so_far(max_tokens),
        }
        if self.cache_creation is not None:
            usage["cache_creation"] = self.cache_creation
        return usage


def _actual(config: _Config, family: str, usage: _Usage, max_tokens: int) -> dict[str, Any]:
    """A settle's amounts per rate dimension of ``family``."""
    rates = config.limits[family]
    actual: dict[str, Any] = {}
    if "input_tokens" in rates:
        actual["input_tokens"] = usage.itpm_tokens
    if "output_tokens" in rates:
        actual["output_tokens"] = usage.output_so_far(max_tokens)
    return actual


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


def _retry(exc: BaseException, attempt: int, max_attempts: int) -> _Retry:
    """How to go on after an attempt failed with ``exc``."""
    more = attempt < max_attempts
    if isinstance(exc, anthropic.APIStatusError):
        if _spend_limit(exc):
            return _Retry(False)
        headers = exc.response.headers
        allowed = more and _should_retry(headers, exc.status_code)
        wait = _retry_after_s(headers)
        if exc.status_code == 429:
            # The limiter does the waiting: observe() holds every process back.
            return _Retry(allowed, hold_s=_backoff_s(attempt) if wait is None else wait)
        return _Retry(allowed, sleep_s=_backoff_s(attempt) if wait is None else wait)
    if isinstance(exc, anthropic.APIConnectionError):  # timeouts included
        return _Retry(more, sleep_s=_backoff_s(attempt))
    return _Retry(False)


def _request(params: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a call, every iterable read into a list."""
    return {name: _materialize(value) for name, value in params.items()}


def _model_and_max_tokens(request: Mapping[str, Any]) -> tuple[str, int]:
    """A request's model and ``max_tokens``, checked (the SDK requires both)."""
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgumentType(f"model must be a non-empty str, got {model!r}")
    max_tokens = request.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise InvalidArgumentType(f"max_tokens must be an int, got {max_tokens!r}")
    return model, max(0, max_tokens)


def _candidates(models: object) -> list[str]:
    if isinstance(models, str) or not isinstance(models, list | tuple) or not models:
        raise InvalidArgumentType(f"a ModelPolicy must return a non-empty list of IDs: {models!r}")
    for model in models:
        if not isinstance(model, str) or not model:
            raise InvalidArgumentType(f"a ModelPolicy returned a bad model ID {model!r}")
    return list(models)


def _shorter(wait_s: float, timeout: float | None) -> float:
    """A fallback candidate's wait: the policy's bound, within the call's timeout."""
    return wait_s if timeout is None else min(wait_s, timeout)


def _headers_of(stream: Any) -> Mapping[str, str]:
    headers: Mapping[str, str] = stream.response.headers
    return headers


def _snapshot(stream: MessageStream[Any] | AsyncMessageStream[Any]) -> Any:
    """A MessageStream's accumulated message, or None before ``message_start``."""
    try:
        return stream.current_message_snapshot
    except AssertionError:  # the SDK asserts there is one
        return None


def _levels(config: _Config, state: LimiterState, grouped: bool) -> dict[str, dict[str, float]]:
    """Bucket levels by family and dimension from the state of every family's limiter."""
    levels: dict[str, dict[str, float]] = {}
    for family, rates in config.limits.items():
        prefix = f"{config.scope_name(family)}." if grouped else ""
        levels[family] = {dim: state.rate(prefix + dim).available for dim in rates}
    return levels


def _tags(headers: Mapping[str, str] | None) -> dict[str, object] | None:
    request_id = None if headers is None else headers.get("request-id")
    return {"request_id": request_id} if request_id else None


# -- the logic once: flows of effects, driven by a sync and an asyncio shell -------------


@dataclass(frozen=True)
class _Call:
    """Effect: call ``fn``; a sync shell takes its result, an asyncio one awaits it."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    shield: bool = False
    """asyncio: let the call finish even if the task is cancelled meanwhile."""


@dataclass(frozen=True)
class _Sleep:
    """Effect: pause this caller for ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class _Enter:
    """Effect: enter a context manager (``__enter__`` or ``__aenter__``)."""

    manager: Any


@dataclass(frozen=True)
class _Exit:
    """Effect: exit a context manager (``__exit__`` or ``__aexit__``)."""

    manager: Any
    exc_info: tuple[Any, Any, Any]


_Effect = _Call | _Sleep | _Enter | _Exit
_Flow = Generator[_Effect, Any, R]


def _run(flow: _Flow[R]) -> R:
    """Drive ``flow`` synchronously: perform each effect and send back its result."""
    try:
        effect = next(flow)
        while True:
            try:
                if isinstance(effect, _Call):
                    reply = effect.fn(*effect.args, **effect.kwargs)
                elif isinstance(effect, _Sleep):
                    time.sleep(effect.seconds)
                    reply = None
                elif isinstance(effect, _Enter):
                    reply = effect.manager.__enter__()
                else:
                    reply = effect.manager.__exit__(*effect.exc_info)
            except BaseException as exc:
                effect = flow.throw(exc)
            else:
                effect = flow.send(reply)
    except StopIteration as stop:
        result: R = stop.value
        return result


async def _arun(flow: _Flow[R]) -> R:
    """Drive ``flow`` on asyncio: perform each effect, awaited, and send back its result."""
    try:
        effect = next(flow)
        while True:
            try:
                if isinstance(effect, _Call):
                    pending = effect.fn(*effect.args, **effect.kwargs)
                    reply = await (asyncio.shield(pending) if effect.shield else pending)
                elif isinstance(effect, _Sleep):
                    await asyncio.sleep(effect.seconds)
                    reply = None
                elif isinstance(effect, _Enter):
                    reply = await effect.manager.__aenter__()
                else:
                    reply = await effect.manager.__aexit__(*effect.exc_info)
            except BaseException as exc:
                effect = flow.throw(exc)
            else:
                effect = flow.send(reply)
    except StopIteration as stop:
        result: R = stop.value
        return result


@dataclass(frozen=True)
class _Parts:
    """What a wrapped ``messages`` works with: its quotas, the real client (for
    ``count_tokens``) and a copy of it with the SDK's retries off (for the calls)."""

    guard: Guard | AsyncGuard
    real: Any
    inner: Any


def _plan(parts: _Parts, request: dict[str, Any]) -> _Flow[_Plan]:
    """A call's estimate and candidate models (asking the policy, if any)."""
    model, max_tokens = _model_and_max_tokens(request)
    guard = parts.guard
    config = guard.config
    exact = config.estimate == "count_tokens"
    tokens: int | None = None
    if exact:
        try:
            counted = yield _Call(parts.real.messages.count_tokens, kwargs=_count_request(request))
            tokens = counted.input_tokens
        except anthropic.APIError as exc:
            # The count only sharpens the reservation; the call itself will tell.
            log.warning("count_tokens failed (%s); using the local estimate", exc)
            exact = False
    if tokens is None:
        tokens = estimate_input_tokens(request)
    plan = _Plan(request, tokens, exact, max_tokens)
    policy = guard.policy
    if policy is None:
        plan.candidates = [model]
        config.family(model)  # an unknown model fails here, before anything is sent
        return plan
    budget = None
    if guard.budget is not None:
        budget = (yield _Call(guard.budget.state)).budget("usd")
    levels_of: Callable[[], Mapping[str, Mapping[str, float]]]
    levels_of = yield _Call(guard._level_reader)

    def can_admit(model: str) -> bool:
        levels = levels_of()
        family = config.family(model)
        costs = config.costs(model, family, plan)
        return config.fits(family, costs, levels[family])

    context = RoutingContext(budget=budget, can_admit=can_admit)
    plan.candidates = _candidates(policy.choose(request, context))
    return plan


def _admit(guard: Guard | AsyncGuard, plan: _Plan) -> _Flow[_Booked[Any]]:
    """The first candidate whose quota admits within the policy's wait bound.

    Every candidate but the last is given ``policy.max_wait_s`` seconds (and
    is passed over when its budget cannot take the call); the last waits as
    long as ``acquire_timeout`` allows.
    """
    last = len(plan.candidates) - 1
    for i, model in enumerate(plan.candidates):
        family = guard.family(model)
        costs = guard.config.costs(model, family, plan)
        timeout = guard.config.acquire_timeout
        if i < last and guard.policy is not None:
            timeout = _shorter(guard.policy.max_wait_s, timeout)
        try:
            acquire = guard.quota(family).acquire
            permit = yield _Call(acquire, (timeout,), {"model": model, **costs})
        except (AcquireTimeout, BudgetExceeded):
            if i == last:
                raise
            continue
        return _Booked(model, family, permit)
    raise AssertionError("unreachable: a plan has at least one candidate")


_Sent = tuple[R, Mapping[str, str] | None]


def _attempts(
    guard: Guard | AsyncGuard, plan: _Plan, send: Callable[[dict[str, Any]], _Flow[_Sent[R]]]
) -> _Flow[tuple[R, _Booked[Any], Mapping[str, str] | None]]:
    """Admit, send, and on a retryable failure give the permit back and go again."""
    attempt = 0
    while True:
        attempt += 1
        booked = yield from _admit(guard, plan)
        try:
            result, headers = yield from send({**plan.request, "model": booked.model})
        except Exception as exc:
            yield from _cancel(booked)
            retry = _retry(exc, attempt, guard.config.max_attempts)
            if retry.hold_s is not None and isinstance(exc, anthropic.APIStatusError):
                yield from _hold(guard, booked, exc.response.headers, retry.hold_s)
            if not retry.again:
                raise
            log.info("attempt %d to %s failed (%s); retrying", attempt, booked.model, exc)
            if retry.sleep_s > 0:
                yield _Sleep(retry.sleep_s)
            continue
        except BaseException:
            # Cancelled while the request was out: give the permit back regardless.
            yield from _cancel(booked, shield=True)
            raise
        return result, booked, headers


def _send_message(inner: Any, body: dict[str, Any]) -> _Flow[_Sent[Message]]:
    raw = yield _Call(inner.messages.with_raw_response.create, kwargs=body)
    message = yield _Call(raw.parse)
    return message, raw.headers


def _send_parse(inner: Any, body: dict[str, Any]) -> _Flow[_Sent[Any]]:
    return (yield _Call(inner.messages.parse, kwargs=body)), None


def _send_events(inner: Any, body: dict[str, Any]) -> _Flow[_Sent[Any]]:
    stream = yield _Call(inner.messages.create, kwargs=body)
    return stream, _headers_of(stream)


def _send_stream(inner: Any, body: dict[str, Any]) -> _Flow[_Sent[tuple[Any, Any]]]:
    manager = inner.messages.stream(**body)
    stream = yield _Enter(manager)
    return (manager, stream), _headers_of(stream)


def _cancel(booked: _Booked[Any], *, shield: bool = False) -> _Flow[None]:
    try:
        yield _Call(booked.permit.cancel, shield=shield)
    except LimiterError:
        log.exception("could not cancel permit %s; its lease will", booked.permit.id)


def _hold(
    guard: Guard | AsyncGuard, booked: _Booked[Any], headers: Mapping[str, str], hold_s: float
) -> _Flow[None]:
    """After a 429: every process backs off for ``hold_s`` seconds."""
    remaining = guard.config.remaining(booked.family, headers)
    try:
        observe = guard.limiter(booked.family).observe
        yield _Call(observe, kwargs={"retry_after": hold_s, **remaining})
    except LimiterError:
        log.exception("could not pass a 429 on to the shared limiter")


def _finish(
    guard: Guard | AsyncGuard,
    booked: _Booked[Any],
    plan: _Plan,
    usage: _Usage,
    headers: Mapping[str, str] | None,
    *,
    headers_at: float,
    streamed: bool = False,
    error: BaseException | None = None,
) -> _Flow[None]:
    """Settle a call that went out and lower the buckets to the provider's figures.

    Both in one script call, in that order: a settle gives back what was
    over-reserved, which must not lift a bucket above what the provider says
    is left. A stream's headers were written before its output was charged
    (``streamed``); ``error`` is what ended a stream, if anything did.
    """
    permit, config = booked.permit, guard.config
    remaining: dict[str, int] = {}
    if headers is not None:
        age = time.monotonic() - headers_at
        pending = usage.output_so_far(plan.max_tokens) if streamed and usage.started else 0
        remaining = config.remaining(booked.family, headers, age_s=age, pending_output=pending)
    try:
        if not usage.started:
            if isinstance(error, anthropic.APIError):
                yield _Call(permit.cancel)  # the API failed before a token: nothing was used
                return
            # The request went out but no usage came back: charged as reserved.
            yield _Call(
                permit.settle,
                kwargs={"model": booked.model, "tags": _tags(headers), "remaining": remaining},
            )
        else:
            actual = _actual(config, booked.family, usage, plan.max_tokens)
            priced = usage.priced(plan.max_tokens)
            yield from _settle(permit, booked.model, actual, priced, headers, remaining=remaining)
    except LimiterError:
        log.exception("could not settle permit %s; its lease will", permit.id)


def _settle(
    permit: Any,
    model: str,
    actual: dict[str, Any],
    usage: object,
    headers: Mapping[str, str] | None,
    *,
    remaining: Mapping[str, int],
) -> _Flow[None]:
    tags = _tags(headers)
    common = {"model": model, "tags": tags, "remaining": remaining}
    try:
        yield _Call(permit.settle, kwargs={**common, "usage": usage, **actual})
    except InvalidArgument as exc:
        # A usage the price table cannot price (fast mode, a new model): charge
        # the budget what it reserved rather than leave the permit to its lease.
        log.warning("could not price the usage of %s (%s); charging the reservation", model, exc)
        reserved = permit.reserved.get("usd")
        extra = {} if reserved is None else {"usd": reserved}
        yield _Call(permit.settle, kwargs={**common, **actual, **extra})


def _cached(guard: Guard | AsyncGuard, request: dict[str, Any]) -> _Flow[Message | None]:
    """A cached answer to ``request`` (recording what it saved), or None."""
    cache = guard.cache
    if cache is None:
        return None
    try:
        found = yield _Call(cache.get, (request,))
    except InvalidArgument as exc:
        log.debug("request not cacheable: %s", exc)
        return None
    except LimiterError:
        log.exception("the response cache is unavailable; calling the API")
        return None
    if found is None:
        return None
    message = Message.model_validate(found)
    if guard.budget is not None:
        model = str(request["model"])
        try:
            saved = guard.config.pricing.cost(model, message.usage)
            tokens = token_counts(message.usage)
            yield _Call(guard.budget.record_saving, (saved,), {"model": model, "tokens": tokens})
        except LimiterError:
            log.exception("could not record what a cached response saved")
    return message


def _store(guard: Guard | AsyncGuard, request: dict[str, Any], message: Message) -> _Flow[None]:
    cache = guard.cache
    if cache is None:
        return
    try:
        yield _Call(cache.put, (request, message.model_dump(mode="json")))
    except InvalidArgument:
        pass  # not cacheable (logged on the lookup)
    except LimiterError:
        log.exception("could not store a response in the cache")


def _create(parts: _Parts, request: dict[str, Any]) -> _Flow[Message]:
    """``messages.create`` without ``stream=True``: cache, admission, send, settle."""
    hit = yield from _cached(parts.guard, request)
    if hit is not None:
        return hit
    plan = yield from _plan(parts, request)
    send = functools.partial(_send_message, parts.inner)
    message, booked, headers = yield from _attempts(parts.guard, plan, send)
    usage = _Usage.of_message(message)
    yield from _finish(parts.guard, booked, plan, usage, headers, headers_at=time.monotonic())
    yield from _store(parts.guard, request, message)
    return message


def _parse(parts: _Parts, request: dict[str, Any]) -> _Flow[Any]:
    """``messages.parse``: admission, send, settle."""
    plan = yield from _plan(parts, request)
    send = functools.partial(_send_parse, parts.inner)
    message, booked, _ = yield from _attempts(parts.guard, plan, send)
    usage = _Usage.of_message(message)
    yield from _finish(parts.guard, booked, plan, usage, None, headers_at=time.monotonic())
    return message


def _open_events(parts: _Parts, request: dict[str, Any]) -> _Flow[tuple[Any, _Meter]]:
    """``messages.create(stream=True)``: the SDK's open stream and its meter."""
    plan = yield from _plan(parts, request)
    send = functools.partial(_send_events, parts.inner)
    stream, booked, headers = yield from _attempts(parts.guard, plan, send)
    return stream, _Meter(parts.guard, booked, plan, headers, time.monotonic())


@dataclass
class _Opened:
    """A ``messages.stream`` entered: the SDK's manager and stream, and the meter."""

    manager: Any
    stream: Any
    meter: _Meter


def _open_stream(parts: _Parts, params: Mapping[str, Any]) -> _Flow[_Opened]:
    """``messages.stream`` entered: admission, then the SDK's manager entered."""
    plan = yield from _plan(parts, _request(params))
    send = functools.partial(_send_stream, parts.inner)
    (manager, stream), booked, headers = yield from _attempts(parts.guard, plan, send)
    return _Opened(manager, stream, _Meter(parts.guard, booked, plan, headers, time.monotonic()))


def _close_stream(opened: _Opened, exc_info: tuple[Any, Any, Any]) -> _Flow[None]:
    """``messages.stream`` exited: settled from the snapshot, then the SDK's manager exited."""
    try:
        yield from opened.meter.finish(exc_info[1], _Usage.of_message(_snapshot(opened.stream)))
    finally:
        yield _Exit(opened.manager, exc_info)


class _Meter:
    """Settles an admitted stream once, when it ends or closes."""

    def __init__(
        self,
        guard: Guard | AsyncGuard,
        booked: _Booked[Any],
        plan: _Plan,
        headers: Mapping[str, str] | None,
        opened_at: float,
    ) -> None:
        self.guard = guard
        self.booked = booked
        self.plan = plan
        self.headers = headers
        self.opened_at = opened_at
        self.usage = _Usage()
        """What a raw event stream used so far."""
        self.done = False

    def finish(self, error: BaseException | None, usage: _Usage | None = None) -> _Flow[None]:
        if self.done:
            return
        self.done = True
        yield from _finish(
            self.guard,
            self.booked,
            self.plan,
            self.usage if usage is None else usage,
            self.headers,
            headers_at=self.opened_at,
            streamed=True,
            error=error,
        )


MeteredT = TypeVar("MeteredT", bound="_MeteredStream | _AsyncMeteredStream")


def _metered(cls: Callable[..., MeteredT], stream: Any, meter: _Meter) -> MeteredT:
    """The SDK's open ``stream`` as a ``cls`` (the same response), settled by ``meter``."""
    metered = cls(
        cast_to=stream._cast_to,
        response=stream.response,
        client=stream._client,
        options=stream._options,
    )
    metered._meter = meter
    return metered


# -- the quotas ---------------------------------------------------------------------------

ClientT = TypeVar("ClientT")
CacheT = TypeVar("CacheT")
LimiterT = TypeVar("LimiterT")
GroupT = TypeVar("GroupT")


class _Quotas(Generic[ClientT, CacheT, LimiterT, GroupT]):
    """A guard's limiters, built and looked up the same way for both shells."""

    def __init__(
        self,
        config: _Config,
        redis_client: ClientT,
        *,
        cache: CacheT | None,
        policy: ModelPolicy | None,
        on_alert: Callable[[Alert], object] | None,
        owns_redis: bool = False,
    ) -> None:
        self.config = config
        self.redis = redis_client
        """The Redis client of every limiter here."""
        self._owns_redis = owns_redis
        self.cache = cache
        self.policy = policy
        self.budget: LimiterT | None = None
        """The budget's limiter (ledger, spend, alerts), or None without a budget."""
        if config.budget is not None:
            self.budget = self._new_limiter(
                redis_client,
                config.budget_name,
                slot=config.name,
                lease_s=config.lease_s,
                on_alert=on_alert,
                pricing=config.pricing,
                usd=config.budget,
            )
        self._limiters: dict[str, LimiterT] = {}
        self._quotas: dict[str, LimiterT | GroupT] = {}
        for family, rates in config.limits.items():
            dimensions: dict[str, Any] = dict(rates)
            limiter = self._new_limiter(
                redis_client,
                config.scope_name(family),
                slot=config.name,
                lease_s=config.lease_s,
                pricing=config.pricing,
                **dimensions,
            )
            self._limiters[family] = limiter
            self._quotas[family] = (
                limiter if self.budget is None else self._new_group(limiter, self.budget)
            )
        # Every family in one slot: their levels come back from one script call.
        self._all = self._new_group(*self._limiters.values())

    def family(self, model: str) -> str:
        """The ``limits`` key governing ``model`` (raises :class:`NoQuotaForModel`)."""
        return self.config.family(model)

    def limiter(self, model: str) -> LimiterT:
        """The rate limiter of ``model``'s family (a model ID or a ``limits`` key)."""
        key = model if model in self._limiters else self.family(model)
        return self._limiters[key]

    def quota(self, model: str) -> LimiterT | GroupT:
        """What admission books for ``model``: its family's limiter, with the budget."""
        key = model if model in self._quotas else self.family(model)
        return self._quotas[key]

    def _grouped(self) -> bool:
        return len(self._limiters) > 1

    def _new_limiter(self, *args: Any, **kwargs: Any) -> LimiterT:
        raise NotImplementedError

    def _new_group(self, *limiters: LimiterT) -> GroupT:
        raise NotImplementedError


# -- the synchronous client ------------------------------------------------------------


class Guard(_Quotas[SyncClient, ResponseCache, Limiter, LimiterGroup]):
    """The quotas a wrapped ``Anthropic`` client books against, shared by its copies.

    One :class:`~ratelimit.Limiter` per ``limits`` entry, named
    ``f"{name}:{family}"``, and with a budget one more, ``f"{name}:budget"``; all
    in one slot, so a family and the budget are checked by one script call.
    """

    def _new_limiter(self, *args: Any, **kwargs: Any) -> Limiter:
        return Limiter(*args, **kwargs)

    def _new_group(self, *limiters: Limiter) -> LimiterGroup:
        return LimiterGroup(*limiters)

    def levels(self) -> dict[str, dict[str, float]]:
        """Each family's bucket levels now, in units, by dimension (one script call)."""
        return _levels(self.config, self._all.state(), self._grouped())

    def _level_reader(self) -> Callable[[], dict[str, dict[str, float]]]:
        """``levels``, read on the first call only (a policy may never ask)."""
        levels: dict[str, dict[str, float]] = {}

        def read() -> dict[str, dict[str, float]]:
            if not levels:
                levels.update(self.levels())
            return levels

        return read

    def close(self) -> None:
        """Close the Redis client if ``wrap`` made it from a URL (else it is the caller's)."""
        if self._owns_redis:
            self.redis.close()


GuardT = TypeVar("GuardT", bound="_Quotas[Any, Any, Any, Any]")


class _Metering(Generic[ClientT, GuardT]):
    """What both wrapped ``messages`` share: the real client, a copy of it without
    retries, the guard; the raw-response variants are the real client's."""

    def __init__(self, client: ClientT, guard: GuardT) -> None:
        cast(Any, super()).__init__(client)  # the SDK's Messages or AsyncMessages
        self._real = client
        self._guard = guard
        # Every retry must pass the limiter, so the SDK's own retries are off here.
        self._inner = cast(Any, client).with_options(max_retries=0)
        self._parts = _Parts(cast("Guard | AsyncGuard", guard), client, self._inner)

    if not TYPE_CHECKING:

        @property
        def with_raw_response(self):
            return self._real.messages.with_raw_response

        @property
        def with_streaming_response(self):
            return self._real.messages.with_streaming_response

    @property
    def guard(self) -> GuardT:
        """The quotas this client books against."""
        return self._guard


class LimitedMessages(_Metering[anthropic.Anthropic, Guard], Messages):
    """``client.messages`` of a wrapped client: ``create``, ``stream`` and ``parse``
    go through the limiter; ``count_tokens``, ``batches`` and the raw-response
    variants are the real client's, unmetered."""

    # Hidden from the type checker, which sees the SDK's own overloads instead: the
    # wrapper takes and returns exactly what the SDK does.
    if not TYPE_CHECKING:

        def create(self, **params):
            return self._create(params)

        def stream(self, **params):
            return _StreamManager(self._parts, params)

        def parse(self, **params):
            return _run(_parse(self._parts, _request(params)))

    def _create(
        self, params: Mapping[str, Any]
    ) -> Message | anthropic.Stream[RawMessageStreamEvent]:
        request = _request(params)
        if request.get("stream") is not True:
            return _run(_create(self._parts, request))
        stream, meter = _run(_open_events(self._parts, request))
        return _metered(_MeteredStream, stream, meter)


class _MeteredStream(anthropic.Stream[RawMessageStreamEvent]):
    """The SDK's event stream, following usage as it goes and settling at the end."""

    _meter: _Meter

    def __stream__(self) -> Iterator[RawMessageStreamEvent]:
        error: BaseException | None = None
        try:
            for event in super().__stream__():
                self._meter.usage.see(event)
                yield event
        except BaseException as exc:
            error = exc
            raise
        finally:
            _run(self._meter.finish(error))

    def close(self) -> None:
        """Close the response and settle what the stream used so far."""
        try:
            super().close()
        finally:
            _run(self._meter.finish(None))


def _not_used() -> anthropic.Stream[RawMessageStreamEvent]:
    raise AssertionError("a limited stream is opened through the limiter")


class _StreamManager(MessageStreamManager[Any]):
    """``messages.stream(...)``: admitted on enter, settled from the snapshot on exit."""

    def __init__(self, parts: _Parts, params: Mapping[str, Any]) -> None:
        # The parent's request is never made: entering is ours (admission, retries),
        # and the stream is the real SDK's.
        super().__init__(_not_used, output_format=anthropic.not_given)
        self._parts = parts
        self._params = params
        self._opened: _Opened | None = None

    def __enter__(self) -> MessageStream[Any]:
        self._opened = _run(_open_stream(self._parts, self._params))
        stream: MessageStream[Any] = self._opened.stream
        return stream

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        opened, self._opened = self._opened, None
        if opened is not None:
            _run(_close_stream(opened, (exc_type, exc, exc_tb)))


MessagesT = TypeVar("MessagesT")


class _Wrapper(Generic[ClientT, GuardT, MessagesT]):
    """What both wrapped clients are: the real client, its guard and metered messages."""

    def __init__(self, client: ClientT, guard: GuardT, messages: MessagesT, *, owner: bool) -> None:
        self._wrapped = client
        self._guard = guard
        self._owner = owner
        self._messages = messages

    @property
    def messages(self) -> MessagesT:
        """The Messages API, metered."""
        return self._messages

    @property
    def guard(self) -> GuardT:
        """The quotas this client books against."""
        return self._guard

    @property
    def wrapped(self) -> ClientT:
        """The real client (unmetered)."""
        return self._wrapped

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_wrapped", "_guard", "_owner", "_messages"):
            raise AttributeError(name)
        return getattr(self._wrapped, name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._guard.config.name!r} over {self._wrapped!r}>"


if TYPE_CHECKING:
    _SyncBase = anthropic.Anthropic
    _AsyncBase = anthropic.AsyncAnthropic
else:
    _SyncBase = object
    _AsyncBase = object


class LimitedAnthropic(_Wrapper[anthropic.Anthropic, Guard, LimitedMessages], _SyncBase):
    """An ``anthropic.Anthropic`` whose Messages calls pass the shared limiter.

    Typed as the SDK client; at run time everything but ``messages``,
    ``with_options``/``copy`` and the context manager is the wrapped client's
    own attribute. ``guard`` holds the quotas (limiters, budget, ledger).
    """

    def __init__(self, client: anthropic.Anthropic, guard: Guard, *, owner: bool = True) -> None:
        super().__init__(client, guard, LimitedMessages(client, guard), owner=owner)

    def with_options(self, **options: Any) -> LimitedAnthropic:
        """The real client's ``with_options(...)``, wrapped under the same limits."""
        return LimitedAnthropic(self._wrapped.with_options(**options), self._guard, owner=False)

    copy = with_options

    def close(self) -> None:
        """Close the real client, and the Redis client ``wrap`` made from a URL.

        A copy from ``with_options`` closes its real client only: the Redis
        client is the original's.
        """
        try:
            self._wrapped.close()
        finally:
            if self._owner:
                self._guard.close()

    def __enter__(self) -> LimitedAnthropic:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()


# -- the asyncio client ---------------------------------------------------------------


class AsyncGuard(
    _Quotas[rl_asyncio.AsyncClient, AsyncResponseCache, rl_asyncio.Limiter, rl_asyncio.LimiterGroup]
):
    """The asyncio twin of :class:`Guard`, on :mod:`ratelimit.asyncio` limiters."""

    def _new_limiter(self, *args: Any, **kwargs: Any) -> rl_asyncio.Limiter:
        return rl_asyncio.Limiter(*args, **kwargs)

    def _new_group(self, *limiters: rl_asyncio.Limiter) -> rl_asyncio.LimiterGroup:
        return rl_asyncio.LimiterGroup(*limiters)

    async def levels(self) -> dict[str, dict[str, float]]:
        """Each family's bucket levels now, in units, by dimension (one script call)."""
        return _levels(self.config, await self._all.state(), self._grouped())

    async def _level_reader(self) -> Callable[[], dict[str, dict[str, float]]]:
        """``levels``, read now: a policy's ``can_admit`` is synchronous."""
        levels = await self.levels()
        return lambda: levels

    async def close(self) -> None:
        """Close the Redis client if ``wrap`` made it from a URL (else it is the caller's)."""
        if self._owns_redis:
            await self.redis.aclose()


class AsyncLimitedMessages(_Metering[anthropic.AsyncAnthropic, AsyncGuard], AsyncMessages):
    """The asyncio twin of :class:`LimitedMessages`."""

    # Hidden from the type checker, which sees the SDK's own overloads instead.
    if not TYPE_CHECKING:

        async def create(self, **params):
            return await self._create(params)

        def stream(self, **params):
            return _AsyncStreamManager(self._parts, params)

        async def parse(self, **params):
            return await _arun(_parse(self._parts, _request(params)))

    async def _create(
        self, params: Mapping[str, Any]
    ) -> Message | anthropic.AsyncStream[RawMessageStreamEvent]:
        request = _request(params)
        if request.get("stream") is not True:
            return await _arun(_create(self._parts, request))
        stream, meter = await _arun(_open_events(self._parts, request))
        return _metered(_AsyncMeteredStream, stream, meter)


class _AsyncMeteredStream(anthropic.AsyncStream[RawMessageStreamEvent]):
    """The asyncio twin of :class:`_MeteredStream`."""

    _meter: _Meter

    async def __stream__(self) -> AsyncIterator[RawMessageStreamEvent]:
        error: BaseException | None = None
        try:
            async for event in super().__stream__():
                self._meter.usage.see(event)
                yield event
        except BaseException as exc:
            error = exc
            raise
        finally:
            await _arun(self._meter.finish(error))

    async def close(self) -> None:
        """Close the response and settle what the stream used so far."""
        try:
            await super().close()
        finally:
            await _arun(self._meter.finish(None))


class _NotAwaited(Awaitable["anthropic.AsyncStream[RawMessageStreamEvent]"]):
    """Stands in for the request an AsyncMessageStreamManager would await (not a
    coroutine, so that nothing is left un-awaited)."""

    def __await__(self) -> Generator[Any, None, anthropic.AsyncStream[RawMessageStreamEvent]]:
        raise AssertionError("a limited stream is opened through the limiter")


class _AsyncStreamManager(AsyncMessageStreamManager[Any]):
    """The asyncio twin of :class:`_StreamManager`."""

    def __init__(self, parts: _Parts, params: Mapping[str, Any]) -> None:
        # The parent's request is never awaited: entering is ours (admission, retries),
        # and the stream is the real SDK's.
        super().__init__(_NotAwaited(), output_format=anthropic.not_given)
        self._parts = parts
        self._params = params
        self._opened: _Opened | None = None

    async def __aenter__(self) -> AsyncMessageStream[Any]:
        self._opened = await _arun(_open_stream(self._parts, self._params))
        stream: AsyncMessageStream[Any] = self._opened.stream
        return stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        opened, self._opened = self._opened, None
        if opened is not None:
            await _arun(_close_stream(opened, (exc_type, exc, exc_tb)))


class AsyncLimitedAnthropic(
    _Wrapper[anthropic.AsyncAnthropic, AsyncGuard, AsyncLimitedMessages], _AsyncBase
):
    """The asyncio twin of :class:`LimitedAnthropic`, typed as ``anthropic.AsyncAnthropic``."""

    def __init__(
        self, client: anthropic.AsyncAnthropic, guard: AsyncGuard, *, owner: bool = True
    ) -> None:
        super().__init__(client, guard, AsyncLimitedMessages(client, guard), owner=owner)

    def with_options(self, **options: Any) -> AsyncLimitedAnthropic:
        """The real client's ``with_options(...)``, wrapped under the same limits."""
        return AsyncLimitedAnthropic(
            self._wrapped.with_options(**options), self._guard, owner=False
        )

    copy = with_options

    async def close(self) -> None:
        """Close the real client, and the Redis client ``wrap`` made from a URL.

        A copy from ``with_options`` closes its real client only: the Redis
        client is the original's.
        """
        try:
            await self._wrapped.close()
        finally:
            if self._owner:
                await self._guard.close()

    async def __aenter__(self) -> AsyncLimitedAnthropic:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()


# -- wrap ------------------------------------------------------------------------------


@overload
def wrap(
    client: anthropic.AsyncAnthropic,
    redis: rl_asyncio.AsyncClient | str,
    *,
    limits: Limits,
    budget: Budget | None = None,
    name: str = "anthropic",
    pricing: Pricing | None = None,
    cache: AsyncResponseCache | None = None,
    policy: ModelPolicy | None = None,
    estimate: Estimate = "local",
    max_attempts: int = 5,
    lease_s: float = DEFAULT_LEASE_S,
    acquire_timeout: float | None = None,
    on_alert: Callable[[Alert], object] | None = None,
) -> AsyncLimitedAnthropic: ...


@overload
def wrap(
    client: anthropic.Anthropic,
    redis: SyncClient | str,
    *,
    limits: Limits,
    budget: Budget | None = None,
    name: str = "anthropic",
    pricing: Pricing | None = None,
    cache: ResponseCache | None = None,
    policy: ModelPolicy | None = None,
    estimate: Estimate = "local",
    max_attempts: int = 5,
    lease_s: float = DEFAULT_LEASE_S,
    acquire_timeout: float | None = None,
    on_alert: Callable[[Alert], object] | None = None,
) -> LimitedAnthropic: ...


def wrap(
    client: anthropic.Anthropic | anthropic.AsyncAnthropic,
    redis: Any,
    *,
    limits: Limits,
    budget: Budget | None = None,
    name: str = "anthropic",
    pricing: Pricing | None = None,
    cache: ResponseCache | AsyncResponseCache | None = None,
    policy: ModelPolicy | None = None,
    estimate: Estimate = "local",
    max_attempts: int = 5,
    lease_s: float = DEFAULT_LEASE_S,
    acquire_timeout: float | None = None,
    on_alert: Callable[[Alert], object] | None = None,
) -> LimitedAnthropic | AsyncLimitedAnthropic:
    """``client`` with its Messages calls limited by shared quotas in Redis.

    ``client``: an ``anthropic.Anthropic`` (then ``redis`` is a ``redis.Redis``,
    a ``RedisCluster`` or a URL) or an ``anthropic.AsyncAnthropic`` (then a
    ``redis.asyncio`` client or a URL).

    ``limits`` maps a model ID or a family prefix (``"claude-sonnet-4"`` covers
    ``"claude-sonnet-4-6"``) to its rates, ``{"requests": Rate(...),
    "input_tokens": Rate(...), "output_tokens": Rate(...)}`` (any subset). The
    longest matching prefix wins, ``"*"`` catches every other model, and a
    model that matches nothing raises :class:`NoQuotaForModel`. Models of one
    entry share one quota, the limiter ``f"{name}:{key}"``. Give each the
    provider's rate with a burst a little under the provider's (say 50 ms of
    refill less): a request reaches the provider a moment after it is admitted
    here, and a provider bucket that is full in that moment cannot bank its
    refill, while this one does.

    ``budget``: a :class:`~ratelimit.Budget` (the limiter ``f"{name}:budget"``)
    charged each call's priced cost, from ``pricing`` (default: the packaged
    table). ``cache``: a :class:`~ratelimit.cache.ResponseCache` (async:
    ``AsyncResponseCache``) answering repeated deterministic requests.
    ``policy``: a :class:`~ratelimit.routing.ModelPolicy` choosing the model.
    ``estimate``: ``"local"`` (:func:`estimate_input_tokens`) or
    ``"count_tokens"`` (exact, one more API call). ``max_attempts``: attempts
    per call, each through the limiter. ``lease_s``: seconds a call may run
    before its reservation is reclaimed. ``acquire_timeout``: seconds a call
    may wait for its quota (None: as long as it takes) before
    :class:`~ratelimit.errors.AcquireTimeout`. ``on_alert``: called with each
    budget :class:`~ratelimit.Alert`.
    """
    config = _Config.build(
        name=name,
        limits=limits,
        budget=budget,
        pricing=pricing,
        estimate=estimate,
        max_attempts=max_attempts,
        lease_s=lease_s,
        acquire_timeout=acquire_timeout,
    )
    if policy is not None and not isinstance(policy, ModelPolicy):
        raise InvalidArgumentType(f"policy must be a ModelPolicy, not {type(policy).__name__}")
    if isinstance(client, anthropic.AsyncAnthropic):
        if cache is not None and not isinstance(cache, AsyncResponseCache):
            raise InvalidArgumentType("an AsyncAnthropic client needs an AsyncResponseCache")
        guard = AsyncGuard(
            config,
            _async_redis(redis),
            cache=cache,
            policy=policy,
            on_alert=on_alert,
            owns_redis=isinstance(redis, str),
        )
        return AsyncLimitedAnthropic(client, guard)
    if isinstance(client, anthropic.Anthropic):
        if cache is not None and not isinstance(cache, ResponseCache):
            raise InvalidArgumentType("an Anthropic client needs a ResponseCache")
        sync_guard = Guard(
            config,
            _sync_redis(redis),
            cache=cache,
            policy=policy,
            on_alert=on_alert,
            owns_redis=isinstance(redis, str),
        )
        return LimitedAnthropic(client, sync_guard)
    raise InvalidArgumentType(
        f"client must be an anthropic.Anthropic or AsyncAnthropic, not {type(client).__name__}"
    )


def _sync_redis(value: object) -> SyncClient:
    if isinstance(value, str):
        return connect(value)
    if isinstance(value, redis.Redis | redis.cluster.RedisCluster):
        return value
    raise InvalidArgumentType(
        "an Anthropic client needs a redis.Redis, a RedisCluster or a URL, "
        f"not {type(value).__name__}"
    )


def _async_redis(value: object) -> rl_asyncio.AsyncClient:
    if isinstance(value, str):
        return rl_asyncio.connect(value)
    if isinstance(value, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster):
        return value
    raise InvalidArgumentType(
        "an AsyncAnthropic client needs a redis.asyncio client or a URL, "
        f"not {type(value).__name__}"
    )
