"""What the sync and the asyncio wrapped clients share: their bases, written once.

:class:`WrappedClient` is a wrapped client (the real one, its guard, its
metered ``messages``; every other attribute is the real client's);
:class:`Metering` is a wrapped ``messages`` (the real client, a copy of it
with the SDK's retries off, and the guard). :func:`metered` turns the SDK's
open event stream into one that settles when it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ratelimit.anthropic.effects import Call, Flow
from ratelimit.anthropic.flows import CallParts, Meter
from ratelimit.anthropic.guard import AsyncGuard, Guard

ClientT = TypeVar("ClientT")
GuardT = TypeVar("GuardT", bound="Guard | AsyncGuard")
MessagesT = TypeVar("MessagesT")
StreamT = TypeVar("StreamT")


class Metering(Generic[ClientT, GuardT]):
    """What both wrapped ``messages`` share: the real client, a copy of it without
    retries, the guard; the raw-response variants are the real client's."""

    def __init__(self, client: ClientT, guard: GuardT) -> None:
        cast(Any, super()).__init__(client)  # the SDK's Messages or AsyncMessages
        self._real = client
        self._guard = guard
        # Every retry must pass the limiter, so the SDK's own retries are off here.
        inner = cast(Any, client).with_options(max_retries=0)
        self.call_parts = CallParts(guard, client, inner)
        """What the call flows work with (:class:`~ratelimit.anthropic.flows.CallParts`)."""

    if not TYPE_CHECKING:

        @property
        def with_raw_response(self):
            return self._real.messages.with_raw_response

        @property
        def with_streaming_response(self):
            return self._real.messages.with_streaming_response

    @property
    def guard(self) -> GuardT:
        """The limiters this client books against."""
        return self._guard


class WrappedClient(Generic[ClientT, GuardT, MessagesT]):
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
        """The limiters this client books against."""
        return self._guard

    @property
    def wrapped(self) -> ClientT:
        """The real client (unmetered)."""
        return self._wrapped

    def closing(self) -> Flow[None]:
        """What ``close()`` does, as a flow for either client's runner.

        Close the real client, and the Redis client ``wrap`` made from a URL. A
        copy from ``with_options`` closes its real client only: the Redis client
        is the original's.
        """
        try:
            yield Call(cast(Any, self._wrapped).close)
        finally:
            if self._owner:
                yield Call(self._guard.close)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_wrapped", "_guard", "_owner", "_messages"):
            raise AttributeError(name)
        return getattr(self._wrapped, name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._guard.config.name!r} over {self._wrapped!r}>"


def metered(cls: Callable[..., StreamT], stream: Any, meter: Meter) -> StreamT:
    """The SDK's open ``stream`` as a ``cls`` (the same response), settled by ``meter``.

    ``cls`` is a subclass of the SDK's ``Stream`` or ``AsyncStream`` that
    follows its events into ``meter`` (its ``meter`` attribute).
    """
    # The SDK's stream has no public copy: build ours from its constructor's parts.
    metered_stream = cls(
        cast_to=stream._cast_to,
        response=stream.response,
        client=stream._client,
        options=stream._options,
    )
    cast(Any, metered_stream).meter = meter
    return metered_stream
