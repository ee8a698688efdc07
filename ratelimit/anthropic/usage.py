"""What a response used: the provider's token counts, followed as far as a call got.

A complete message carries its usage; a stream reports it in events, and a
stream cut short is charged from what it had generated. Input is counted as
the API's input-token limit counts it (uncached input plus cache writes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from anthropic.types import RawMessageStreamEvent

from ratelimit.anthropic.estimate import BYTES_PER_TOKEN
from ratelimit.core.settings import Rate


def _content_bytes(blocks: Iterable[Any]) -> int:
    """UTF-8 bytes of the content generated so far (text, thinking, tool input)."""
    total = 0
    for block in blocks:
        for attr in ("text", "thinking", "data"):
            value = getattr(block, attr, None)
            if isinstance(value, str):
                total += len(value.encode("utf-8", "surrogatepass"))
        tool_input = getattr(block, "input", None)
        if tool_input is not None:
            total += len(json.dumps(tool_input, default=str).encode())
    return total


@dataclass
class ResponseUsage:
    """What a response used, as far as it got: the provider's counts, by kind."""

    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0
    content_bytes: int = 0
    """UTF-8 bytes of generated content seen, for a stream cut short."""
    started: bool = False
    """Whether any usage arrived (a message, or a stream's ``message_start``)."""
    finished: bool = False
    """Whether the output count is final (a stop reason arrived)."""
    final: object = None
    """The provider's own ``Usage`` of a finished response, priced as is."""
    cache_creation: dict[str, int] | None = None

    @classmethod
    def of_message(cls, message: Any) -> ResponseUsage:
        """The usage of a complete message, or of a stream's snapshot (maybe partial)."""
        found = cls()
        if message is None:
            return found
        usage = message.usage
        found.started = True
        found._absorb(usage)
        found.content_bytes = _content_bytes(message.content)
        found.finished = message.stop_reason is not None
        if found.finished:
            found.final = usage
        return found

    def _absorb(self, usage: Any) -> None:
        for name in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
        ):
            value = getattr(usage, name, None)
            if isinstance(value, int):
                setattr(self, name, value)
        split = getattr(usage, "cache_creation", None)
        if split is not None:
            self.cache_creation = {
                "ephemeral_5m_input_tokens": int(getattr(split, "ephemeral_5m_input_tokens", 0)),
                "ephemeral_1h_input_tokens": int(getattr(split, "ephemeral_1h_input_tokens", 0)),
            }

    def see(self, event: RawMessageStreamEvent) -> None:
        """Follow one raw stream event."""
        if event.type == "message_start":
            self.started = True
            self._absorb(event.message.usage)
        elif event.type == "message_delta":
            # Counts on a message_delta are cumulative: they replace, never add.
            self._absorb(event.usage)
            self.finished = event.delta.stop_reason is not None
        elif event.type == "content_block_delta":
            delta = event.delta
            text = getattr(delta, "text", None) or getattr(delta, "thinking", None)
            text = text or getattr(delta, "partial_json", None)
            if isinstance(text, str):
                self.content_bytes += len(text.encode("utf-8", "surrogatepass"))

    @property
    def itpm_tokens(self) -> int:
        """Input as the API's input-token limit counts it: uncached plus cache writes."""
        return self.input_tokens + self.cache_creation_input_tokens

    def output_so_far(self, max_tokens: int) -> int:
        """Output tokens to charge: the final count, or for a stream cut short, the
        larger of the count reported and its content's bytes / 3, at most ``max_tokens``."""
        if self.finished:
            return self.output_tokens
        seen = math.ceil(self.content_bytes / BYTES_PER_TOKEN)
        return min(max_tokens, max(self.output_tokens, seen))

    def settle_amounts(self, rates: Mapping[str, Rate], max_tokens: int) -> dict[str, Any]:
        """A settle's amounts for a family's ``rates``: input and output tokens, as charged.

        Requests are left as reserved (one per call, whatever happened).
        """
        actual: dict[str, Any] = {}
        if "input_tokens" in rates:
            actual["input_tokens"] = self.itpm_tokens
        if "output_tokens" in rates:
            actual["output_tokens"] = self.output_so_far(max_tokens)
        return actual

    def priced(self, max_tokens: int) -> object:
        """A usage for pricing: the provider's own when final, else the counts so far."""
        if self.finished and self.final is not None:
            return self.final
        usage: dict[str, object] = {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": self.output_so_far(max_tokens),
        }
        if self.cache_creation is not None:
            usage["cache_creation"] = self.cache_creation
        return usage
