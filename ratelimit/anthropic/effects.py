"""The effect engine: flows written once as generators, driven by a sync and an asyncio runner.

A flow (a call's admission, send, settle...) is a generator that yields
effects, :class:`Call`, :class:`Sleep`, :class:`Enter` and :class:`Exit`,
and receives their results. :func:`run_sync` performs each effect directly;
:func:`run_async` awaits it. So the wrapped ``Anthropic`` and
``AsyncAnthropic`` clients share every rule, and each shell is only how it
performs an effect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class Call:
    """Effect: call ``fn``; a sync shell takes its result, an asyncio one awaits it."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    shield: bool = False
    """asyncio: let the call finish even if the task is cancelled meanwhile."""


@dataclass(frozen=True)
class Sleep:
    """Effect: pause this caller for ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class Enter:
    """Effect: enter a context manager (``__enter__`` or ``__aenter__``)."""

    manager: Any


@dataclass(frozen=True)
class Exit:
    """Effect: exit a context manager (``__exit__`` or ``__aexit__``)."""

    manager: Any
    exc_info: tuple[Any, Any, Any]


Effect = Call | Sleep | Enter | Exit
"""What a flow may ask its runner to do."""
Flow = Generator[Effect, Any, R]
"""A flow: yields effects, receives their results, returns an ``R``."""


def run_sync(flow: Flow[R]) -> R:
    """Drive ``flow`` synchronously: perform each effect and send back its result."""
    try:
        effect = next(flow)
        while True:
            try:
                if isinstance(effect, Call):
                    reply = effect.fn(*effect.args, **effect.kwargs)
                elif isinstance(effect, Sleep):
                    time.sleep(effect.seconds)
                    reply = None
                elif isinstance(effect, Enter):
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


async def run_async(flow: Flow[R]) -> R:
    """Drive ``flow`` on asyncio: perform each effect, awaited, and send back its result."""
    try:
        effect = next(flow)
        while True:
            try:
                if isinstance(effect, Call):
                    pending = effect.fn(*effect.args, **effect.kwargs)
                    reply = await (asyncio.shield(pending) if effect.shield else pending)
                elif isinstance(effect, Sleep):
                    await asyncio.sleep(effect.seconds)
                    reply = None
                elif isinstance(effect, Enter):
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
