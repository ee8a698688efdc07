"""A local HTTP server that answers like Anthropic's Messages API, for tests and benchmarks.

The real ``anthropic`` SDK talks to it unchanged (``Anthropic(base_url=server.base_url,
api_key="test")``), so a test exercises the SDK's own parsing of responses, headers and
errors, and a benchmark can measure how much of a provider's limit a client really uses,
without a network or an account::

    with FakeAnthropic(rpm=120, itpm=20_000, otpm=4_000) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key="test", max_retries=0)
        message = client.messages.create(model="claude-x", max_tokens=64, messages=[...])
        assert server.stats().accepted == 1

What it mimics of the real service (docs.claude.com/en/api/rate-limits and /en/api/errors):

* Three token buckets per server, requests (RPM), input tokens (ITPM) and output tokens
  (OTPM). Each holds at most its capacity (by default the per-minute limit) and refills
  continuously at ``limit / minute`` rather than resetting at a fixed instant.
* ITPM counts ``input_tokens + cache_creation_input_tokens``; cache reads are free, as
  for current models (``cache_reads_count=True`` charges them too, like older models).
  OTPM counts the output tokens actually generated, charged when the response is done.
* An admitted request costs all its buckets at once, under one lock; a refused one costs
  nothing and gets a 429 ``rate_limit_error`` with a ``retry-after`` in whole seconds.
* Every response carries ``request-id`` and the ``anthropic-ratelimit-{requests,
  input-tokens,output-tokens,tokens}-{limit,remaining,reset}`` headers (reset is the
  RFC 3339 instant the bucket would be full again; ``tokens`` sums input and output).
* A reached spend limit answers 429 ``rate_limit_error`` with ``error.details.error_code
  == "enforced_spend_limit_reached"`` and no ``retry-after`` (the tier's monthly cap), or
  400 ``invalid_request_error`` "You have reached your specified API usage limits" (a
  limit the organisation set itself).

Token counts are not the real tokenizer's; they are deterministic so a test can predict
them exactly with :func:`count_input_tokens` and :func:`default_output_tokens`.

Benchmarks import this module with ``sys.path.insert(0, "<repo>/tests")``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self, cast
from urllib.parse import urlsplit

__all__ = [
    "Accepted",
    "FakeAnthropic",
    "ManualClock",
    "PromptPart",
    "Stats",
    "count_input_tokens",
    "default_output_tokens",
    "prompt_parts",
]

#: Characters per token of the fake tokenizer (the usual rule of thumb for English).
CHARS_PER_TOKEN = 4

#: Shortest prefix, in tokens, that the fake caches: the documented minimum of the
#: Sonnet and Opus models. Pass ``min_cacheable_tokens`` to change it.
MIN_CACHEABLE_TOKENS = 1024

#: Lifetimes of cache entries, in seconds of the server clock, by ``cache_control.ttl``.
CACHE_TTL_S: Mapping[str, float] = {"5m": 300.0, "1h": 3600.0}

_RATE_LIMITS_DOC = "https://docs.claude.com/en/api/rate-limits"

#: Text the fake model "generates", cut to length: CHARS_PER_TOKEN characters a token.
_LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. "
)

#: Output tokens per ``text_delta`` event of a stream.
_TOKENS_PER_DELTA = 8

Bucket = Literal["requests", "input_tokens", "output_tokens"]
SpendLimitKind = Literal["enforced", "specified"]


# --------------------------------------------------------------------------- counting


@dataclass(frozen=True)
class PromptPart:
    """One cacheable unit of a prompt, in the order the API caches them.

    ``text`` is the part's canonical JSON without its ``cache_control``, so a marker
    never changes a count; ``ttl`` is the marker's TTL (``"5m"`` or ``"1h"``), or None
    when the part carries no ``cache_control``.
    """

    text: str
    ttl: str | None

    @property
    def tokens(self) -> int:
        """``ceil(len(text) / 4)``: the fake tokenizer."""
        return math.ceil(len(self.text) / CHARS_PER_TOKEN)


def _canonical(value: object) -> str:
    # Sorted keys and no spaces: two requests that mean the same prompt count the same,
    # whatever order the client serialised its dicts in.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _part(block: Mapping[str, Any], **extra: object) -> PromptPart:
    marker = block.get("cache_control")
    ttl: str | None = None
    if isinstance(marker, Mapping):
        ttl = str(marker.get("ttl", "5m"))
    stripped = {k: v for k, v in block.items() if k != "cache_control"}
    return PromptPart(_canonical({**extra, **stripped}), ttl)


def _blocks(content: object) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, Sequence):
        return [b if isinstance(b, Mapping) else {"value": b} for b in content]
    return []


def prompt_parts(request: Mapping[str, Any]) -> list[PromptPart]:
    """The parts of a Messages request's prompt: tools, then system, then messages.

    Each tool definition is a part; so is each system block (a string ``system`` is one
    text block) and each content block of each message (a string ``content`` is one text
    block), the message's ``role`` folded into its blocks so that a role change is a
    different prompt. Any other key of the request (``model``, ``max_tokens``...) is not
    part of the prompt.
    """
    parts: list[PromptPart] = []
    tools = request.get("tools")
    if isinstance(tools, Sequence):
        parts.extend(_part(t) for t in tools if isinstance(t, Mapping))
    parts.extend(_part(b) for b in _blocks(request.get("system")))
    messages = request.get("messages")
    if isinstance(messages, Sequence):
        for message in messages:
            if isinstance(message, Mapping):
                role = message.get("role")
                parts.extend(_part(b, role=role) for b in _blocks(message.get("content")))
    return parts


def count_input_tokens(request: Mapping[str, Any]) -> int:
    """The server's count of a request's input tokens, cached or not.

    The sum over :func:`prompt_parts` of ``ceil(len(part JSON) / 4)``, at least 1. This
    is also what ``POST /v1/messages/count_tokens`` answers, and, on a request that reads
    or writes no cache, the ``usage.input_tokens`` of its response.
    """
    return max(1, sum(p.tokens for p in prompt_parts(request)))


def default_output_tokens(request: Mapping[str, Any]) -> int:
    """How many tokens the fake model wants to write for ``request``: 8 to 64.

    A hash of the prompt, so the same prompt always gets the same answer length. The
    response reports ``min(this, max_tokens)`` output tokens.
    """
    digest = hashlib.sha256("\x1e".join(p.text for p in prompt_parts(request)).encode())
    return 8 + int.from_bytes(digest.digest()[:4], "big") % 57


def _generated_text(tokens: int) -> str:
    length = tokens * CHARS_PER_TOKEN
    return (_LOREM * (length // len(_LOREM) + 1))[:length]


# --------------------------------------------------------------------------- clock & buckets


class ManualClock:
    """A clock that moves only when told to: bucket refills become exact in tests.

    Pass it as ``FakeAnthropic(clock=...)``; ``advance`` moves it forward.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward (never back: a token bucket assumes it)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds


@dataclass
class _TokenBucket:
    """A continuously refilling bucket; ``level`` may go negative (a debt).

    A debt happens when output turns out larger than what was left: the request was
    already admitted, so the next ones wait until the refill has paid it back.
    """

    name: Bucket
    limit: int  # per minute, what the -limit header reports
    capacity: float
    rate: float  # tokens per second of the server clock
    level: float
    updated: float

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def holds(self, amount: float) -> bool:
        # A hair of tolerance: a clock advanced by exactly the refill time of a token must
        # admit, even when float arithmetic lands a few ulps short of it.
        return self.level >= amount - 1e-9 * max(1.0, self.capacity)

    def wait_for(self, amount: float) -> float:
        """Seconds until the bucket holds ``amount`` (the time to full if it never can)."""
        target = min(amount, self.capacity)
        return max(0.0, (target - self.level) / self.rate)

    def remaining(self) -> int:
        return max(0, math.floor(self.level))

    def reset_epoch(self, now_epoch: float) -> float:
        """Wall-clock instant the bucket will be full again, if nothing more is spent."""
        return now_epoch + max(0.0, (self.capacity - self.level) / self.rate)


def _rfc3339(epoch: float) -> str:
    # Rounded up to the second, as the real headers are, so "reset" is never too early.
    return datetime.fromtimestamp(math.ceil(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Accepted:
    """One admitted ``POST /v1/messages``, as the server booked it.

    ``at`` is the server clock at admission (by default ``time.monotonic()``, comparable
    with the same clock read in the same process); ``itpm_tokens`` is what the ITPM bucket
    was charged (``input_tokens + cache_creation_input_tokens``, plus the cache reads when
    ``cache_reads_count``); ``output_tokens`` is what the OTPM bucket is charged when the
    response is done.
    """

    at: float
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    itpm_tokens: int
    stream: bool


@dataclass(frozen=True)
class Stats:
    """Counters since the server started (or since :meth:`FakeAnthropic.reset_stats`).

    ``requests`` counts every ``POST /v1/messages``; it is the sum of ``accepted``,
    ``rate_limited`` (429 from a bucket), ``spend_limited`` (429 or 400 from the spend
    limit) and ``invalid`` (other 400s). The token totals are over accepted requests;
    ``output_tokens`` counts only responses already finished.
    """

    requests: int = 0
    accepted: int = 0
    rate_limited: int = 0
    spend_limited: int = 0
    invalid: int = 0
    count_tokens: int = 0
    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    itpm_tokens: int = 0
    output_tokens: int = 0


@dataclass
class _Counters:
    """The counters (a :class:`Stats`, replaced at each count) and the log.

    Guarded by the server's lock.
    """

    stats: Stats = field(default_factory=Stats)
    log: list[Accepted] = field(default_factory=list)

    def count(self, **added: int) -> None:
        """Add to the named counters."""
        self.stats = replace(
            self.stats, **{name: getattr(self.stats, name) + n for name, n in added.items()}
        )


@dataclass(frozen=True)
class _Reply:
    """A complete answer: status, JSON body, headers and the ``request-id``."""

    status: int
    body: Mapping[str, Any]
    headers: list[tuple[str, str]]
    request_id: str


@dataclass(frozen=True)
class _Ticket:
    """An admitted request, still to be generated and then settled."""

    request_id: str
    model: str
    usage: Mapping[str, Any]
    output_tokens: int
    stop_reason: str
    reserved_output: int  # what admission took from OTPM in advance (reserve mode)
    stream: bool
    headers: list[tuple[str, str]]  # rate-limit headers at admission


class _BadRequest(Exception):
    pass


# --------------------------------------------------------------------------- the server


class FakeAnthropic:
    """A threaded Messages API on 127.0.0.1, limited by RPM, ITPM and OTPM token buckets.

    ``rpm``, ``itpm``, ``otpm``: the per-minute limits (None: that bucket is unlimited
    and its headers are left out, as is the combined ``tokens`` family unless both token
    buckets exist). ``*_capacity``: the bucket sizes, i.e. the burst (default: the limit
    itself). ``minute_s``: how many seconds of ``clock`` the server's minute lasts;
    ``minute_s=1`` makes every limit per second, so tests and benchmarks run sixty times
    faster with the same numbers in the headers. ``clock``: the server's time source; a
    :class:`ManualClock` makes every refill, header and ``retry-after`` exact.

    ``output_tokens``: how many tokens the model wants to write, as a number or as a
    function of the request body (default :func:`default_output_tokens`); a response
    reports ``min(that, max_tokens)``, at least 1, and ``stop_reason="max_tokens"`` when
    it was cut. ``reserve_max_tokens``: admit a request only if OTPM could pay its
    ``max_tokens`` (at most a full bucket), take that much at admission and give back the
    unused part at the end, the estimate-then-adjust the rate-limit page describes; by
    default OTPM needs just one token left to admit and is charged the actual output at
    the end, so it may go into debt that later requests wait out.

    ``latency_s`` (time to the first token) and ``latency_per_output_token_s`` make the
    answers take real time, so that concurrent requests overlap as they do for real.

    ``spend_limit_reached`` (settable at any time) makes every request fail as when a
    spend limit is reached: ``spend_limit_kind="enforced"`` (the tier's monthly cap, 429
    with ``enforced_spend_limit_reached``) or ``"specified"`` (a limit the organisation
    set, 400 ``invalid_request_error``).

    Caching: a block with ``cache_control`` marks a breakpoint; the prefix up to the last
    breakpoint is written to the cache (``cache_creation_input_tokens``) when at least
    ``min_cacheable_tokens`` long, and a later request with the same model and the same
    prefix up to one of its breakpoints reads it (``cache_read_input_tokens``). Entries
    live 5 minutes (or 1 hour with ``"ttl": "1h"``) of the server clock, renewed on use.
    """

    def __init__(
        self,
        *,
        rpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        rpm_capacity: float | None = None,
        itpm_capacity: float | None = None,
        otpm_capacity: float | None = None,
        minute_s: float = 60.0,
        output_tokens: int | Callable[[Mapping[str, Any]], int] | None = None,
        reserve_max_tokens: bool = False,
        cache_reads_count: bool = False,
        min_cacheable_tokens: int = MIN_CACHEABLE_TOKENS,
        latency_s: float = 0.0,
        latency_per_output_token_s: float = 0.0,
        spend_limit_reached: bool = False,
        spend_limit_kind: SpendLimitKind = "enforced",
        clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if minute_s <= 0:
            raise ValueError("minute_s must be positive")
        self.clock = clock
        self.minute_s = minute_s
        self.reserve_max_tokens = reserve_max_tokens
        self.cache_reads_count = cache_reads_count
        self.min_cacheable_tokens = min_cacheable_tokens
        self.latency_s = latency_s
        self.latency_per_output_token_s = latency_per_output_token_s
        #: Set to True (or False) at any time to start (or stop) refusing every request.
        self.spend_limit_reached = spend_limit_reached
        self.spend_limit_kind: SpendLimitKind = spend_limit_kind
        self._output_tokens = output_tokens
        self._lock = threading.Lock()
        now = clock()
        self._buckets: dict[Bucket, _TokenBucket] = {}
        for name, limit, capacity in (
            ("requests", rpm, rpm_capacity),
            ("input_tokens", itpm, itpm_capacity),
            ("output_tokens", otpm, otpm_capacity),
        ):
            if limit is None:
                continue
            if limit <= 0 or (capacity is not None and capacity <= 0):
                raise ValueError(f"the {name} limit and capacity must be positive")
            size = float(limit if capacity is None else capacity)
            self._buckets[cast(Bucket, name)] = _TokenBucket(
                cast(Bucket, name), limit, size, limit / minute_s, size, now
            )
        self._cache: dict[str, float] = {}  # prefix key -> expiry on the server clock
        self._counters = _Counters()
        self._ids = itertools.count(1)
        self._httpd = _Server((host, port), _Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        """The URL to give ``anthropic.Anthropic(base_url=...)``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        """Serve in a background thread (``with`` does it for you)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fake-anthropic",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and free the port. Idempotent."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- observation

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        with self._lock:
            return self._counters.stats

    def accepted(self) -> list[Accepted]:
        """Every admitted request so far, in admission order."""
        with self._lock:
            return list(self._counters.log)

    def levels(self) -> dict[Bucket, float]:
        """What each limited bucket holds now (negative: a debt being repaid)."""
        with self._lock:
            now = self.clock()
            for bucket in self._buckets.values():
                bucket.refill(now)
            return {name: b.level for name, b in self._buckets.items()}

    def reset_stats(self) -> None:
        """Zero the counters and the log (the buckets and the cache are kept)."""
        with self._lock:
            self._counters = _Counters()

    def clear_cache(self) -> None:
        """Forget every prompt-cache entry."""
        with self._lock:
            self._cache.clear()

    # ---------------------------------------------------------------- decisions

    def _request_id(self) -> str:
        return f"req_fake{next(self._ids):06d}{uuid.uuid4().hex[:12]}"

    def _ratelimit_headers(self) -> list[tuple[str, str]]:
        """The ``anthropic-ratelimit-*`` headers for the buckets' current state."""
        headers: list[tuple[str, str]] = []
        epoch = time.time()
        for name, bucket in self._buckets.items():
            prefix = f"anthropic-ratelimit-{name.replace('_', '-')}"
            headers += [
                (f"{prefix}-limit", str(bucket.limit)),
                (f"{prefix}-remaining", str(bucket.remaining())),
                (f"{prefix}-reset", _rfc3339(bucket.reset_epoch(epoch))),
            ]
        inp, out = self._buckets.get("input_tokens"), self._buckets.get("output_tokens")
        if inp is not None and out is not None:
            # The combined family adds input and output up, as the real headers do; it is
            # full again only when both are.
            reset = max(inp.reset_epoch(epoch), out.reset_epoch(epoch))
            headers += [
                ("anthropic-ratelimit-tokens-limit", str(inp.limit + out.limit)),
                ("anthropic-ratelimit-tokens-remaining", str(inp.remaining() + out.remaining())),
                ("anthropic-ratelimit-tokens-reset", _rfc3339(reset)),
            ]
        return headers

    def _error(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        request_id: str,
        headers: list[tuple[str, str]] | None = None,
        error_code: str | None = None,
    ) -> _Reply:
        error: dict[str, Any] = {"type": kind, "message": message}
        if error_code is not None:
            error["details"] = {"error_code": error_code}
        body = {"type": "error", "error": error, "request_id": request_id}
        return _Reply(status, body, headers or [], request_id)

    def _planned_output(self, request: Mapping[str, Any], max_tokens: int) -> tuple[int, str]:
        wanted: int
        if self._output_tokens is None:
            wanted = default_output_tokens(request)
        elif isinstance(self._output_tokens, int):
            wanted = self._output_tokens
        else:
            wanted = int(self._output_tokens(request))
        wanted = max(1, wanted)
        if wanted > max_tokens:
            return max_tokens, "max_tokens"
        return wanted, "end_turn"

    def _cache_plan(
        self, model: str, parts: list[PromptPart], now: float
    ) -> tuple[int, int, str | None, list[tuple[str, int]]]:
        """(read, created, ttl of the write, breakpoints as (key, prefix tokens))."""
        digest = hashlib.sha256(model.encode())
        prefix = 0
        breakpoints: list[tuple[str, int]] = []
        ttl: str | None = None
        for part in parts:
            digest.update(b"\x1e" + part.text.encode())
            prefix += part.tokens
            if part.ttl is not None:
                breakpoints.append((digest.copy().hexdigest(), prefix))
                ttl = part.ttl
        if not breakpoints or breakpoints[-1][1] < self.min_cacheable_tokens:
            return 0, 0, None, []
        read = 0
        for key, tokens in reversed(breakpoints):
            if self._cache.get(key, now) > now:
                read = tokens
                break
        created = breakpoints[-1][1] - read
        return read, created, ttl, breakpoints

    def _admit(self, request: Mapping[str, Any]) -> _Reply | _Ticket:
        """Decide on a Messages request, atomically; book it if admitted."""
        with self._lock:
            now = self.clock()
            for bucket in self._buckets.values():
                bucket.refill(now)
            self._counters.count(requests=1)
            request_id = self._request_id()
            try:
                model, max_tokens = _validate(request)
            except _BadRequest as exc:
                self._counters.count(invalid=1)
                return self._error(
                    400,
                    "invalid_request_error",
                    str(exc),
                    request_id=request_id,
                    headers=self._ratelimit_headers(),
                )

            if self.spend_limit_reached:
                self._counters.count(spend_limited=1)
                return self._spend_limit_reply(request_id)

            parts = prompt_parts(request)
            total = max(1, sum(p.tokens for p in parts))
            read, created, ttl, breakpoints = self._cache_plan(model, parts, now)
            uncached = total - read - created
            itpm_cost = uncached + created + (read if self.cache_reads_count else 0)
            output, stop_reason = self._planned_output(request, max_tokens)
            # Reserve mode asks OTPM for max_tokens up front (at most a full bucket, so a
            # large max_tokens is slow rather than impossible); otherwise OTPM only needs
            # not to be empty, since the real charge comes after generation.
            otpm = self._buckets.get("output_tokens")
            otpm_need = 1.0
            if self.reserve_max_tokens and otpm is not None:
                otpm_need = min(float(max_tokens), otpm.capacity)
            needs: dict[Bucket, float] = {
                "requests": 1.0,
                "input_tokens": float(itpm_cost),
                "output_tokens": otpm_need,
            }
            # A prompt larger than the ITPM bucket can never pass: refused like any other,
            # with the time to a full bucket as its retry-after.
            waits = {
                name: bucket.wait_for(needs[name])
                for name, bucket in self._buckets.items()
                if not bucket.holds(needs[name]) or needs[name] > bucket.capacity
            }
            if waits:
                self._counters.count(rate_limited=1)
                return self._rate_limit_reply(request_id, waits)

            # Admitted: pay requests and input now, and output in advance if reserving.
            reserved = 0
            for name, bucket in self._buckets.items():
                if name != "output_tokens":
                    bucket.level -= needs[name]
                elif self.reserve_max_tokens:
                    reserved = max_tokens
                    bucket.level -= reserved
            if ttl is not None:
                lifetime = CACHE_TTL_S.get(ttl, CACHE_TTL_S["5m"])
                # Written or read, every breakpoint's prefix now lives a full TTL again.
                for key, _ in breakpoints:
                    self._cache[key] = now + lifetime

            self._counters.count(
                accepted=1,
                input_tokens=uncached,
                cache_creation_input_tokens=created,
                cache_read_input_tokens=read,
                itpm_tokens=itpm_cost,
            )
            stream = request.get("stream") is True
            self._counters.log.append(
                Accepted(now, uncached, output, created, read, itpm_cost, stream)
            )
            usage = {
                "input_tokens": uncached,
                "cache_creation_input_tokens": created,
                "cache_read_input_tokens": read,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": created if ttl != "1h" else 0,
                    "ephemeral_1h_input_tokens": created if ttl == "1h" else 0,
                },
                "output_tokens": output,
                "service_tier": "standard",
            }
            return _Ticket(
                request_id,
                model,
                usage,
                output,
                stop_reason,
                reserved,
                stream,
                self._ratelimit_headers(),
            )

    def _settle(self, ticket: _Ticket) -> list[tuple[str, str]]:
        """Charge a finished response's output; the rate-limit headers after it."""
        with self._lock:
            now = self.clock()
            for bucket in self._buckets.values():
                bucket.refill(now)
            otpm = self._buckets.get("output_tokens")
            if otpm is not None:
                otpm.level = min(
                    otpm.capacity, otpm.level + ticket.reserved_output - ticket.output_tokens
                )
            self._counters.count(output_tokens=ticket.output_tokens)
            return self._ratelimit_headers()

    def _rate_limit_reply(self, request_id: str, waits: Mapping[Bucket, float]) -> _Reply:
        units = {
            "requests": "requests",
            "input_tokens": "input tokens",
            "output_tokens": "output tokens",
        }
        first = next(iter(waits))
        bucket = self._buckets[first]
        advice = {
            "requests": "Please try again later.",
            "input_tokens": "Please reduce the prompt length or try again later.",
            "output_tokens": "Please reduce the maximum tokens requested or try again later.",
        }
        message = (
            f"This request would exceed your organization's rate limit of {bucket.limit} "
            f"{units[first]} per minute. For details, refer to: {_RATE_LIMITS_DOC}. "
            f"You can see the response headers for current usage. {advice[first]}"
        )
        # Whole seconds, rounded up, and never 0: a client that obeys it must succeed.
        retry_after = max(1, math.ceil(max(waits.values()) - 1e-9))
        headers = [("retry-after", str(retry_after)), *self._ratelimit_headers()]
        return self._error(429, "rate_limit_error", message, request_id=request_id, headers=headers)

    def _spend_limit_reply(self, request_id: str) -> _Reply:
        today = datetime.now(UTC)
        year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
        resume = f"{year:04d}-{month:02d}-01 at 00:00 UTC"
        headers = self._ratelimit_headers()
        if self.spend_limit_kind == "specified":
            message = (
                f"You have reached your specified API usage limits. "
                f"You will regain access on {resume}."
            )
            return self._error(
                400, "invalid_request_error", message, request_id=request_id, headers=headers
            )
        # The tier's cap: a 429 that no retry can cure, hence no retry-after.
        message = (
            "Your organization has reached the monthly API usage limit of its usage tier. "
            f"API access resumes on {resume}."
        )
        return self._error(
            429,
            "rate_limit_error",
            message,
            request_id=request_id,
            headers=headers,
            error_code="enforced_spend_limit_reached",
        )

    def _count_tokens(self, request: Mapping[str, Any]) -> _Reply:
        with self._lock:
            self._counters.count(count_tokens=1)
            request_id = self._request_id()
        if not isinstance(request.get("model"), str) or not isinstance(
            request.get("messages"), list
        ):
            message = "model and messages are required"
            return self._error(400, "invalid_request_error", message, request_id=request_id)
        return _Reply(200, {"input_tokens": count_input_tokens(request)}, [], request_id)

    def _message_body(self, ticket: _Ticket, text: str) -> dict[str, Any]:
        return {
            "id": f"msg_fake{uuid.uuid4().hex[:20]}",
            "type": "message",
            "role": "assistant",
            "model": ticket.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": ticket.stop_reason,
            "stop_sequence": None,
            "usage": dict(ticket.usage),
        }

    def _events(self, ticket: _Ticket, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The SSE events of a streamed answer, in the real order."""
        start = self._message_body(ticket, "")
        start["content"] = []
        start["stop_reason"] = None
        # The real message_start reports the input side and a token or so of output; the
        # final count comes with message_delta.
        start["usage"] = {**ticket.usage, "output_tokens": 1}
        yield "message_start", {"type": "message_start", "message": start}
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        yield "ping", {"type": "ping"}
        step = _TOKENS_PER_DELTA * CHARS_PER_TOKEN
        for i in range(0, len(text), step):
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text[i : i + step]},
                },
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        # message_delta repeats the cumulative counts, without the breakdowns.
        usage = {
            k: v for k, v in ticket.usage.items() if k not in ("service_tier", "cache_creation")
        }
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": ticket.stop_reason, "stop_sequence": None},
                "usage": usage,
            },
        )
        yield "message_stop", {"type": "message_stop"}


def _validate(request: Mapping[str, Any]) -> tuple[str, int]:
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("model: Field required")
    max_tokens = request.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise _BadRequest("max_tokens: Field required")
    if max_tokens < 1:
        raise _BadRequest("max_tokens: Input should be greater than or equal to 1")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages: at least one message is required")
    return model, max_tokens


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    # Handler threads must not keep the process alive, nor make close() wait for clients
    # that hold keep-alive connections open.
    daemon_threads = True
    block_on_close = False
    fake: FakeAnthropic


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps the SDK's connections alive between requests, as the real API does.
    protocol_version = "HTTP/1.1"
    server_version = "fake-anthropic"

    @property
    def fake(self) -> FakeAnthropic:
        return cast(_Server, self.server).fake

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; with Nagle's algorithm against the
        # client's delayed ACK, each answer would stall some 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test run is no place for an access log."""

    def do_GET(self) -> None:
        self._not_found()

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path not in ("/v1/messages", "/v1/messages/count_tokens"):
            self._not_found()
            return
        try:
            request = json.loads(raw or b"null")
        except ValueError:
            request = None
        if not isinstance(request, dict):
            reply = self.fake._error(
                400,
                "invalid_request_error",
                "The request body is not valid JSON.",
                request_id=self.fake._request_id(),
            )
            self._send_json(reply)
            return
        if path == "/v1/messages/count_tokens":
            self._send_json(self.fake._count_tokens(request))
            return
        decision = self.fake._admit(request)
        if isinstance(decision, _Reply):
            self._send_json(decision)
        elif decision.stream:
            self._stream(decision)
        else:
            self._complete(decision)

    def _not_found(self) -> None:
        reply = self.fake._error(
            404,
            "not_found_error",
            f"Not found: {self.command} {self.path}",
            request_id=self.fake._request_id(),
        )
        self._send_json(reply)

    def _send_json(self, reply: _Reply) -> None:
        data = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("request-id", reply.request_id)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _complete(self, ticket: _Ticket) -> None:
        fake = self.fake
        delay = fake.latency_s + fake.latency_per_output_token_s * ticket.output_tokens
        if delay > 0:
            time.sleep(delay)
        text = _generated_text(ticket.output_tokens)
        # Settle before answering: the headers then show the output already charged.
        headers = fake._settle(ticket)
        body = fake._message_body(ticket, text)
        self._send_json(_Reply(200, body, headers, ticket.request_id))

    def _stream(self, ticket: _Ticket) -> None:
        fake = self.fake
        try:
            self.send_response(200)
            self.send_header("request-id", ticket.request_id)
            for name, value in ticket.headers:
                self.send_header(name, value)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            if fake.latency_s > 0:
                time.sleep(fake.latency_s)
            text = _generated_text(ticket.output_tokens)
            for event, data in fake._events(ticket, text):
                if event == "content_block_delta" and fake.latency_per_output_token_s > 0:
                    time.sleep(fake.latency_per_output_token_s * _TOKENS_PER_DELTA)
                self._chunk(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            # The client hung up mid-stream; the tokens were generated all the same.
            self.close_connection = True
        finally:
            fake._settle(ticket)

    def _chunk(self, data: bytes) -> None:
        # One chunk of chunked transfer encoding; an empty one ends the body.
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
