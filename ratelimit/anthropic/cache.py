"""An opt-in cache of Messages API responses in Redis, shared by every process.

A request (the keyword arguments of ``client.messages.create``) maps to one
Redis key, ``rl:v2:cache:<namespace>:<sha256>``, whose value is the response
``Message`` as a msgpack-encoded dict (``message.model_dump(mode="json")``);
``Message.model_validate(cache.get(request))`` rebuilds it.

>>> import redis
>>> from ratelimit.anthropic.cache import ResponseCache
>>> cache = ResponseCache(redis.Redis(), ttl_s=3600)   # doctest: +SKIP
>>> request = dict(model="claude-haiku-4-5", max_tokens=256, temperature=0,
...                messages=[{"role": "user", "content": "Hello"}])
>>> cached = cache.get(request)                          # doctest: +SKIP

**What the key is made of.** The SHA-256 of the *canonical request*: compact
JSON with sorted keys of every parameter except those known not to change the
response. Output-changing parameters (:data:`OUTPUT_FIELDS`) are ``model``,
``system``, ``messages``, ``max_tokens``, ``temperature``, ``top_p``,
``top_k``, ``stop_sequences``, ``tools``, ``tool_choice``, ``thinking``,
``output_config`` (effort, structured-output format), the beta API's
``output_format``, ``betas``, ``mcp_servers``, ``context_management`` and
``container``. Ignored (:data:`IGNORED_FIELDS`): ``metadata``, ``stream``,
``timeout``, ``extra_headers`` (but for ``anthropic-beta``), ``extra_query``,
``service_tier``, ``speed``, ``inference_geo``, ``diagnostics``, the top-level
``cache_control`` and ``user_profile_id``/``workspace_id``. A key in neither
list is kept: a parameter this module does not know yet can cause a cache
miss, never a wrong hit. ``extra_body`` is merged over the request first and
an ``anthropic-beta`` header counts as ``betas``, as the SDK sends them.

Equivalent spellings give one key: dict order, ``(1, 2)`` versus ``[1, 2]``,
``1.0`` versus ``1``, a top-level ``None`` versus an absent key, and a string
``content`` or ``system`` versus one text block. Prompt-caching markers inside
blocks (``cache_control``) are left in the key.

**Which requests are cached.** Only deterministic ones, unless the cache is
built with ``cache_nondeterministic=True``: a request is deterministic when it
sets ``temperature`` to 0 (top level or in ``extra_body``). An *unset*
temperature counts as non-deterministic, because the API then samples at its
default of 1.0; caching such a response would freeze one sample where the
caller asked for a fresh one. (``anthropic`` 2.14 no longer lists
``temperature`` among ``messages.create``'s parameters; send it through
``extra_body`` or opt in with ``cache_nondeterministic=True``.)

Each entry is one key read by ``GET`` and written by ``SET ... PX``; keys have
no hash tag, so on Redis Cluster they spread over every slot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import redis.exceptions

from ratelimit.anthropic.estimate import is_omitted
from ratelimit.asyncio import AsyncClient
from ratelimit.backend import backend_error, connect, connect_async
from ratelimit.core.keys import KEY_PREFIX, escape_name
from ratelimit.core.numbers import exact, positive
from ratelimit.core.scope import validate_flag, validate_name
from ratelimit.errors import InvalidArgument, InvalidArgumentType
from ratelimit.limiter import SyncClient

__all__ = [
    "CACHE_KEY_PREFIX",
    "DEFAULT_TTL_S",
    "IGNORED_FIELDS",
    "OUTPUT_FIELDS",
    "AsyncResponseCache",
    "ResponseCache",
    "cache_key",
    "canonical_request",
    "decode_message",
    "encode_message",
    "is_deterministic",
    "ttl_ms",
]

log = logging.getLogger("ratelimit")

CACHE_KEY_PREFIX: Final = f"{KEY_PREFIX}cache:"
"""Every cache key starts with this, then the (escaped) namespace, ``:`` and the hash."""

DEFAULT_TTL_S: Final = 3600.0
"""How long an entry lives when neither the cache nor the call says otherwise, in seconds."""

OUTPUT_FIELDS: Final = frozenset(
    {
        "model",
        "system",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "output_format",
        "betas",
        "mcp_servers",
        "context_management",
        "container",
    }
)
"""Parameters known to change the response. Documentation only: any parameter
not in :data:`IGNORED_FIELDS` is part of the key, listed here or not."""

IGNORED_FIELDS: Final = frozenset(
    {
        "metadata",
        "stream",
        "timeout",
        "extra_headers",
        "extra_query",
        "extra_body",  # merged into the request before this filter
        "service_tier",
        "speed",
        "inference_geo",
        "diagnostics",
        "cache_control",
        "user_profile_id",
        "workspace_id",
    }
)
"""Parameters that change how, where or for whom a request runs, not what it answers."""

# Far beyond any sensible TTL, and well inside what SET ... PX accepts.
_MAX_TTL_MS: Final = 2**46


# -- the pure part: shared by both classes --------------------------------------


def ttl_ms(ttl_s: object, what: str = "ttl_s") -> int:
    """A TTL in seconds (positive, finite) as whole milliseconds, rounded up."""
    seconds = positive(ttl_s, what)
    ms = math.ceil(seconds * 1000)
    if ms > _MAX_TTL_MS:
        raise InvalidArgument(f"{what} is too large: {ttl_s!r} seconds")
    return ms


def _plain(value: object, path: str) -> Any:
    """``value`` as plain JSON data (dict, list, str, int, float, bool, None).

    Raises InvalidArgumentType for anything JSON cannot carry faithfully,
    including one-shot iterables: reading a generator here would leave
    nothing for the actual request.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum or other int subclass hashes as the number
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{path} must be finite, got {value!r}")
        # 1.0 and 1 are the same number to the API, so they must be one key.
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgumentType(f"{path} has a non-str key {k!r}")
            if not is_omitted(v):
                out[k] = _plain(v, f"{path}.{k}")
        return out
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        # A pydantic model (say, content blocks of an earlier response): dumped
        # as the SDK sends it, so that it matches the equivalent dict.
        dumped = dump(
            mode="json",
            exclude_unset=True,
            by_alias=True,
            exclude=getattr(value, "__api_exclude__", None),
        )
        return _plain(dumped, path)
    raise InvalidArgumentType(
        f"{path}: a {type(value).__name__} cannot be part of a cache key; "
        "use JSON-like values (dicts, lists, str, numbers), lists rather than iterators"
    )


def _text_blocks(value: Any) -> Any:
    """A string prompt as the one text block it abbreviates (the API treats both alike)."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


def _betas(request: Mapping[str, Any]) -> list[str] | None:
    """The beta flags a request turns on, from ``betas`` or an ``anthropic-beta`` header.

    The header wins, as in the SDK (``extra_headers`` is applied last). Order
    and repetition of flags do not matter to the API, so they are sorted.
    """
    flags: object = request.get("betas")
    headers = request.get("extra_headers")
    if isinstance(headers, Mapping):
        for name, value in headers.items():
            if isinstance(name, str) and name.lower() == "anthropic-beta" and value is not None:
                if not isinstance(value, str):
                    raise InvalidArgumentType("the anthropic-beta header must be a str")
                flags = [flag.strip() for flag in value.split(",") if flag.strip()]
    if flags is None or is_omitted(flags):
        return None
    if isinstance(flags, str) or not isinstance(flags, Sequence):
        raise InvalidArgumentType(f"betas must be a list of str, got {type(flags).__name__}")
    if not all(isinstance(flag, str) for flag in flags):
        raise InvalidArgumentType("betas must be a list of str")
    return sorted(set(flags))


def _merged(request: object) -> dict[str, Any]:
    """The request as the API receives it: ``extra_body`` merged over the keywords."""
    if not isinstance(request, Mapping):
        raise InvalidArgumentType(f"request must be a mapping, not {type(request).__name__}")
    merged = dict(request)
    extra = merged.get("extra_body")
    if extra is not None and not is_omitted(extra):
        if not isinstance(extra, Mapping):
            raise InvalidArgumentType(f"extra_body must be a mapping, not {type(extra).__name__}")
        merged.update(extra)  # the SDK lets extra_body override a keyword
    return merged


def _canonical(merged: Mapping[str, Any]) -> dict[str, Any]:
    model = merged.get("model")
    if not isinstance(model, str):
        raise InvalidArgumentType(f"request model must be a str, not {type(model).__name__}")
    if not model:
        raise InvalidArgument("request model must not be empty")
    messages = merged.get("messages")
    if isinstance(messages, str) or not isinstance(messages, Sequence):
        raise InvalidArgumentType(f"request messages must be a list, not {type(messages).__name__}")
    canonical: dict[str, Any] = {}
    for name, value in merged.items():
        if not isinstance(name, str):
            raise InvalidArgumentType(f"request has a non-str key {name!r}")
        if name in IGNORED_FIELDS or name == "betas" or value is None or is_omitted(value):
            continue
        canonical[name] = _plain(value, name)
    betas = _betas(merged)
    if betas is not None:
        canonical["betas"] = betas
    if "system" in canonical:
        canonical["system"] = _text_blocks(canonical["system"])
    canonical["messages"] = [
        {**m, "content": _text_blocks(m["content"])}
        if isinstance(m, dict) and "content" in m
        else m
        for m in canonical["messages"]
    ]
    return canonical


def canonical_request(request: Mapping[str, Any]) -> bytes:
    """The request's output-changing part as compact, key-sorted JSON (UTF-8).

    Equal for requests the API answers alike; see the module documentation
    for what is kept, dropped and normalised. Raises InvalidArgumentType /
    InvalidArgument for a request without a str ``model`` and a list of
    ``messages``, or holding values JSON cannot carry.
    """
    body = _canonical(_merged(request))
    # ASCII escapes keep any str (lone surrogates included) encodable, and one spelling.
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii")


def is_deterministic(request: Mapping[str, Any]) -> bool:
    """True when the request samples greedily: ``temperature`` is given and is 0.

    An unset temperature means the API's default of 1.0, so it is False.
    """
    temperature = _merged(request).get("temperature")
    if temperature is None or is_omitted(temperature):
        return False
    number = exact(temperature, "temperature")
    if number < 0:
        raise InvalidArgument(f"temperature must not be negative, got {temperature!r}")
    return number == 0


def _namespace(namespace: object) -> str:
    name = validate_name(namespace, "namespace")
    # Braces would make a hash tag and pin the namespace to one cluster slot.
    return escape_name(name)


def cache_key(
    request: Mapping[str, Any], *, namespace: str = "default", cache_nondeterministic: bool = False
) -> str | None:
    """``rl:v2:cache:<namespace>:<sha256 hex of the canonical request>``, or None.

    None means the request is not cacheable: it is not deterministic (see
    :func:`is_deterministic`) and ``cache_nondeterministic`` is False.
    """
    validate_flag(cache_nondeterministic, "cache_nondeterministic")
    prefix = f"{CACHE_KEY_PREFIX}{_namespace(namespace)}:"
    # Both checks run first so that a malformed request raises whatever the flag says.
    digest = hashlib.sha256(canonical_request(request)).hexdigest()
    deterministic = is_deterministic(request)
    if not (deterministic or cache_nondeterministic):
        return None
    return prefix + digest


def encode_message(message: Mapping[str, Any]) -> bytes:
    """A response (``message.model_dump(mode="json")``) as msgpack bytes."""
    if not isinstance(message, Mapping):
        raise InvalidArgumentType(
            f"message must be a mapping such as message.model_dump(mode='json'), "
            f"not {type(message).__name__}"
        )
    try:
        packed: bytes = msgpack.packb(dict(message), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgumentType(
            f"message must hold msgpack-encodable values (dump it with mode='json'): {exc}"
        ) from exc
    return packed


def decode_message(raw: object) -> dict[str, Any] | None:
    """A stored response back as a dict; None (a miss) for a missing or unreadable value.

    An unreadable value (written by something else under our key) is logged
    and treated as a miss; the next ``put`` overwrites it.
    """
    if raw is None:
        return None
    if not isinstance(raw, bytes):
        log.warning("response cache: unexpected %s value, ignored", type(raw).__name__)
        return None
    try:
        value = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        log.warning("response cache: a value is not msgpack, ignored")
        return None
    if not isinstance(value, dict):
        log.warning("response cache: a value is not a map, ignored")
        return None
    return value


def _check_decoding(client: object) -> None:
    """Refuse a client that decodes replies: msgpack bytes are not text."""
    get_encoder = getattr(client, "get_encoder", None)
    encoder = get_encoder() if callable(get_encoder) else None
    if getattr(encoder, "decode_responses", False):
        raise InvalidArgument(
            "the response cache stores msgpack bytes; give it a client built "
            "without decode_responses=True"
        )


class _Settings:
    """What both caches validate and hold: namespace, default TTL, determinism rule."""

    def __init__(self, ttl_s: object, namespace: object, cache_nondeterministic: object) -> None:
        self._ttl_ms = ttl_ms(ttl_s)
        self._prefix = _namespace(namespace)
        self.ttl_s: float = float(ttl_s)  # type: ignore[arg-type]  # checked by ttl_ms
        """The default time to live of an entry, in seconds."""
        self.namespace: str = namespace  # type: ignore[assignment]  # checked by _namespace
        """Entries of different namespaces never answer each other."""
        self.cache_nondeterministic: bool = validate_flag(
            cache_nondeterministic, "cache_nondeterministic"
        )
        """Whether requests that do not set ``temperature=0`` are cached too."""

    def key(self, request: Mapping[str, Any]) -> str | None:
        """The Redis key of ``request``'s entry, or None if it is not cacheable."""
        return cache_key(
            request,
            namespace=self.namespace,
            cache_nondeterministic=self.cache_nondeterministic,
        )

    def _entry(
        self, request: Mapping[str, Any], message: Mapping[str, Any], ttl_s: object
    ) -> tuple[str, bytes, int] | None:
        """What ``put`` writes: key, msgpack value and TTL in ms; None if not cacheable.

        Every argument is checked, cacheable or not.
        """
        px = self._ttl_ms if ttl_s is None else ttl_ms(ttl_s)
        value = encode_message(message)
        key = self.key(request)
        return None if key is None else (key, value, px)


class ResponseCache(_Settings):
    """Responses shared by every process using the same Redis and ``namespace``.

    ``client`` is a ``redis.Redis``, a ``redis.cluster.RedisCluster`` (not
    decoding responses) or a URL; ``ttl_s`` is how long an entry lives, in
    seconds, unless :meth:`put` says otherwise; ``cache_nondeterministic``
    also caches requests without ``temperature=0`` (see the module
    documentation). Redis failures raise :class:`~ratelimit.errors.BackendError`
    (:class:`~ratelimit.errors.RedisUnavailable` when unreachable); a caller
    that wants the cache to be best-effort treats them as a miss.
    """

    def __init__(
        self,
        client: redis.Redis | redis.cluster.RedisCluster | str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        namespace: str = "default",
        cache_nondeterministic: bool = False,
    ) -> None:
        super().__init__(ttl_s, namespace, cache_nondeterministic)
        if not isinstance(client, str | redis.Redis | redis.cluster.RedisCluster):
            raise InvalidArgumentType(
                "client must be a redis.Redis, a RedisCluster or a URL, "
                f"not {type(client).__name__}"
            )
        _check_decoding(client)
        self.client: SyncClient = connect(client) if isinstance(client, str) else client

    def get(self, request: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cached response to ``request`` as a dict, or None (a miss, or not cacheable)."""
        key = self.key(request)
        if key is None:
            return None
        try:
            raw = self.client.get(key)
        except redis.exceptions.RedisError as exc:
            raise backend_error(exc) from exc
        return decode_message(raw)

    def put(
        self,
        request: Mapping[str, Any],
        message: Mapping[str, Any],
        *,
        ttl_s: float | None = None,
    ) -> None:
        """Store ``message`` as the response to ``request`` for ``ttl_s`` seconds.

        ``ttl_s`` defaults to the cache's. Does nothing for a request that is
        not cacheable (arguments are still validated).
        """
        entry = self._entry(request, message, ttl_s)
        if entry is None:
            return
        key, value, px = entry
        try:
            self.client.set(key, value, px=px)
        except redis.exceptions.RedisError as exc:
            raise backend_error(exc) from exc


class AsyncResponseCache(_Settings):
    """The asyncio twin of :class:`ResponseCache`, for ``redis.asyncio`` clients.

    Same arguments and rules; :meth:`get` and :meth:`put` are coroutines,
    :meth:`key` is not (it does no I/O).
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster | str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        namespace: str = "default",
        cache_nondeterministic: bool = False,
    ) -> None:
        super().__init__(ttl_s, namespace, cache_nondeterministic)
        if not isinstance(client, str | redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster):
            raise InvalidArgumentType(
                "client must be a redis.asyncio.Redis, an asyncio RedisCluster or a URL, "
                f"not {type(client).__name__}"
            )
        _check_decoding(client)
        self.client: AsyncClient = connect_async(client) if isinstance(client, str) else client

    async def get(self, request: Mapping[str, Any]) -> dict[str, Any] | None:
        """See :meth:`ResponseCache.get`."""
        key = self.key(request)
        if key is None:
            return None
        try:
            raw = await self.client.get(key)
        except redis.exceptions.RedisError as exc:
            raise backend_error(exc) from exc
        return decode_message(raw)

    async def put(
        self,
        request: Mapping[str, Any],
        message: Mapping[str, Any],
        *,
        ttl_s: float | None = None,
    ) -> None:
        """See :meth:`ResponseCache.put`."""
        entry = self._entry(request, message, ttl_s)
        if entry is None:
            return
        key, value, px = entry
        try:
            await self.client.set(key, value, px=px)
        except redis.exceptions.RedisError as exc:
            raise backend_error(exc) from exc
