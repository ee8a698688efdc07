"""Before admission: a call's request, read once, and its input tokens estimated.

The SDK accepts one-shot iterables, so a request is first read into lists
(:func:`read_request`); then :func:`estimate_input_tokens` counts its prompt
locally, erring high, unless the wrapper asks ``messages.count_tokens``. A
:class:`PendingCall` is what admission then works from: the request, its
estimate and the models it may go to.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import anthropic

from ratelimit.errors import InvalidArgumentType

BYTES_PER_TOKEN: Final = 3
"""UTF-8 bytes of prompt JSON per estimated token. Claude's tokenizer averages some
3.5 to 4 characters a token on English and code; counting bytes of the JSON (keys,
quotes and escapes included) and dividing by 3 errs high there, and is about even
for scripts of 3-byte characters (CJK), where a token is roughly one character."""

MESSAGE_TOKENS: Final = 8
"""Tokens added per message, system block and tool definition: the role markers and
separators the API wraps them in, which the JSON does not show."""

TOOL_USE_SYSTEM_TOKENS: Final = 500
"""Tokens added when ``tools`` are given: the API prepends a tool-use system prompt
(some 300 to 350 tokens on current models), rounded up."""

IMAGE_TOKENS: Final = 5_000
"""Tokens counted per image block, whatever its source: above the largest image the
API keeps after resizing (about 4,800 tokens at its highest resolution)."""

DOCUMENT_TOKENS: Final = 50_000
"""Tokens counted per document block that is not plain text (a PDF as base64, URL or
file): a guess of some ten pages. Plain-text and content-block documents are counted
by their text. For PDFs prefer ``estimate="count_tokens"``."""

#: Request fields that make up the prompt the API counts as input.
_PROMPT_FIELDS: Final = ("system", "messages", "tools", "tool_choice", "output_config")

#: What ``messages.count_tokens`` accepts of a ``messages.create`` request.
_COUNT_FIELDS: Final = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config"}
)


def is_omitted(value: object) -> bool:
    """Whether ``value`` is the SDK's "not given" sentinel (``NotGiven``/``Omit``): left out."""
    return isinstance(value, anthropic.NotGiven | anthropic.Omit)


def _materialize(value: Any) -> Any:
    """``value`` with every one-shot iterable turned into a list, recursively.

    The SDK accepts iterables (a generator of messages); the wrapper reads a
    request several times (estimate, cache key, each attempt), so it reads them
    once into lists. Strings, binary data, file objects and SDK models stay.
    """
    if value is None or isinstance(value, str | bytes | bytearray | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: _materialize(v) for k, v in value.items()}
    if hasattr(value, "model_dump") or hasattr(value, "read") or isinstance(value, os.PathLike):
        return value
    if isinstance(value, Iterable):
        return [_materialize(v) for v in value]
    return value


class _PromptSize:
    """Bytes of a prompt's JSON, with media blocks counted apart at a fixed cost."""

    def __init__(self) -> None:
        self.bytes = 0
        self.media_tokens = 0

    def walk(self, value: object) -> None:
        if value is None or isinstance(value, bool):
            self.bytes += 5
        elif isinstance(value, str):
            self.bytes += len(value.encode("utf-8", "surrogatepass")) + 2
        elif isinstance(value, int | float):
            self.bytes += len(repr(value))
        elif isinstance(value, Mapping):
            self._mapping(value)
        elif isinstance(value, list | tuple):
            self.bytes += 2 + len(value)
            for item in value:
                self.walk(item)
        else:
            dump = getattr(value, "model_dump", None)
            if callable(dump):  # a content block of an earlier response
                self.walk(dump(mode="json", exclude_unset=True))
            # Anything else is binary data (a file, a path), which only media blocks
            # hold; they are counted whole below.

    def _mapping(self, block: Mapping[Any, Any]) -> None:
        kind = block.get("type")
        if kind == "image":
            self.media_tokens += IMAGE_TOKENS
            return
        if kind == "document":
            source = block.get("source")
            source_kind = source.get("type") if isinstance(source, Mapping) else None
            if source_kind == "text" and isinstance(source, Mapping):
                self.walk(source.get("data"))
            elif source_kind == "content" and isinstance(source, Mapping):
                self.walk(source.get("content"))
            else:
                self.media_tokens += DOCUMENT_TOKENS
            block = {k: v for k, v in block.items() if k != "source"}
        self.bytes += 2
        for key, item in block.items():
            if is_omitted(item):
                continue
            self.bytes += len(str(key)) + 4
            self.walk(item)


def estimate_input_tokens(request: Mapping[str, Any]) -> int:
    """A fast local estimate of a request's input tokens that errs high.

    The rule: the UTF-8 bytes of the JSON of the request's ``system``,
    ``messages``, ``tools``, ``tool_choice`` and ``output_config`` (``extra_body``
    merged over them), divided by :data:`BYTES_PER_TOKEN` (3) and rounded up,
    plus :data:`MESSAGE_TOKENS` (8) per message, system block and tool, plus
    :data:`TOOL_USE_SYSTEM_TOKENS` (500) when tools are given. Media are not
    counted by their bytes: each image block counts :data:`IMAGE_TOKENS`
    (5,000) and each PDF document block :data:`DOCUMENT_TOKENS` (50,000). The
    result is at least 1. It counts the whole prompt, cached parts included
    (which parts the API reads from its cache is known only afterwards).
    """
    merged: dict[str, Any] = dict(request)
    extra = merged.get("extra_body")
    if isinstance(extra, Mapping):
        merged.update(extra)
    size = _PromptSize()
    for name in _PROMPT_FIELDS:
        value = merged.get(name)
        if value is not None and not is_omitted(value):
            size.walk(value)
    parts = 0
    for name in ("messages", "tools"):
        value = merged.get(name)
        if isinstance(value, list | tuple):
            parts += len(value)
    system = merged.get("system")
    if isinstance(system, str):
        parts += 1
    elif isinstance(system, list | tuple):
        parts += len(system)
    tools = merged.get("tools")
    overhead = TOOL_USE_SYSTEM_TOKENS if isinstance(tools, list | tuple) and tools else 0
    tokens = math.ceil(size.bytes / BYTES_PER_TOKEN) + size.media_tokens
    return max(1, tokens + MESSAGE_TOKENS * parts + overhead)


def count_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a create request that ``messages.count_tokens`` takes."""
    return {k: v for k, v in request.items() if k in _COUNT_FIELDS and not is_omitted(v)}


def read_request(params: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a call, every iterable read into a list."""
    return {name: _materialize(value) for name, value in params.items()}


def model_and_max_tokens(request: Mapping[str, Any]) -> tuple[str, int]:
    """A request's model and ``max_tokens``, checked (the SDK requires both)."""
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgumentType(f"model must be a non-empty str, got {model!r}")
    max_tokens = request.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise InvalidArgumentType(f"max_tokens must be an int, got {max_tokens!r}")
    return model, max(0, max_tokens)


@dataclass
class PendingCall:
    """One call before admission: the request, its input estimate and its candidate models."""

    request: dict[str, Any]
    """The call's keyword arguments, read once (:func:`read_request`)."""
    input_tokens: int
    """The prompt's input tokens: counted by ``count_tokens`` or estimated locally."""
    exact: bool
    """Whether ``input_tokens`` is ``count_tokens``'s count (else the local estimate)."""
    max_tokens: int
    """The call's ``max_tokens``: the output admission reserves."""
    candidates: list[str] = field(default_factory=list)
    """The models the call may go to, preferred first (the policy's, or the call's own)."""
