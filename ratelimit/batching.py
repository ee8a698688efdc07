"""Script calls of concurrent asyncio tasks, carried together in pipelines.

On one event loop, many tasks often ask the same Redis at once (``asyncio.gather``
over a batch of requests). Sent one by one, each call waits for its own round
trip and takes a connection of its own, until the pool runs out. A
:class:`ScriptBatcher` sends one call at a time while nothing else is waiting
and, while a call is on the wire, collects the calls that arrive and sends
them as one pipeline (no MULTI: each script is atomic by itself) when it
returns. Every caller still gets its own reply or its own error; a client
uses at most one connection for its scripts, whatever the concurrency.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.commands.core import AsyncScript

#: Most calls one pipeline carries: beyond this, the next batch waits for the
#: reply (a bounded write and a bounded reply to parse at once).
MAX_BATCH = 256

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    """One client's script calls, batched while a call is on the wire."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._pending: list[_Call] = []
        self._busy = False

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run ``script``: at once when nothing else is on the wire, else in the next batch."""
        if not self._busy:
            self._busy = True
            try:
                return await script(keys=keys, args=args)
            finally:
                self._busy = False
                if self._pending:
                    self._start()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        return await future

    def _start(self) -> None:
        self._busy = True
        asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                batch = [call for call in batch if not call[3].done()]  # cancelled meanwhile
                if batch:
                    await self._send(batch)
        finally:
            self._busy = False
            if self._pending:  # arrived as the last batch finished
                self._start()

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._pipeline(batch)
            missing = [
                i
                for i, reply in enumerate(replies)
                if isinstance(reply, redis.exceptions.NoScriptError)
            ]
            if missing:
                # The server lost the scripts (a restart, a failover, SCRIPT
                # FLUSH): load them, then send those calls again.
                for script in {batch[i][0] for i in missing}:
                    script.sha = await self._client.script_load(script.script)
                again = await self._pipeline([batch[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except BaseException as exc:  # the whole pipeline failed: every caller hears it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)


_batchers: weakref.WeakKeyDictionary[redis.asyncio.Redis, ScriptBatcher] = (
    weakref.WeakKeyDictionary()
)


def batcher_for(client: redis.asyncio.Redis) -> ScriptBatcher:
    """The batcher of ``client``, shared by every limiter that uses it."""
    found = _batchers.get(client)
    if found is None:
        found = _batchers[client] = ScriptBatcher(client)
    return found
