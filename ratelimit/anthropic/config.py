"""What ``wrap`` is configured with: the rate dimensions, and the validated options.

:meth:`WrapConfig.build` checks ``wrap``'s options; the config then answers
the questions every call asks of them: which family governs a model, and what
admission reserves for a call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from ratelimit.anthropic.estimate import PendingCall
from ratelimit.core.numbers import exact, positive
from ratelimit.core.scope import validate_name
from ratelimit.core.settings import Budget, Rate
from ratelimit.errors import InvalidArgument, InvalidArgumentType, NoQuotaForModel
from ratelimit.pricing import Pricing

Dimension = Literal["requests", "input_tokens", "output_tokens"]
Estimate = Literal["local", "count_tokens"]
"""How a call's input tokens are counted before admission (the ``estimate`` option)."""
Limits = Mapping[str, Mapping[str, Rate]]
"""``limits``: a model ID or family prefix (or ``"*"``) to its rates by dimension."""

DIMENSIONS: Final[tuple[Dimension, ...]] = ("requests", "input_tokens", "output_tokens")
"""The rate dimensions a ``limits`` entry may set, as the API limits them (RPM, ITPM, OTPM)."""


@dataclass(frozen=True)
class WrapConfig:
    """What ``wrap`` validated: names, rates by family, budget, pricing and options."""

    name: str
    limits: Mapping[str, Mapping[str, Rate]]
    budget: Budget | None
    pricing: Pricing
    estimate: Estimate
    max_attempts: int
    lease_s: float
    acquire_timeout: float | None

    @classmethod
    def build(
        cls,
        *,
        name: object,
        limits: object,
        budget: object,
        pricing: object,
        estimate: object,
        max_attempts: object,
        lease_s: object,
        acquire_timeout: object,
    ) -> WrapConfig:
        """Check ``wrap``'s options; a bad one raises a typed error."""
        scope = validate_name(name, "name")
        families = _families(limits)
        if budget is not None and not isinstance(budget, Budget):
            raise InvalidArgumentType(f"budget must be a Budget, not {type(budget).__name__}")
        if pricing is None:
            pricing = Pricing.default()
        elif not isinstance(pricing, Pricing):
            raise InvalidArgumentType(f"pricing must be a Pricing, not {type(pricing).__name__}")
        if estimate not in ("local", "count_tokens"):
            raise InvalidArgument(f"estimate must be 'local' or 'count_tokens', got {estimate!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise InvalidArgumentType("max_attempts must be an int")
        if max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be at least 1, got {max_attempts}")
        lease = float(positive(lease_s, "lease_s"))
        timeout: float | None = None
        if acquire_timeout is not None:
            wait = exact(acquire_timeout, "acquire_timeout")
            if wait < 0:
                raise InvalidArgument(f"acquire_timeout must not be negative, got {wait}")
            timeout = float(wait)
        mode: Estimate = "local" if estimate == "local" else "count_tokens"
        return cls(scope, families, budget, pricing, mode, max_attempts, lease, timeout)

    def family(self, model: object) -> str:
        """The ``limits`` key that governs ``model``: the longest matching prefix, else "*"."""
        if not isinstance(model, str) or not model:
            raise InvalidArgumentType(f"model must be a non-empty str, got {model!r}")
        best: str | None = None
        for key in self.limits:
            if key != "*" and model.startswith(key) and (best is None or len(key) > len(best)):
                best = key
        if best is not None:
            return best
        if "*" in self.limits:
            return "*"
        raise NoQuotaForModel(
            f"no limits entry matches model {model!r}; the entries are {sorted(self.limits)} "
            '(add the model, a prefix of it, or a "*" default)'
        )

    def scope_name(self, family: str) -> str:
        """The scope name of a family's limiter."""
        return f"{self.name}:{family}"

    @property
    def budget_name(self) -> str:
        """The budget limiter's scope name."""
        return f"{self.name}:budget"

    def costs(self, model: str, family: str, call: PendingCall) -> dict[str, Any]:
        """What admission reserves for ``call`` on ``model``, by dimension.

        A local estimate larger than the input bucket is cut to a full bucket (it
        errs high by design, and the settle charges the real count); an exact count
        is not, so a prompt that can never fit fails at once. Output is reserved as
        ``max_tokens``, at most a full bucket, as the API itself does.
        """
        rates = self.limits[family]
        costs: dict[str, Any] = {}
        if "requests" in rates:
            costs["requests"] = 1
        if "input_tokens" in rates:
            cap = math.floor(rates["input_tokens"].capacity)
            costs["input_tokens"] = call.input_tokens if call.exact else min(call.input_tokens, cap)
        if "output_tokens" in rates:
            costs["output_tokens"] = min(
                call.max_tokens, math.floor(rates["output_tokens"].capacity)
            )
        if self.budget is not None:
            costs["usd"] = self.pricing.max_cost(
                model, input_tokens=call.input_tokens, max_output_tokens=call.max_tokens
            )
        return costs

    def fits(self, family: str, costs: Mapping[str, Any], levels: Mapping[str, float]) -> bool:
        """Whether buckets at ``levels`` could pay ``costs`` now (a routing hint only)."""
        return all(levels.get(dim, math.inf) >= float(costs[dim]) for dim in self.limits[family])


def _families(limits: object) -> dict[str, dict[str, Rate]]:
    """``limits`` checked: each key's rates, by a dimension the API limits."""
    if not isinstance(limits, Mapping) or not limits:
        raise InvalidArgumentType(
            'limits must map model IDs or family prefixes to {"requests": Rate(...), ...}'
        )
    families: dict[str, dict[str, Rate]] = {}
    for key, rates in limits.items():
        family = validate_name(key, "a limits key")
        if not isinstance(rates, Mapping) or not rates:
            raise InvalidArgumentType(
                f"limits[{family!r}] must map dimensions to Rate objects, e.g. "
                '{"requests": Rate(50, per=60)}'
            )
        for dim, rate in rates.items():
            if dim not in DIMENSIONS:
                raise InvalidArgument(
                    f"limits[{family!r}] has an unknown dimension {dim!r}; "
                    f"the API limits {list(DIMENSIONS)}"
                )
            if not isinstance(rate, Rate):
                raise InvalidArgumentType(
                    f"limits[{family!r}][{dim!r}] must be a Rate, not {type(rate).__name__}"
                )
        families[family] = dict(rates)
    return families
