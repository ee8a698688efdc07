"""Script calls on a plain redis-py client, without its per-command machinery.

redis-py 8 runs every command through a retry wrapper, timing and error
recording for its observability hooks, a per-command dispatch and the
response callbacks: measured here, that is most of what a one-key script
call costs the client (``python benchmarks/bench_peers.py``). A
:class:`LeanScript` sends its ``EVALSHA`` over a connection of the client's
own pool (its address, password, TLS, Sentinel, timeouts) and reads the
reply, and nothing else.

Everything else takes redis-py's own path (:class:`redis.commands.core.Script`),
so its behaviour is unchanged: a Redis Cluster, fakeredis or any client
subclass, a single-connection client, client-side caching, a response
callback for ``EVALSHA``; and, on the lean path, a script the server does
not have (redis-py loads it) and any connection error or timeout (redis-py's
retry policy reconnects and sends again, as it would have done).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.connection
import redis.exceptions
from redis.commands.core import Script

from ratelimit.backend import SyncClient, is_failover
from ratelimit.core.calls import ScriptArg

__all__ = ["HOLD_FROM", "LeanScript", "lean_pool"]

#: A pool that allows at least this many connections lends one for good to the
#: scripts of its client in each process (redis-py's default pool allows 2^31;
#: a URL-built limiter's allows HOLD_FROM + 1). A smaller pool was sized on
#: purpose: its connections are checked out per call, as redis-py does.
HOLD_FROM = 64

#: Arguments whose framing a script keeps (see LeanScript._pack).
FRAMES_KEPT = 512

#: The errors on the wire that make the lean path hand the call to redis-py's,
#: which reconnects and retries (a NOSCRIPT reply does too: redis-py loads it).
_FULL_PATH_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


#: Encoder settings under which ``str.encode()`` writes what redis-py's encoder does.
_UTF8 = {("utf-8", "strict"), ("utf8", "strict"), ("UTF-8", "strict")}


def lean_pool(client: object) -> redis.ConnectionPool | None:
    """``client``'s connection pool when a script call may bypass redis-py's
    command path, else None (see the module's docstring)."""
    if type(client) is not redis.Redis:  # a cluster, fakeredis, a user's subclass
        return None
    if client.connection is not None or client.get_cache() is not None:
        return None
    if "EVALSHA" in client.response_callbacks:
        return None
    pool = client.connection_pool
    kind = pool.connection_class
    if not kind.__module__.startswith("redis.") or not hasattr(kind, "should_reconnect"):
        return None  # a connection class of another library, or a redis-py without the hook
    return pool


class _Held:
    """The connection a pool lends its client's scripts in this process.

    Taken from the pool at the first call and never given back (the pool
    counts it in use, so its own users never get it); a caller takes its lock
    without waiting, and a caller that finds it busy checks a connection out
    of the pool instead. A forked child takes its own. It is kept on the pool
    itself (:data:`_HELD`): the connection refers back to its pool, so any
    table of ours would keep both alive for good; on the pool, they go when
    it goes.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.connection: redis.connection.AbstractConnection | None = None

    def take(self, pool: redis.ConnectionPool) -> redis.connection.AbstractConnection:
        if self.connection is None:
            self.connection = pool.get_connection()
        return self.connection


#: The pool attribute that holds its :class:`_Held`.
_HELD = "_ratelimit_held"
_held_lock = threading.Lock()


def _held_of(pool: redis.ConnectionPool) -> _Held:
    held: _Held | None = getattr(pool, _HELD, None)
    if held is None or held.pid != os.getpid():
        with _held_lock:
            held = getattr(pool, _HELD, None)
            if held is None or held.pid != os.getpid():
                held = _Held()
                setattr(pool, _HELD, held)
    return held


class _FullPath(Exception):
    """The lean path hands the call to redis-py's, which does what it always
    did: loads a missing script, or reconnects and sends the call again (after
    a timeout the first may have run: a rate-only booking is then spent
    twice, under-admitting; a budgeted call's permit id makes it count once)."""


def _run(conn: redis.connection.AbstractConnection, packed: bytes) -> Any:
    """Send ``packed`` over ``conn`` and read its reply.

    The connection is dropped (it reconnects at its next use) on anything
    but the server's own error reply, so a reply half read is never handed
    to the next call; and on a failover's refusal, so that a connection to a
    server that stopped being the primary is not used again. Another error
    reply (out of memory, a script error) leaves it as it is, as redis-py does.
    """
    try:
        conn.send_packed_command([packed])  # type: ignore[no-untyped-call]
        return conn.read_response()
    except redis.exceptions.NoScriptError:
        raise _FullPath from None
    except redis.exceptions.ResponseError as exc:
        if is_failover(exc):
            conn.disconnect()  # type: ignore[no-untyped-call]
        raise
    except BaseException as exc:
        conn.disconnect()  # type: ignore[no-untyped-call]
        if isinstance(exc, _FULL_PATH_ERRORS):
            raise _FullPath from None
        raise
    finally:
        if conn.should_reconnect():  # type: ignore[no-untyped-call]  # maintenance announced
            conn.disconnect()  # type: ignore[no-untyped-call]


class LeanScript:
    """A registered script, called as ``script(keys=..., args=...)`` like redis-py's."""

    def __init__(self, client: SyncClient, script: Script) -> None:
        self.script = script
        self.sha = script.sha
        self._pool = lean_pool(client)
        self._holds = self._pool is not None and self._pool.max_connections >= HOLD_FROM
        encoder = client.get_encoder()
        self._encode: Callable[[Any], bytes] = encoder.encode
        self._utf8 = (encoder.encoding, encoder.encoding_errors) in _UTF8
        self._framed: dict[ScriptArg, bytes] = {}
        self._sha = b"$7\r\nEVALSHA\r\n$40\r\n" + script.sha.encode() + b"\r\n"

    def __call__(self, *, keys: Sequence[str | bytes], args: Sequence[ScriptArg]) -> Any:
        pool = self._pool
        if pool is None:
            return self.script(keys=keys, args=args)
        packed = self._pack(keys, args)
        try:
            if self._holds:
                held = _held_of(pool)
                if held.lock.acquire(blocking=False):
                    try:
                        return _run(held.take(pool), packed)
                    finally:
                        held.lock.release()
            conn = pool.get_connection()
            try:
                return _run(conn, packed)
            finally:
                pool.release(conn)
        except _FullPath:
            return self.script(keys=keys, args=args)

    def _pack(self, keys: Sequence[str | bytes], args: Sequence[ScriptArg]) -> bytes:
        """The command in RESP, as redis-py's packer writes it.

        Most arguments repeat from call to call (a scope's name, settings,
        keys, its budget's period), so each one's framing is kept, in a small
        table emptied when it fills up.
        """
        items = (*keys, *args)
        framed = self._framed
        parts = [b"*%d\r\n" % (len(items) + 3), self._sha, _framed_count(len(keys))]
        for value in items:
            frame = framed.get(value)
            if frame is None:
                frame = self._frame(value)
                if len(framed) >= FRAMES_KEPT:
                    framed.clear()
                framed[value] = frame
            parts.append(frame)
        return b"".join(parts)

    def _frame(self, value: ScriptArg) -> bytes:
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, str) and self._utf8:
            data = value.encode()
        elif type(value) is int:
            data = b"%d" % value
        else:
            data = self._encode(value)
        return b"$%d\r\n%s\r\n" % (len(data), data)


def _framed_count(count: int) -> bytes:
    """The number of keys, as EVALSHA's third argument."""
    data = b"%d" % count
    return b"$%d\r\n%s\r\n" % (len(data), data)
