"""The lean script path (``ratelimit.transport``) on a real server: the same
replies as redis-py's own path, and redis-py's behaviour wherever it could differ
(lost connections, a flushed script cache, errors, threads, fork, pools sized on
purpose)."""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time
from typing import Any

import fakeredis
import pytest
import redis
import redis.exceptions
from topology import ServerFactory

from ratelimit import Limiter, Rate
from ratelimit.transport import HOLD_FROM, LeanScript, lean_pool

#: Counts its calls in KEYS[1] and echoes every argument back: a reply of each
#: RESP type, and proof of how many times the server ran it.
COUNTER = """
local n = redis.call('INCR', KEYS[1])
return {n, ARGV, {KEYS[1], false, 'é'}, tonumber(ARGV[1]) * 2}
"""
FAILING = "return redis.error_reply('ERR refused on purpose')"
SLOW_COUNTER = "local n = redis.call('INCR', KEYS[1]) return n"


def lean(client: Any, source: str) -> LeanScript:
    return LeanScript(client, client.register_script(source))


def counted(client: redis.Redis) -> int:
    return int(client.get("calls") or 0)


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("decode", [False, True])
def test_replies_are_those_of_redis_pys_own_path(
    redis_url: str, decode: bool, protocol: int
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=decode, protocol=protocol)
    script = lean(client, COUNTER)
    assert lean_pool(client) is client.connection_pool
    args: list[Any] = [21, "naïve ünïcode", b"raw\x01bytes", 2**53, -7, ""]
    mine = script(keys=["calls"], args=args)
    theirs = script.script(keys=["calls"], args=args)
    assert mine[1:] == theirs[1:]
    assert (mine[0], theirs[0]) == (1, 2)
    assert mine[3] == 42
    client.close()


def test_other_clients_take_redis_pys_path(redis_url: str) -> None:
    assert lean_pool(fakeredis.FakeRedis()) is None
    single = redis.Redis.from_url(redis_url, single_connection_client=True)
    assert lean_pool(single) is None
    script = lean(single, COUNTER)
    assert script(keys=["calls"], args=[1])[0] == 1  # and it still works
    single.close()


def test_a_dropped_connection_is_reopened_and_the_call_runs_once(r: redis.Redis) -> None:
    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(_url(r)))
    script = lean(client, COUNTER)
    assert script(keys=["calls"], args=[1])[0] == 1
    r.client_kill_filter(_type="normal", skipme=True)  # every connection but r's
    assert script(keys=["calls"], args=[1])[0] == 2
    assert counted(r) == 2
    client.close()


def test_a_server_restart_between_calls_is_invisible(start_server: ServerFactory) -> None:
    server = start_server()
    client = redis.Redis.from_url(server.url)
    script = lean(client, SLOW_COUNTER)
    assert script(keys=["calls"], args=[]) == 1
    server.restart()  # nothing persisted: the script cache and the count are gone
    assert script(keys=["calls"], args=[]) == 1
    client.close()


def test_a_flushed_script_cache_is_filled_again(r: redis.Redis) -> None:
    script = lean(r, COUNTER)
    assert script(keys=["calls"], args=[1])[0] == 1
    r.script_flush()
    assert script(keys=["calls"], args=[1])[0] == 2
    assert counted(r) == 2


def test_a_script_error_is_raised_as_redis_py_raises_it(r: redis.Redis) -> None:
    failing, counter = lean(r, FAILING), lean(r, COUNTER)
    with pytest.raises(redis.exceptions.ResponseError, match="refused on purpose"):
        failing(keys=["calls"], args=[])
    assert counter(keys=["calls"], args=[1])[0] == 1


def test_an_interrupted_read_never_hands_its_reply_to_the_next_call(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between the send and the read leaves a reply on the wire: the
    connection is dropped, so the next caller reads its own."""
    script = lean(r, COUNTER)
    assert script(keys=["calls"], args=[1])[0] == 1
    kind = r.connection_pool.connection_class
    real = kind.read_response

    def interrupted(self: Any, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(kind, "read_response", real)
        raise KeyboardInterrupt

    monkeypatch.setattr(kind, "read_response", interrupted)
    with pytest.raises(KeyboardInterrupt):
        script(keys=["calls"], args=[1])
    assert script(keys=["calls"], args=[1])[0] == 3  # its own count, not the lost 2
    assert counted(r) == 3


def test_threads_share_the_path_without_mixing_replies(r: redis.Redis) -> None:
    script = lean(r, COUNTER)
    seen: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for i in range(200):
            reply = script(keys=["calls"], args=[i])
            assert reply[3] == 2 * i  # its own reply, not another thread's
            with lock:
                seen.append(reply[0])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(seen) == list(range(1, 1601))


def _child(script: LeanScript, out: Any) -> None:
    out.put([script(keys=["calls"], args=[i])[3] for i in range(100)])


def test_a_forked_child_takes_its_own_connection(r: redis.Redis) -> None:
    script = lean(r, COUNTER)
    assert script(keys=["calls"], args=[1])[0] == 1  # the parent holds one now
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_child, args=(script, out))
    child.start()
    mine = [script(keys=["calls"], args=[i])[3] for i in range(100)]
    theirs = out.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert mine == theirs == [2 * i for i in range(100)]
    assert counted(r) == 201


def test_a_small_pool_lends_no_connection_for_good(redis_url: str) -> None:
    """A pool sized on purpose keeps all of its connections for its users."""
    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=1)
    client = redis.Redis(connection_pool=pool)
    assert pool.max_connections < HOLD_FROM
    limiter = Limiter(client, "small-pool", requests=Rate(100))
    for _ in range(3):
        assert limiter.try_acquire() is not None
        assert client.ping()  # the one connection is free again
    client.close()


def test_a_url_built_limiter_keeps_one_connection_beside_its_pools_own(redis_url: str) -> None:
    limiter = Limiter(redis_url, "url-built", requests=Rate(100))
    assert limiter.try_acquire() is not None
    assert isinstance(limiter.client, redis.Redis)
    pool = limiter.client.connection_pool
    assert pool.max_connections >= HOLD_FROM
    held = [pool.get_connection() for _ in range(pool.max_connections - 1)]
    assert limiter.try_acquire() is not None  # the scripts' own connection
    for connection in held:
        pool.release(connection)
    limiter.client.close()


def test_limiters_built_and_dropped_leave_no_connection_behind(
    r: redis.Redis, redis_url: str
) -> None:
    """A limiter built per request from a URL: its pool, and the connection the
    pool lent its scripts, go when it goes."""
    before = len(r.client_list())
    for i in range(20):
        limiter = Limiter(redis_url, f"dropped-{i}", requests=Rate(100))
        assert limiter.try_acquire() is not None
        del limiter
    gc.collect()
    deadline = time.monotonic() + 10
    while len(r.client_list()) > before and time.monotonic() < deadline:
        time.sleep(0.05)  # the server sees the sockets close
    assert len(r.client_list()) <= before


def _url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
