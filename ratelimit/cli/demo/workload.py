"""The demo's simulated workload, and the check that the limiter held.

The demo's scope has three per-minute rates (requests, input and output
tokens); every worker draws calls of a :class:`CallShape` sized from those
rates, and at the end :func:`check_limit` compares what was admitted with
what the buckets allow over the run's server time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ratelimit import Limiter, Rate
from ratelimit.backend import SyncClient

#: The demo scope's dimensions, in display order.
DIMENSIONS = ("requests", "input_tokens", "output_tokens")

#: The demo scope's defaults: a 10 s run at these rates is long enough to show
#: the steady state and short enough to watch.
DEFAULT_RPM = 600.0
DEFAULT_ITPM = 300_000.0
DEFAULT_OTPM = 60_000.0

#: Simulated API latency of one call, seconds (uniform).
CALL_LATENCY_S = (0.05, 0.25)


@dataclass(frozen=True)
class CallShape:
    """Sizes of the simulated LLM calls.

    They are derived from the rates (tokens per minute over requests per
    minute) so that, at full speed, every dimension is about as binding as
    the others and the demo shows the limiter juggling all three.
    """

    input_tokens: tuple[int, int]
    """Range of input tokens per call (uniform, inclusive)."""
    max_output: tuple[int, ...]
    """Choices of ``max_tokens`` per call: what each call reserves for its output."""

    @classmethod
    def for_rates(cls, rpm: float, itpm: float, otpm: float) -> CallShape:
        """Calls of about ``itpm/rpm`` input and ``otpm/rpm`` output tokens."""
        per_call_in = itpm / rpm
        per_call_out = otpm / rpm
        low = max(1, round(per_call_in * 0.4))
        high = max(low, round(per_call_in * 1.6))
        # Reservations average 1.5x the per-call share and calls use 20-100 %
        # of them (0.9x on average): output is reserved generously and mostly
        # refunded at settle, as with a real max_tokens.
        caps = sorted({max(1, round(per_call_out * f)) for f in (1.0, 1.5, 2.0)})
        return cls((low, high), tuple(caps))

    def largest(self) -> dict[str, int]:
        """The largest cost one call can reserve, per dimension."""
        return {
            "requests": 1,
            "input_tokens": self.input_tokens[1],
            "output_tokens": max(self.max_output),
        }

    def draw(self, rng: random.Random) -> tuple[int, int]:
        """A random call: (input tokens, max output tokens)."""
        return rng.randint(*self.input_tokens), rng.choice(self.max_output)

    @staticmethod
    def actual_output(rng: random.Random, max_output: int) -> int:
        """What a call really generated: 20-100 % of its reservation, never more."""
        return rng.randint(max(1, max_output // 5), max_output)

    def describe(self) -> str:
        """One line for the demo's header."""
        low, high = self.input_tokens
        caps = "/".join(f"{c:,}" for c in self.max_output)
        lat_low, lat_high = (round(s * 1000) for s in CALL_LATENCY_S)
        return (
            f"{low:,}-{high:,} input tokens, max output {caps} tokens "
            f"(uses 20-100 %), {lat_low}-{lat_high} ms each"
        )


def demo_rates(
    rpm: float, itpm: float, otpm: float, burst_s: float, shape: CallShape
) -> dict[str, Rate]:
    """The demo scope's per-minute rates, whose buckets hold ``burst_s`` seconds of refill.

    A bucket always holds at least the largest single call, or that call could
    never be admitted (:class:`~ratelimit.CostExceedsCapacity`).
    """
    per_minute = {"requests": rpm, "input_tokens": itpm, "output_tokens": otpm}
    largest = shape.largest()
    return {
        dim: Rate(amount, per=60, burst=max(amount / 60 * burst_s, largest[dim]))
        for dim, amount in per_minute.items()
    }


def demo_limiter(client: SyncClient | str, name: str, rates: dict[str, Rate]) -> Limiter:
    """The demo scope's limiter, as every worker builds it."""
    return Limiter(
        client,
        name,
        requests=rates["requests"],
        input_tokens=rates["input_tokens"],
        output_tokens=rates["output_tokens"],
    )


@dataclass(frozen=True)
class DimensionCheck:
    """One dimension's verdict: was no more admitted than its bucket allows?"""

    dimension: str
    rate: Rate
    admitted: int
    allowed: float
    """``burst + rate x elapsed``: the most a full bucket can give in ``elapsed``."""

    @property
    def held(self) -> bool:
        """Whether no more was admitted than allowed."""
        return self.admitted <= self.allowed


def check_limit(
    admitted: dict[str, int], rates: dict[str, Rate], elapsed_s: float
) -> list[DimensionCheck]:
    """Admitted vs allowed per dimension over ``elapsed_s`` seconds of server time.

    A bucket holds at most its burst at the start and refills at its rate, so
    whatever was admitted (net of refunds) over the interval is at most
    ``burst + rate x elapsed``, however the calls were spread.
    """
    return [
        DimensionCheck(dim, rate, admitted[dim], rate.capacity + rate.rate_per_s * elapsed_s)
        for dim, rate in rates.items()
    ]
