"""What ``wrap`` is configured with: its keyword options, once, and their validated form.

:class:`WrapOptions` is the one written list of ``wrap``'s keyword options
(both of its overloads and its implementation take ``**options`` of it);
:meth:`WrapConfig.build` checks them at run time, applies the defaults, and
answers the questions every call asks of them: which family governs a model,
and what admission reserves for a call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, Required, TypedDict, TypeVar, cast

from ratelimit.anthropic.estimate import PendingCall
from ratelimit.anthropic.routing import ModelPolicy
from ratelimit.core.numbers import exact, positive
from ratelimit.core.results import Alert
from ratelimit.core.scope import DEFAULT_LEASE_S, validate_name
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

CacheT = TypeVar("CacheT")


class WrapOptions(TypedDict, Generic[CacheT], total=False):
    """The keyword options of :func:`~ratelimit.anthropic.wrap`; only ``limits`` is required.

    ``CacheT`` is the response cache that fits the client: a
    :class:`~ratelimit.anthropic.cache.ResponseCache` for ``anthropic.Anthropic``, an
    :class:`~ratelimit.anthropic.cache.AsyncResponseCache` for ``anthropic.AsyncAnthropic``.
    """

    limits: Required[Limits]
    """A model ID or family prefix (or ``"*"``) to its rates by dimension."""
    budget: Budget | None
    """Charged each call's priced cost (default: no budget)."""
    name: str
    """The prefix of every scope name here (default ``"anthropic"``)."""
    pricing: Pricing | None
    """The price table (default: the packaged one)."""
    cache: CacheT | None
    """Answers repeated deterministic requests (default: no cache)."""
    policy: ModelPolicy | None
    """Chooses the model of each call (default: the model the call names)."""
    estimate: Estimate
    """``"local"`` (default) or ``"count_tokens"``."""
    max_attempts: int
    """Attempts per call, each through the limiter (default 5)."""
    lease_s: float
    """Seconds a call may run before its reservation is reclaimed (default 600)."""
    acquire_timeout: float | None
    """Seconds a call may wait for admission (default: as long as it takes)."""
    on_alert: Callable[[Alert], object] | None
    """Called with each budget alert (default: none)."""


OPTION_NAMES: Final = WrapOptions.__required_keys__ | WrapOptions.__optional_keys__
"""Every keyword ``wrap`` takes (``Required`` is a string at run time: all are listed here)."""


@dataclass(frozen=True)
class WrapConfig:
    """What ``wrap`` validated: names, rates by family, budget, pricing, policy and options."""

    name: str
    limits: Mapping[str, Mapping[str, Rate]]
    budget: Budget | None
    pricing: Pricing
    estimate: Estimate
    max_attempts: int
    lease_s: float
    acquire_timeout: float | None
    policy: ModelPolicy | None
    on_alert: Callable[[Alert], object] | None

    @classmethod
    def build(cls, options: Mapping[str, object]) -> WrapConfig:
        """Check ``wrap``'s keyword options and apply the defaults.

        An unknown or missing keyword is a ``TypeError``, as Python reports it
        for a function that spells its keywords out; a bad value is an
        :class:`~ratelimit.errors.InvalidArgument` (or ``...Type``). ``cache`` is
        checked by ``wrap``, which knows the client.
        """
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            raise TypeError(f"wrap() got an unexpected keyword argument {unknown[0]!r}")
        if "limits" not in options:
            raise TypeError("wrap() missing 1 required keyword-only argument: 'limits'")
        scope = validate_name(options.get("name", "anthropic"), "name")
        families = _families(options["limits"])
        budget = options.get("budget")
        if budget is not None and not isinstance(budget, Budget):
            raise InvalidArgumentType(f"budget must be a Budget, not {type(budget).__name__}")
        pricing = options.get("pricing")
        if pricing is None:
            pricing = Pricing.default()
        elif not isinstance(pricing, Pricing):
            raise InvalidArgumentType(f"pricing must be a Pricing, not {type(pricing).__name__}")
        estimate = options.get("estimate", "local")
        if estimate not in ("local", "count_tokens"):
            raise InvalidArgument(f"estimate must be 'local' or 'count_tokens', got {estimate!r}")
        max_attempts = options.get("max_attempts", 5)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise InvalidArgumentType("max_attempts must be an int")
        if max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be at least 1, got {max_attempts}")
        lease = float(positive(options.get("lease_s", DEFAULT_LEASE_S), "lease_s"))
        timeout: float | None = None
        acquire_timeout = options.get("acquire_timeout")
        if acquire_timeout is not None:
            wait = exact(acquire_timeout, "acquire_timeout")
            if wait < 0:
                raise InvalidArgument(f"acquire_timeout must not be negative, got {wait}")
            timeout = float(wait)
        policy = options.get("policy")
        if policy is not None and not isinstance(policy, ModelPolicy):
            raise InvalidArgumentType(f"policy must be a ModelPolicy, not {type(policy).__name__}")
        on_alert = cast("Callable[[Alert], object] | None", options.get("on_alert"))
        mode: Estimate = "local" if estimate == "local" else "count_tokens"
        return cls(
            scope, families, budget, pricing, mode, max_attempts, lease, timeout, policy, on_alert
        )

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
