"""Waiting on a server's own view of itself, with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

DEADLINE_S = 60.0
"""How long any wait may take, in seconds: generous for a loaded machine, yet bounded."""

ADMIN_TIMEOUT_S = 5.0
"""Socket timeout of the helpers' own connections, in seconds: a paused server
makes a poll fail after this long instead of hanging it."""

T = TypeVar("T")


class TopologyError(Exception):
    """A topology could not be built or did not reach the state a helper waits for."""


def wait_for(
    check: Callable[[], T | None],
    what: str,
    *,
    timeout_s: float = DEADLINE_S,
    interval_s: float = 0.05,
) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    A ``RedisError`` raised by ``check`` counts as "not yet" (a server being
    restarted refuses connections for a while). After ``timeout_s`` seconds,
    ``TopologyError`` says ``what`` was awaited and the last error seen.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
        except redis.RedisError as exc:
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            raise TopologyError(
                f"timed out after {timeout_s:.0f} s waiting for {what}"
                + (f" (last error: {last_error!r})" if last_error else "")
            )
        time.sleep(interval_s)


def command(client: redis.Redis, *args: str | int) -> Any:
    """Send a raw command and return the server's reply, unparsed by redis-py."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def as_dict(reply: Any) -> dict[str, str]:
    """A reply of field/value pairs (a RESP2 flat list or a RESP3 map) as a dict."""
    if isinstance(reply, dict):
        return {str(key): str(value) for key, value in reply.items()}
    return {str(key): str(value) for key, value in zip(reply[::2], reply[1::2], strict=True)}
