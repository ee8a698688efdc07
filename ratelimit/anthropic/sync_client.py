"""The wrapped ``anthropic.Anthropic``: its metered ``messages``, streams and client.

``messages.create`` (streamed or not), ``messages.stream`` and
``messages.parse`` run the call flows (:mod:`ratelimit.anthropic.flows`)
with :func:`~ratelimit.anthropic.effects.run_sync`; a stream settles when it
ends or closes. :mod:`ratelimit.anthropic.async_client` is the asyncio twin.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anthropic
from anthropic.lib.streaming import MessageStream, MessageStreamManager
from anthropic.resources.messages import Messages
from anthropic.types import Message, RawMessageStreamEvent

from ratelimit.anthropic import flows
from ratelimit.anthropic.effects import run_sync
from ratelimit.anthropic.estimate import read_request
from ratelimit.anthropic.guard import Guard
from ratelimit.anthropic.wrapped import Metering, WrappedClient, metered


class LimitedMessages(Metering[anthropic.Anthropic, Guard], Messages):
    """``client.messages`` of a wrapped client: ``create``, ``stream`` and ``parse``
    go through the limiter; ``count_tokens``, ``batches`` and the raw-response
    variants are the real client's, unmetered."""

    # Hidden from the type checker, which sees the SDK's own overloads instead: the
    # wrapper takes and returns exactly what the SDK does.
    if not TYPE_CHECKING:

        def create(self, **params):
            return self._create(params)

        def stream(self, **params):
            return _StreamManager(self.call_parts, params)

        def parse(self, **params):
            return run_sync(flows.parse(self.call_parts, read_request(params)))

    def _create(
        self, params: Mapping[str, Any]
    ) -> Message | anthropic.Stream[RawMessageStreamEvent]:
        request = read_request(params)
        if request.get("stream") is not True:
            return run_sync(flows.create(self.call_parts, request))
        stream, meter = run_sync(flows.open_events(self.call_parts, request))
        return metered(_MeteredStream, stream, meter)


class _MeteredStream(anthropic.Stream[RawMessageStreamEvent]):
    """The SDK's event stream, following usage as it goes and settling at the end."""

    meter: flows.Meter

    def __stream__(self) -> Iterator[RawMessageStreamEvent]:
        error: BaseException | None = None
        try:
            for event in super().__stream__():
                self.meter.usage.see(event)
                yield event
        except BaseException as exc:
            error = exc
            raise
        finally:
            run_sync(self.meter.finish(error))

    def close(self) -> None:
        """Close the response and settle what the stream used so far."""
        try:
            super().close()
        finally:
            run_sync(self.meter.finish(None))


def _not_used() -> anthropic.Stream[RawMessageStreamEvent]:
    raise AssertionError("a limited stream is opened through the limiter")


class _StreamManager(MessageStreamManager[Any]):
    """``messages.stream(...)``: admitted on enter, settled from the snapshot on exit."""

    def __init__(self, parts: flows.CallParts, params: Mapping[str, Any]) -> None:
        # The parent's request is never made: entering is ours (admission, retries),
        # and the stream is the real SDK's.
        super().__init__(_not_used, output_format=anthropic.not_given)
        self._parts = parts
        self._params = params
        self._opened: flows.OpenedStream | None = None

    def __enter__(self) -> MessageStream[Any]:
        self._opened = run_sync(flows.open_stream(self._parts, self._params))
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
            run_sync(flows.close_stream(opened, (exc_type, exc, exc_tb)))


if TYPE_CHECKING:
    _SyncBase = anthropic.Anthropic
else:
    _SyncBase = object


class LimitedAnthropic(WrappedClient[anthropic.Anthropic, Guard, LimitedMessages], _SyncBase):
    """An ``anthropic.Anthropic`` whose Messages calls pass the shared limiter.

    Typed as the SDK client; at run time everything but ``messages``,
    ``with_options``/``copy`` and the context manager is the wrapped client's
    own attribute. ``guard`` holds the limiters (per family, budget, ledger).
    """

    def __init__(self, client: anthropic.Anthropic, guard: Guard, *, owner: bool = True) -> None:
        super().__init__(client, guard, LimitedMessages(client, guard), owner=owner)

    def with_options(self, **options: Any) -> LimitedAnthropic:
        """The real client's ``with_options(...)``, wrapped under the same limits."""
        return LimitedAnthropic(self.wrapped.with_options(**options), self.guard, owner=False)

    copy = with_options

    def close(self) -> None:
        """Close the real client, and the Redis client ``wrap`` made from a URL.

        A copy from ``with_options`` closes its real client only: the Redis
        client is the original's.
        """
        run_sync(self.closing())

    def __enter__(self) -> LimitedAnthropic:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
