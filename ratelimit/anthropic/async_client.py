"""The wrapped ``anthropic.AsyncAnthropic``: the asyncio twin of the sync client.

The same call flows, driven by :func:`~ratelimit.anthropic.effects.run_async`
over :mod:`ratelimit.asyncio` limiters. A task cancelled while its request is
out gives its permit back before the ``CancelledError`` propagates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Generator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anthropic
from anthropic.lib.streaming import AsyncMessageStream, AsyncMessageStreamManager
from anthropic.resources.messages import AsyncMessages
from anthropic.types import Message, RawMessageStreamEvent

from ratelimit.anthropic import flows
from ratelimit.anthropic.effects import run_async
from ratelimit.anthropic.estimate import read_request
from ratelimit.anthropic.guard import AsyncGuard
from ratelimit.anthropic.wrapped import Metering, WrappedClient, metered

if TYPE_CHECKING:
    _AsyncBase = anthropic.AsyncAnthropic
else:
    _AsyncBase = object


class AsyncLimitedMessages(Metering[anthropic.AsyncAnthropic, AsyncGuard], AsyncMessages):
    """The asyncio twin of :class:`LimitedMessages`."""

    # Hidden from the type checker, which sees the SDK's own overloads instead.
    if not TYPE_CHECKING:

        async def create(self, **params):
            return await self._create(params)

        def stream(self, **params):
            return _AsyncStreamManager(self.call_parts, params)

        async def parse(self, **params):
            return await run_async(flows.parse(self.call_parts, read_request(params)))

    async def _create(
        self, params: Mapping[str, Any]
    ) -> Message | anthropic.AsyncStream[RawMessageStreamEvent]:
        request = read_request(params)
        if request.get("stream") is not True:
            return await run_async(flows.create(self.call_parts, request))
        stream, meter = await run_async(flows.open_events(self.call_parts, request))
        return metered(_AsyncMeteredStream, stream, meter)


class _AsyncMeteredStream(anthropic.AsyncStream[RawMessageStreamEvent]):
    """The asyncio twin of the sync client's metered stream."""

    meter: flows.Meter

    async def __stream__(self) -> AsyncIterator[RawMessageStreamEvent]:
        error: BaseException | None = None
        try:
            async for event in super().__stream__():
                self.meter.usage.see(event)
                yield event
        except BaseException as exc:
            error = exc
            raise
        finally:
            await run_async(self.meter.finish(error))

    async def close(self) -> None:
        """Close the response and settle what the stream used so far."""
        try:
            await super().close()
        finally:
            await run_async(self.meter.finish(None))


class _NotAwaited(Awaitable["anthropic.AsyncStream[RawMessageStreamEvent]"]):
    """Stands in for the request an AsyncMessageStreamManager would await (not a
    coroutine, so that nothing is left un-awaited)."""

    def __await__(self) -> Generator[Any, None, anthropic.AsyncStream[RawMessageStreamEvent]]:
        raise AssertionError("a limited stream is opened through the limiter")


class _AsyncStreamManager(AsyncMessageStreamManager[Any]):
    """The asyncio twin of the sync client's stream manager: admitted on enter, settled on exit."""

    def __init__(self, parts: flows.CallParts, params: Mapping[str, Any]) -> None:
        # The parent's request is never awaited: entering is ours (admission, retries),
        # and the stream is the real SDK's.
        super().__init__(_NotAwaited(), output_format=anthropic.not_given)
        self._parts = parts
        self._params = params
        self._opened: flows.OpenedStream | None = None

    async def __aenter__(self) -> AsyncMessageStream[Any]:
        self._opened = await run_async(flows.open_stream(self._parts, self._params))
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
            await run_async(flows.close_stream(opened, (exc_type, exc, exc_tb)))


class AsyncLimitedAnthropic(
    WrappedClient[anthropic.AsyncAnthropic, AsyncGuard, AsyncLimitedMessages], _AsyncBase
):
    """The asyncio twin of :class:`LimitedAnthropic`, typed as ``anthropic.AsyncAnthropic``."""

    def __init__(
        self, client: anthropic.AsyncAnthropic, guard: AsyncGuard, *, owner: bool = True
    ) -> None:
        super().__init__(client, guard, AsyncLimitedMessages(client, guard), owner=owner)

    def with_options(self, **options: Any) -> AsyncLimitedAnthropic:
        """The real client's ``with_options(...)``, wrapped under the same limits."""
        return AsyncLimitedAnthropic(self.wrapped.with_options(**options), self.guard, owner=False)

    copy = with_options

    async def close(self) -> None:
        """Close the real client, and the Redis client ``wrap`` made from a URL.

        A copy from ``with_options`` closes its real client only: the Redis
        client is the original's.
        """
        await run_async(self.closing())

    async def __aenter__(self) -> AsyncLimitedAnthropic:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
