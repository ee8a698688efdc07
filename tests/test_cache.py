"""The response cache: keys from canonical requests, the temperature rule, msgpack and TTLs.

Key derivation is pure and tested without a server; storage runs against the
suite's real Redis and Valkey servers (``r``/``ar``) and against fakeredis.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import anthropic
import fakeredis
import fakeredis.aioredis
import pytest
import redis
import redis.asyncio
from anthropic.types import Message
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from ratelimit.cache import (
    CACHE_KEY_PREFIX,
    IGNORED_FIELDS,
    OUTPUT_FIELDS,
    AsyncResponseCache,
    ResponseCache,
    cache_key,
    canonical_request,
    decode_message,
    encode_message,
    is_deterministic,
)
from ratelimit.errors import InvalidArgument, InvalidArgumentType, RedisUnavailable
from ratelimit.server import free_port

HAIKU = "claude-haiku-4-5"
SONNET = "claude-sonnet-4-6"


def request(**changes: Any) -> dict[str, Any]:
    """A deterministic request with every common output-changing field set."""
    base: dict[str, Any] = {
        "model": HAIKU,
        "max_tokens": 256,
        "temperature": 0,
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": [{"type": "text", "text": "4"}]},
            {"role": "user", "content": "And 3+3?"},
        ],
        "tools": [
            {
                "name": "add",
                "description": "Adds numbers",
                "input_schema": {"type": "object", "properties": {"a": {"type": "number"}}},
            }
        ],
        "tool_choice": {"type": "auto"},
        "stop_sequences": ["\n\nHuman:"],
    }
    base.update(changes)
    return base


def key(req: dict[str, Any], **kwargs: Any) -> str | None:
    return cache_key(req, **kwargs)


MESSAGE = Message.model_validate(
    {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": HAIKU,
        "content": [
            {"type": "thinking", "thinking": "Add them.", "signature": "c2ln"},
            {"type": "text", "text": "6 \u2713", "citations": None},
            {"type": "tool_use", "id": "toolu_01", "name": "add", "input": {"a": [3, 3.5, None]}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "output_tokens": 34,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 5,
            "service_tier": "standard",
        },
    }
)


# -- canonical request and key --------------------------------------------------------


def test_key_layout() -> None:
    k = key(request())
    assert k is not None
    assert re.fullmatch(re.escape(CACHE_KEY_PREFIX) + r"default:[0-9a-f]{64}", k)
    assert k.startswith("rl:v2:cache:default:")
    other = key(request(), namespace="team-a")
    assert other is not None
    assert other.startswith("rl:v2:cache:team-a:")
    assert other.rsplit(":", 1)[1] == k.rsplit(":", 1)[1]


def test_namespace_braces_are_escaped_so_keys_spread_over_cluster_slots() -> None:
    # A literal {...} would be a hash tag, putting a whole namespace on one node.
    k = key(request(), namespace="{team}")
    assert k is not None
    assert "{" not in k
    assert "}" not in k
    keys = [key(request(max_tokens=n), namespace="{team}") for n in range(1, 40)]
    slots = {key_slot(k.encode()) for k in keys if k is not None}
    assert len(slots) > 30


def test_key_is_stable_across_dict_ordering() -> None:
    a = request()
    b = {name: a[name] for name in reversed(list(a))}
    b["tools"] = [{k: v for k, v in reversed(list(a["tools"][0].items()))}]
    b["messages"] = [{"content": m["content"], "role": m["role"]} for m in a["messages"]]
    assert key(a) == key(b)
    assert canonical_request(a) == canonical_request(b)


def test_canonical_request_is_compact_sorted_json() -> None:
    text = canonical_request({"model": HAIKU, "messages": [], "max_tokens": 1}).decode()
    assert text == '{"max_tokens":1,"messages":[],"model":"claude-haiku-4-5"}'


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", SONNET),
        ("system", "You are verbose."),
        ("messages", [{"role": "user", "content": "What is 2+3?"}]),
        ("max_tokens", 257),
        ("temperature", 0.5),
        ("top_p", 0.9),
        ("top_k", 5),
        ("stop_sequences", ["END"]),
        ("tools", []),
        ("tool_choice", {"type": "any"}),
        ("thinking", {"type": "adaptive"}),
        ("output_config", {"effort": "low"}),
        (
            "output_config",
            {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        ),
        ("output_format", {"type": "json_schema", "schema": {"type": "object"}}),
        ("betas", ["context-1m-2025-08-07"]),
        ("mcp_servers", [{"type": "url", "url": "https://example.com", "name": "x"}]),
        ("context_management", {"edits": []}),
        ("container", "container_01"),
        ("some_future_parameter", True),  # unknown: kept, so at worst a miss
    ],
)
def test_key_differs_when_an_output_changing_field_differs(field: str, value: object) -> None:
    assert field in OUTPUT_FIELDS or field not in IGNORED_FIELDS
    assert key(request(**{field: value}), cache_nondeterministic=True) != key(
        request(), cache_nondeterministic=True
    )


def test_every_documented_output_field_is_tested() -> None:
    tested = {
        "model", "system", "messages", "max_tokens", "temperature", "top_p", "top_k",
        "stop_sequences", "tools", "tool_choice", "thinking", "output_config",
        "output_format", "betas", "mcp_servers", "context_management", "container",
    }  # fmt: skip
    assert tested == OUTPUT_FIELDS
    assert not OUTPUT_FIELDS & IGNORED_FIELDS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metadata", {"user_id": "u-42"}),
        ("stream", True),
        ("timeout", 30.0),
        ("extra_headers", {"x-trace": "abc"}),
        ("extra_query", {"debug": "1"}),
        ("extra_body", {}),
        ("service_tier", "standard_only"),
        ("speed", "fast"),
        ("inference_geo", "us"),
        ("diagnostics", {"previous_message_id": "msg_0"}),
        ("cache_control", {"type": "ephemeral"}),
        ("user_profile_id", "prof_1"),
        ("workspace_id", "wrkspc_1"),
    ],
)
def test_key_is_the_same_when_only_ignored_fields_differ(field: str, value: object) -> None:
    assert field in IGNORED_FIELDS
    assert key(request(**{field: value})) == key(request())


def test_equivalent_spellings_give_one_key() -> None:
    base = key(request())
    # A string prompt abbreviates one text block, in messages and in system.
    blocks = request(
        system=[{"type": "text", "text": "You are terse."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": [{"type": "text", "text": "And 3+3?"}]},
        ],
    )
    assert key(blocks) == base
    assert key(request(stop_sequences=("\n\nHuman:",))) == base  # a tuple is a JSON list
    assert key(request(max_tokens=256.0, temperature=0.0)) == base  # 1.0 is 1
    assert key(request(top_p=None)) == base  # a top-level None is an absent key
    assert key(request(top_p=anthropic.omit, top_k=anthropic.NOT_GIVEN)) == base


def test_extra_body_is_merged_like_the_sdk_does() -> None:
    top = request()
    via_body = request(extra_body={"temperature": 0})
    del via_body["temperature"]
    assert key(via_body) == key(top)
    # extra_body overrides the keyword, as the SDK's merge does.
    assert key(request(extra_body={"max_tokens": 512})) == key(request(max_tokens=512))
    assert key(request(temperature=1, extra_body={"temperature": 0})) == key(top)


def test_anthropic_beta_header_counts_as_betas() -> None:
    header = request(extra_headers={"Anthropic-Beta": "b-2, a-1"})
    assert key(header) == key(request(betas=["a-1", "b-2"]))
    assert key(request(betas=["b-2", "a-1", "a-1"])) == key(request(betas=["a-1", "b-2"]))
    assert key(header) != key(request())


def test_pydantic_blocks_key_like_the_dicts_the_sdk_sends() -> None:
    from_response = request(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": MESSAGE.content[1:2]},
        ]
    )
    dumped = request(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [MESSAGE.content[1].model_dump(mode="json")]},
        ]
    )
    assert key(from_response) == key(dumped)


# -- the temperature rule --------------------------------------------------------------


def test_temperature_zero_is_cached_by_default() -> None:
    assert is_deterministic(request())
    assert key(request()) is not None
    assert key(request(temperature=0.0)) is not None


@pytest.mark.parametrize("temperature", [None, 0.2, 1, 1.0])
def test_unset_or_positive_temperature_needs_opt_in(temperature: float | None) -> None:
    req = request(temperature=temperature)
    if temperature is None:
        del req["temperature"]
    assert not is_deterministic(req)
    assert key(req) is None
    assert key(req, cache_nondeterministic=True) is not None


def test_unset_temperature_with_omit_is_unset() -> None:
    assert key(request(temperature=anthropic.omit)) is None


@pytest.mark.parametrize(
    ("temperature", "error"),
    [
        (-0.1, InvalidArgument),
        (math.nan, InvalidArgument),
        (math.inf, InvalidArgument),
        ("0", InvalidArgumentType),
        (False, InvalidArgumentType),
    ],
)
def test_bad_temperature_is_a_typed_error(temperature: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        key(request(temperature=temperature))
    with pytest.raises(error):
        key(request(temperature=temperature), cache_nondeterministic=True)


# -- bad input ---------------------------------------------------------------------


def _gen() -> Iterator[dict[str, str]]:
    yield {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("req", "error"),
    [
        ([("model", HAIKU)], InvalidArgumentType),
        ({"messages": []}, InvalidArgumentType),
        ({"model": "", "messages": []}, InvalidArgument),
        ({"model": 7, "messages": []}, InvalidArgumentType),
        ({"model": HAIKU, "messages": "hi"}, InvalidArgumentType),
        ({"model": HAIKU, "messages": _gen()}, InvalidArgumentType),  # would be consumed
        ({"model": HAIKU, "messages": [], "top_k": {1, 2}}, InvalidArgumentType),
        ({"model": HAIKU, "messages": [], "top_p": math.nan}, InvalidArgument),
        ({"model": HAIKU, "messages": [], "tools": [{1: "x"}]}, InvalidArgumentType),
        ({"model": HAIKU, "messages": [], "x": object()}, InvalidArgumentType),
        ({"model": HAIKU, "messages": [], "extra_body": [1]}, InvalidArgumentType),
        ({"model": HAIKU, "messages": [], "betas": "a-1"}, InvalidArgumentType),
    ],
)
def test_bad_request_is_a_typed_error(req: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        cache_key(req, cache_nondeterministic=True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ttl_s": 0}, InvalidArgument),
        ({"ttl_s": -5}, InvalidArgument),
        ({"ttl_s": math.nan}, InvalidArgument),
        ({"ttl_s": math.inf}, InvalidArgument),
        ({"ttl_s": 1e300}, InvalidArgument),
        ({"ttl_s": "60"}, InvalidArgumentType),
        ({"ttl_s": True}, InvalidArgumentType),
        ({"namespace": ""}, InvalidArgument),
        ({"namespace": 3}, InvalidArgumentType),
        ({"cache_nondeterministic": 1}, InvalidArgumentType),
    ],
)
def test_bad_settings_are_typed_errors(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        ResponseCache(fakeredis.FakeRedis(), **kwargs)
    with pytest.raises(error):
        AsyncResponseCache(fakeredis.aioredis.FakeRedis(), **kwargs)


def test_bad_clients_are_refused() -> None:
    with pytest.raises(InvalidArgumentType):
        ResponseCache(object())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        ResponseCache(redis.asyncio.Redis())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentType):
        AsyncResponseCache(redis.Redis())  # type: ignore[arg-type]
    # msgpack bytes are not text: a decoding client would mangle every value.
    with pytest.raises(InvalidArgument):
        ResponseCache(redis.Redis(decode_responses=True))
    with pytest.raises(InvalidArgument):
        AsyncResponseCache(redis.asyncio.Redis(decode_responses=True))


def test_bad_put_arguments_are_typed_errors() -> None:
    cache = ResponseCache(fakeredis.FakeRedis())
    with pytest.raises(InvalidArgumentType):
        cache.put(request(), MESSAGE)  # type: ignore[arg-type]  # a model, not its dump
    with pytest.raises(InvalidArgumentType):
        cache.put(request(), {"when": object()})
    with pytest.raises(InvalidArgument):
        cache.put(request(), MESSAGE.model_dump(mode="json"), ttl_s=0)
    with pytest.raises(InvalidArgumentType):
        cache.put(request(), MESSAGE.model_dump(mode="json"), ttl_s="1")  # type: ignore[arg-type]


# -- encoding -----------------------------------------------------------------------


def test_msgpack_round_trip_of_a_real_message() -> None:
    packed = encode_message(MESSAGE.model_dump(mode="json"))
    assert isinstance(packed, bytes)
    decoded = decode_message(packed)
    assert decoded == MESSAGE.model_dump(mode="json")
    assert Message.model_validate(decoded) == MESSAGE


@pytest.mark.parametrize("raw", [b"\xc1", b"\x93\x01\x02\x03", b"\x81\x01", "text", b"\xa1x\x00"])
def test_unreadable_values_are_misses(raw: object) -> None:
    assert decode_message(raw) is None


# -- storage on real servers ----------------------------------------------------------


def _exercise_sync(cache: ResponseCache, client: Any) -> None:
    req = request()
    assert cache.get(req) is None
    cache.put(req, MESSAGE.model_dump(mode="json"))
    got = cache.get(req)
    assert got is not None
    assert Message.model_validate(got) == MESSAGE
    # Another spelling of the same request hits; an ignored field does not matter.
    assert cache.get(request(metadata={"user_id": "x"}, stream=False)) == got
    k = cache.key(req)
    assert k is not None
    assert 3_599_000 < client.pttl(k) <= 3_600_000


def test_sync_cache_on_a_real_server(r: redis.Redis) -> None:
    _exercise_sync(ResponseCache(r), r)


def test_sync_cache_on_fakeredis() -> None:
    client = fakeredis.FakeRedis()
    _exercise_sync(ResponseCache(client), client)


def test_ttl_per_call_and_per_cache(r: redis.Redis) -> None:
    cache = ResponseCache(r, ttl_s=60)
    cache.put(request(), MESSAGE.model_dump(mode="json"))
    k = cache.key(request())
    assert k is not None
    assert 59_000 < r.pttl(k) <= 60_000
    cache.put(request(), MESSAGE.model_dump(mode="json"), ttl_s=1.5)
    assert 1_000 < r.pttl(k) <= 1_500
    cache.put(request(), MESSAGE.model_dump(mode="json"), ttl_s=0.0001)  # rounds up to 1 ms
    assert r.pttl(k) in (-2, 0, 1)


def test_uncacheable_requests_touch_nothing(r: redis.Redis) -> None:
    cache = ResponseCache(r)
    sampled = request(temperature=0.7)
    cache.put(sampled, MESSAGE.model_dump(mode="json"))
    assert r.dbsize() == 0
    assert cache.get(sampled) is None
    opted_in = ResponseCache(r, cache_nondeterministic=True)
    opted_in.put(sampled, MESSAGE.model_dump(mode="json"))
    assert r.dbsize() == 1
    assert opted_in.get(sampled) is not None


def test_namespaces_do_not_share_entries(r: redis.Redis) -> None:
    a = ResponseCache(r, namespace="a")
    b = ResponseCache(r, namespace="b")
    a.put(request(), MESSAGE.model_dump(mode="json"))
    assert a.get(request()) is not None
    assert b.get(request()) is None


def test_a_foreign_value_is_a_miss_and_put_overwrites_it(r: redis.Redis) -> None:
    cache = ResponseCache(r)
    k = cache.key(request())
    assert k is not None
    r.set(k, b"\xc1not msgpack")
    assert cache.get(request()) is None
    cache.put(request(), MESSAGE.model_dump(mode="json"))
    assert cache.get(request()) is not None


def test_url_client(redis_url: str) -> None:
    cache = ResponseCache(redis_url)
    try:
        cache.put(request(), MESSAGE.model_dump(mode="json"))
        assert cache.get(request()) is not None
    finally:
        cache.client.close()


def test_unreachable_redis_raises_redis_unavailable() -> None:
    client = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    cache = ResponseCache(client)
    with pytest.raises(RedisUnavailable):
        cache.get(request())
    with pytest.raises(RedisUnavailable):
        cache.put(request(), MESSAGE.model_dump(mode="json"))


# -- the asyncio twin ------------------------------------------------------------------


async def _exercise_async(cache: AsyncResponseCache, client: Any) -> None:
    req = request()
    assert await cache.get(req) is None
    await cache.put(req, MESSAGE.model_dump(mode="json"))
    got = await cache.get(req)
    assert got is not None
    assert Message.model_validate(got) == MESSAGE
    k = cache.key(req)
    assert k is not None
    assert k == ResponseCache(fakeredis.FakeRedis()).key(req)  # one key for both clients
    assert 3_599_000 < await client.pttl(k) <= 3_600_000
    await cache.put(req, MESSAGE.model_dump(mode="json"), ttl_s=2)
    assert 1_000 < await client.pttl(k) <= 2_000
    sampled = request(temperature=1)
    await cache.put(sampled, MESSAGE.model_dump(mode="json"))
    assert await cache.get(sampled) is None
    assert await client.dbsize() == 1


async def test_async_cache_on_a_real_server(ar: redis.asyncio.Redis) -> None:
    await _exercise_async(AsyncResponseCache(ar), ar)


async def test_async_cache_on_fakeredis() -> None:
    client = fakeredis.aioredis.FakeRedis()
    await _exercise_async(AsyncResponseCache(client), client)


async def test_async_sees_what_sync_stored(r: redis.Redis, ar: redis.asyncio.Redis) -> None:
    ResponseCache(r, namespace="shared").put(request(), MESSAGE.model_dump(mode="json"))
    got = await AsyncResponseCache(ar, namespace="shared").get(request())
    assert got is not None
    assert Message.model_validate(got) == MESSAGE


async def test_async_url_client(redis_url: str) -> None:
    cache = AsyncResponseCache(redis_url)
    try:
        await cache.put(request(), MESSAGE.model_dump(mode="json"))
        assert await cache.get(request()) is not None
    finally:
        await cache.client.aclose()


async def test_async_unreachable_redis_raises_redis_unavailable() -> None:
    client = redis.asyncio.Redis(port=free_port(), retry=AsyncRetry(NoBackoff(), 0))
    cache = AsyncResponseCache(client)
    with pytest.raises(RedisUnavailable):
        await cache.get(request())
    with pytest.raises(RedisUnavailable):
        await cache.put(request(), MESSAGE.model_dump(mode="json"))
    await client.aclose()
