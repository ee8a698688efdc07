"""The call flows: a Messages call from its estimate to its settle, written once.

Each flow is a generator of effects (:mod:`ratelimit.anthropic.effects`),
so the sync and the asyncio client run the same steps:

1. :func:`prepare`: estimate the input and ask the policy for candidate
   models (a :class:`~ratelimit.anthropic.estimate.PendingCall`);
2. :func:`attempts`: admit on the first candidate whose limiter admits in
   time, send, and on a retryable failure give the permit back and go again;
3. :func:`finish`: settle with the real usage and bring the buckets down to
   the provider's figures, in one script call.

:func:`create`, :func:`parse`, :func:`open_events` and :func:`open_stream` /
:func:`close_stream` are the four ways in, with the response cache around
``create``; a stream's settle waits for its end in a :class:`Meter`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anthropic
from anthropic.lib.streaming import AsyncMessageStream, MessageStream
from anthropic.types import Message

from ratelimit import metrics
from ratelimit.anthropic.effects import Call, Enter, Exit, Flow, Sleep
from ratelimit.anthropic.estimate import (
    PendingCall,
    count_request,
    estimate_input_tokens,
    model_and_max_tokens,
    read_request,
)
from ratelimit.anthropic.guard import AsyncGuard, Guard
from ratelimit.anthropic.retry import decide_retry, headers_of, remaining_levels, request_tags
from ratelimit.anthropic.routing import RoutingContext
from ratelimit.anthropic.usage import ResponseUsage
from ratelimit.errors import (
    AcquireTimeout,
    BudgetExceeded,
    InvalidArgument,
    InvalidArgumentType,
    LimiterError,
    NoQuotaForModel,
)
from ratelimit.pricing import token_counts

log = logging.getLogger("ratelimit")

PermitT = TypeVar("PermitT")
R = TypeVar("R")


@dataclass
class Booked(Generic[PermitT]):
    """An admitted attempt: the model it goes to, that model's family, and the permit."""

    model: str
    family: str
    permit: PermitT


def _candidates(models: object) -> list[str]:
    """A policy's answer, checked: a non-empty list of model IDs."""
    if isinstance(models, str) or not isinstance(models, list | tuple) or not models:
        raise InvalidArgumentType(f"a ModelPolicy must return a non-empty list of IDs: {models!r}")
    for model in models:
        if not isinstance(model, str) or not model:
            raise InvalidArgumentType(f"a ModelPolicy returned a bad model ID {model!r}")
    return list(models)


def _shorter(wait_s: float, timeout: float | None) -> float:
    """A fallback candidate's wait: the policy's bound, within the call's timeout."""
    return wait_s if timeout is None else min(wait_s, timeout)


def _snapshot(stream: MessageStream[Any] | AsyncMessageStream[Any]) -> Any:
    """A MessageStream's accumulated message, or None before ``message_start``."""
    try:
        return stream.current_message_snapshot
    except AssertionError:  # the SDK asserts there is one
        return None


@dataclass(frozen=True)
class CallParts:
    """What a wrapped ``messages`` works with: its guard, the real client (for
    ``count_tokens``) and a copy of it with the SDK's retries off (for the calls)."""

    guard: Guard | AsyncGuard
    real: Any
    inner: Any


def prepare(parts: CallParts, request: dict[str, Any]) -> Flow[PendingCall]:
    """A call's estimate and candidate models (asking the policy, if any)."""
    model, max_tokens = model_and_max_tokens(request)
    guard = parts.guard
    config = guard.config
    exact = config.estimate == "count_tokens"
    tokens: int | None = None
    if exact:
        try:
            counted = yield Call(parts.real.messages.count_tokens, kwargs=count_request(request))
            tokens = counted.input_tokens
        except anthropic.APIError as exc:
            # The count only sharpens the reservation; the call itself will tell.
            log.warning("count_tokens failed (%s); using the local estimate", exc)
            exact = False
    if tokens is None:
        tokens = estimate_input_tokens(request)
    pending = PendingCall(request, tokens, exact, max_tokens)
    policy = guard.policy
    if policy is None:
        pending.candidates = [model]
        config.family(model)  # an unknown model fails here, before anything is sent
        return pending
    budget = None
    if guard.budget is not None:
        budget = (yield Call(guard.budget.state)).budget("usd")
    levels_of: Callable[[], Mapping[str, Mapping[str, float]]]
    levels_of = yield Call(guard.level_reader)

    def can_admit(model: str) -> bool:
        levels = levels_of()
        family = config.family(model)
        costs = config.costs(model, family, pending)
        return config.fits(family, costs, levels[family])

    context = RoutingContext(budget=budget, can_admit=can_admit)
    pending.candidates = _candidates(policy.choose(request, context))
    return pending


def admit(guard: Guard | AsyncGuard, pending: PendingCall) -> Flow[Booked[Any]]:
    """The first candidate whose limiter admits within the policy's wait bound.

    Every candidate but the last is given ``policy.max_wait_s`` seconds (and
    is passed over when its budget cannot take the call); the last waits as
    long as ``acquire_timeout`` allows.
    """
    last = len(pending.candidates) - 1
    for i, model in enumerate(pending.candidates):
        family = guard.family(model)
        costs = guard.config.costs(model, family, pending)
        timeout = guard.config.acquire_timeout
        if i < last and guard.policy is not None:
            timeout = _shorter(guard.policy.max_wait_s, timeout)
        try:
            acquire = guard.admission(family).acquire
            permit = yield Call(acquire, (timeout,), {"model": model, **costs})
        except (AcquireTimeout, BudgetExceeded):
            if i == last:
                raise
            continue
        return Booked(model, family, permit)
    raise AssertionError("unreachable: a pending call has at least one candidate")


_Sent = tuple[R, Mapping[str, str] | None]


def attempts(
    guard: Guard | AsyncGuard,
    pending: PendingCall,
    send: Callable[[dict[str, Any]], Flow[_Sent[R]]],
) -> Flow[tuple[R, Booked[Any], Mapping[str, str] | None]]:
    """Admit, send, and on a retryable failure give the permit back and go again."""
    attempt = 0
    while True:
        attempt += 1
        booked = yield from admit(guard, pending)
        try:
            result, headers = yield from send({**pending.request, "model": booked.model})
        except Exception as exc:
            yield from _cancel(booked)
            if isinstance(exc, anthropic.APIStatusError) and exc.status_code == 429:
                metrics.provider_429(guard.limiter(booked.family).name)
            retry = decide_retry(exc, attempt, guard.config.max_attempts)
            if retry.hold_s is not None and isinstance(exc, anthropic.APIStatusError):
                yield from _hold(guard, booked, exc.response.headers, retry.hold_s)
            if not retry.again:
                raise
            log.info("attempt %d to %s failed (%s); retrying", attempt, booked.model, exc)
            if retry.sleep_s > 0:
                yield Sleep(retry.sleep_s)
            continue
        except BaseException:
            # Cancelled while the request was out: give the permit back regardless.
            yield from _cancel(booked, shield=True)
            raise
        return result, booked, headers


def _send_message(inner: Any, body: dict[str, Any]) -> Flow[_Sent[Message]]:
    raw = yield Call(inner.messages.with_raw_response.create, kwargs=body)
    message = yield Call(raw.parse)
    return message, raw.headers


def _send_parse(inner: Any, body: dict[str, Any]) -> Flow[_Sent[Any]]:
    return (yield Call(inner.messages.parse, kwargs=body)), None


def _send_events(inner: Any, body: dict[str, Any]) -> Flow[_Sent[Any]]:
    stream = yield Call(inner.messages.create, kwargs=body)
    return stream, headers_of(stream)


def _send_stream(inner: Any, body: dict[str, Any]) -> Flow[_Sent[tuple[Any, Any]]]:
    manager = inner.messages.stream(**body)
    stream = yield Enter(manager)
    return (manager, stream), headers_of(stream)


def _cancel(booked: Booked[Any], *, shield: bool = False) -> Flow[None]:
    try:
        yield Call(booked.permit.cancel, shield=shield)
    except LimiterError:
        log.exception("could not cancel permit %s; its lease will", booked.permit.id)


def _hold(
    guard: Guard | AsyncGuard, booked: Booked[Any], headers: Mapping[str, str], hold_s: float
) -> Flow[None]:
    """After a 429: every process backs off for ``hold_s`` seconds."""
    remaining = remaining_levels(guard.config.limits[booked.family], headers)
    try:
        observe = guard.limiter(booked.family).observe
        yield Call(observe, kwargs={"retry_after": hold_s, **remaining})
    except LimiterError:
        log.exception("could not pass a 429 on to the shared limiter")


def finish(
    guard: Guard | AsyncGuard,
    booked: Booked[Any],
    pending: PendingCall,
    usage: ResponseUsage,
    headers: Mapping[str, str] | None,
    *,
    headers_at: float,
    streamed: bool = False,
    error: BaseException | None = None,
) -> Flow[None]:
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
        charged_later = usage.output_so_far(pending.max_tokens) if streamed and usage.started else 0
        remaining = remaining_levels(
            config.limits[booked.family], headers, age_s=age, pending_output=charged_later
        )
    try:
        if not usage.started:
            if isinstance(error, anthropic.APIError):
                yield Call(permit.cancel)  # the API failed before a token: nothing was used
                return
            # The request went out but no usage came back: charged as reserved.
            yield Call(
                permit.settle,
                kwargs={
                    "model": booked.model,
                    "tags": request_tags(headers),
                    "remaining": remaining,
                },
            )
        else:
            actual = usage.settle_amounts(config.limits[booked.family], pending.max_tokens)
            priced = usage.priced(pending.max_tokens)
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
) -> Flow[None]:
    tags = request_tags(headers)
    common = {"model": model, "tags": tags, "remaining": remaining}
    try:
        yield Call(permit.settle, kwargs={**common, "usage": usage, **actual})
    except InvalidArgument as exc:
        # A usage the price table cannot price (fast mode, a new model): charge
        # the budget what it reserved rather than leave the permit to its lease.
        log.warning("could not price the usage of %s (%s); charging the reservation", model, exc)
        reserved = permit.reserved.get("usd")
        extra = {} if reserved is None else {"usd": reserved}
        yield Call(permit.settle, kwargs={**common, **actual, **extra})


def _cached(guard: Guard | AsyncGuard, request: dict[str, Any]) -> Flow[Message | None]:
    """A cached answer to ``request`` (recording what it saved), or None."""
    cache = guard.cache
    if cache is None:
        return None
    try:
        found = yield Call(cache.get, (request,))
    except InvalidArgument as exc:
        log.debug("request not cacheable: %s", exc)
        return None
    except LimiterError:
        log.exception("the response cache is unavailable; calling the API")
        return None
    if found is None:
        return None
    message = Message.model_validate(found)
    model = str(request["model"])
    if metrics.enabled():
        try:
            metrics.cache_hit(guard.limiter(model).name)
        except NoQuotaForModel:
            metrics.cache_hit(guard.config.name)  # a model no family governs: the wrap's name
    if guard.budget is not None:
        try:
            saved = guard.config.pricing.cost(model, message.usage)
            tokens = token_counts(message.usage)
            yield Call(guard.budget.record_saving, (saved,), {"model": model, "tokens": tokens})
        except LimiterError:
            log.exception("could not record what a cached response saved")
    return message


def _store(guard: Guard | AsyncGuard, request: dict[str, Any], message: Message) -> Flow[None]:
    cache = guard.cache
    if cache is None:
        return
    try:
        yield Call(cache.put, (request, message.model_dump(mode="json")))
    except InvalidArgument:
        pass  # not cacheable (logged on the lookup)
    except LimiterError:
        log.exception("could not store a response in the cache")


def create(parts: CallParts, request: dict[str, Any]) -> Flow[Message]:
    """``messages.create`` without ``stream=True``: cache, admission, send, settle."""
    hit = yield from _cached(parts.guard, request)
    if hit is not None:
        return hit
    pending = yield from prepare(parts, request)
    send = functools.partial(_send_message, parts.inner)
    message, booked, headers = yield from attempts(parts.guard, pending, send)
    usage = ResponseUsage.of_message(message)
    yield from finish(parts.guard, booked, pending, usage, headers, headers_at=time.monotonic())
    yield from _store(parts.guard, request, message)
    return message


def parse(parts: CallParts, request: dict[str, Any]) -> Flow[Any]:
    """``messages.parse``: admission, send, settle."""
    pending = yield from prepare(parts, request)
    send = functools.partial(_send_parse, parts.inner)
    message, booked, _ = yield from attempts(parts.guard, pending, send)
    usage = ResponseUsage.of_message(message)
    yield from finish(parts.guard, booked, pending, usage, None, headers_at=time.monotonic())
    return message


def open_events(parts: CallParts, request: dict[str, Any]) -> Flow[tuple[Any, Meter]]:
    """``messages.create(stream=True)``: the SDK's open stream and its meter."""
    pending = yield from prepare(parts, request)
    send = functools.partial(_send_events, parts.inner)
    stream, booked, headers = yield from attempts(parts.guard, pending, send)
    return stream, Meter(parts.guard, booked, pending, headers, time.monotonic())


@dataclass
class OpenedStream:
    """A ``messages.stream`` entered: the SDK's manager and stream, and the meter."""

    manager: Any
    stream: Any
    meter: Meter


def open_stream(parts: CallParts, params: Mapping[str, Any]) -> Flow[OpenedStream]:
    """``messages.stream`` entered: admission, then the SDK's manager entered."""
    pending = yield from prepare(parts, read_request(params))
    send = functools.partial(_send_stream, parts.inner)
    (manager, stream), booked, headers = yield from attempts(parts.guard, pending, send)
    return OpenedStream(
        manager, stream, Meter(parts.guard, booked, pending, headers, time.monotonic())
    )


def close_stream(opened: OpenedStream, exc_info: tuple[Any, Any, Any]) -> Flow[None]:
    """``messages.stream`` exited: settled from the snapshot, then the SDK's manager exited."""
    try:
        yield from opened.meter.finish(
            exc_info[1], ResponseUsage.of_message(_snapshot(opened.stream))
        )
    finally:
        yield Exit(opened.manager, exc_info)


class Meter:
    """Settles an admitted stream once, when it ends or closes."""

    def __init__(
        self,
        guard: Guard | AsyncGuard,
        booked: Booked[Any],
        pending: PendingCall,
        headers: Mapping[str, str] | None,
        opened_at: float,
    ) -> None:
        self.guard = guard
        self.booked = booked
        self.pending = pending
        self.headers = headers
        self.opened_at = opened_at
        self.usage = ResponseUsage()
        """What a raw event stream used so far."""
        self.done = False

    def finish(self, error: BaseException | None, usage: ResponseUsage | None = None) -> Flow[None]:
        """Settle the stream, the first time only: from ``usage`` (a snapshot) or the
        events followed so far; ``error`` is what ended the stream, if anything did."""
        if self.done:
            return
        self.done = True
        yield from finish(
            self.guard,
            self.booked,
            self.pending,
            self.usage if usage is None else usage,
            self.headers,
            headers_at=self.opened_at,
            streamed=True,
            error=error,
        )
