"""Which model a request goes to: small, composable policies with no I/O.

A policy looks at a request (the keyword arguments of ``messages.create``)
and a :class:`RoutingContext` (the budget's state, and optionally whether a
model's limiter would admit now) and returns model IDs, preferred first, then
fallbacks. The caller (the SDK wrapper) tries them in order: it waits up to
``policy.max_wait_s`` seconds for each candidate's limiter
(``acquire(timeout=max_wait_s)``) before moving on to the next.

>>> policy = BudgetAware(Fallback(["claude-sonnet-4-6", "claude-haiku-4-5"]),
...                      "claude-haiku-4-5", above=0.8)
>>> policy.choose({"messages": []}, RoutingContext(budget=None))
['claude-sonnet-4-6', 'claude-haiku-4-5']

Policies:

* :class:`ByPromptLength`: the longer the prompt (in characters), the larger
  the model: Haiku under 500 characters, Sonnet under 2,000, else Opus.
* :class:`BudgetAware`: the cheaper model(s) once the budget's spent plus
  reserved reaches a fraction of its limit.
* :class:`Fallback`: a list of models, those whose limiter can admit now first.
* :class:`Fixed`: one model (a ``str`` where a policy is expected means this).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Protocol, runtime_checkable

from ratelimit.core.numbers import exact
from ratelimit.core.results import BudgetState
from ratelimit.errors import InvalidArgument, InvalidArgumentType
from ratelimit.pricing.cards import validate_model_id
from ratelimit.pricing.usage import field_of

__all__ = [
    "DEFAULT_MAX_WAIT_S",
    "BudgetAware",
    "ByPromptLength",
    "Fallback",
    "Fixed",
    "ModelPolicy",
    "RoutingContext",
    "prompt_chars",
]

DEFAULT_MAX_WAIT_S: Final = 2.0
"""Seconds a wrapper waits for one candidate's limiter before trying the next, by default."""


@dataclass(frozen=True)
class RoutingContext:
    """What a policy may look at besides the request.

    ``budget`` is the budget's state now (``limiter.state().budget("usd")``),
    or None when there is no budget. ``can_admit(model)``, when given, says
    whether that model's limiter would admit the request right now; it is a
    hint (another process may take the room a moment later), so policies use
    it to order candidates, never to drop them.
    """

    budget: BudgetState | None
    can_admit: Callable[[str], bool] | None = None

    def __post_init__(self) -> None:
        """Check the field types."""
        if self.budget is not None and not isinstance(self.budget, BudgetState):
            raise InvalidArgumentType(
                f"budget must be a BudgetState or None, not {type(self.budget).__name__}"
            )
        if self.can_admit is not None and not callable(self.can_admit):
            raise InvalidArgumentType(
                f"can_admit must be callable or None, not {type(self.can_admit).__name__}"
            )


@runtime_checkable
class ModelPolicy(Protocol):
    """Chooses the models a request may go to.

    ``max_wait_s`` (seconds) is how long the wrapper may wait for one
    candidate's limiter before trying the next; for the last candidate the
    caller's own timeout is the natural limit.
    """

    @property
    def max_wait_s(self) -> float:
        """Seconds to wait for one candidate's limiter before trying the next."""
        ...

    def choose(self, request: Mapping[str, Any], ctx: RoutingContext) -> list[str]:
        """Model IDs for ``request``, preferred first, then fallbacks; never empty."""
        ...


# -- validation -------------------------------------------------------------------


def _wait(value: object, what: str = "max_wait_s") -> float:
    """A wait in seconds: finite and >= 0 (0 means: try without waiting)."""
    number = exact(value, what)
    if number < 0:
        raise InvalidArgument(f"{what} must not be negative, got {value!r}")
    return float(number)


def _policy(value: object, what: str) -> ModelPolicy:
    """A policy, or a model ID standing for :class:`Fixed`."""
    if isinstance(value, str):
        return Fixed(validate_model_id(value, what))
    if not isinstance(value, ModelPolicy):
        raise InvalidArgumentType(
            f"{what} must be a model ID or a ModelPolicy, not {type(value).__name__}"
        )
    return value


def _check_call(request: object, ctx: object) -> None:
    if not isinstance(request, Mapping):
        raise InvalidArgumentType(f"request must be a mapping, not {type(request).__name__}")
    if not isinstance(ctx, RoutingContext):
        raise InvalidArgumentType(f"ctx must be a RoutingContext, not {type(ctx).__name__}")


# -- prompt length ------------------------------------------------------------------


def _text_chars(content: object) -> int:
    """Characters of text in a message's content: a str, or blocks (text, tool results)."""
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, Sequence):
        return 0
    total = 0
    for block in content:
        text = field_of(block, "text")
        if isinstance(text, str):
            total += len(text)
        elif field_of(block, "type") == "tool_result":
            total += _text_chars(field_of(block, "content"))
    return total


def prompt_chars(request: Mapping[str, Any], *, include_system: bool = False) -> int:
    """The length of a request's prompt text in characters (what ByPromptLength measures).

    Counts the text of every message: string contents, ``text`` blocks and the
    text inside ``tool_result`` blocks. Images, documents and tool inputs are
    not text and count 0. The system prompt counts only with
    ``include_system``, since it is usually a fixed preamble that says little
    about how hard this request is.
    """
    if not isinstance(request, Mapping):
        raise InvalidArgumentType(f"request must be a mapping, not {type(request).__name__}")
    messages = request.get("messages")
    total = 0
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        total += sum(_text_chars(field_of(message, "content")) for message in messages)
    if include_system:
        total += _text_chars(request.get("system"))
    return total


# -- policies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixed:
    """Always the one model ``model``."""

    model: str
    max_wait_s: float = DEFAULT_MAX_WAIT_S

    def __post_init__(self) -> None:
        """Check the model ID and the wait."""
        validate_model_id(self.model, "model")
        object.__setattr__(self, "max_wait_s", _wait(self.max_wait_s))

    def choose(self, request: Mapping[str, Any], ctx: RoutingContext) -> list[str]:
        """``[model]``."""
        _check_call(request, ctx)
        return [self.model]


_DEFAULT_THRESHOLDS: Final = ((500, "claude-haiku-4-5"), (2000, "claude-sonnet-4-6"))


@dataclass(frozen=True)
class ByPromptLength:
    """A model by the prompt's length in characters (see :func:`prompt_chars`).

    ``thresholds`` are ``(chars, model)`` pairs in strictly ascending order of
    ``chars``: a prompt shorter than ``chars`` goes to ``model`` (the first
    pair that fits); a prompt at least as long as the last threshold goes to
    ``default``. The default rule sends a short prompt to a small, cheap model
    and a long one to the largest, on the premise that prompt length is a rough
    measure of how hard a request is: under 500 characters Haiku 4.5, under
    2,000 Sonnet 4.6, else Opus 4.6.
    """

    thresholds: Sequence[tuple[int, str]] = _DEFAULT_THRESHOLDS
    default: str = "claude-opus-4-6"
    include_system: bool = False
    max_wait_s: float = DEFAULT_MAX_WAIT_S

    def __post_init__(self) -> None:
        """Check and freeze the thresholds (a tuple of pairs)."""
        if isinstance(self.thresholds, str) or not isinstance(self.thresholds, Sequence):
            raise InvalidArgumentType("thresholds must be a sequence of (chars, model) pairs")
        pairs: list[tuple[int, str]] = []
        previous = 0
        for i, pair in enumerate(self.thresholds):
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise InvalidArgumentType(f"thresholds[{i}] must be a (chars, model) pair")
            chars, model = pair
            if isinstance(chars, bool) or not isinstance(chars, int):
                raise InvalidArgumentType(
                    f"thresholds[{i}] chars must be an int, not {type(chars).__name__}"
                )
            if chars <= previous:
                raise InvalidArgument(
                    "thresholds must be positive and in strictly ascending order of chars"
                )
            previous = chars
            pairs.append((chars, validate_model_id(model, f"thresholds[{i}] model")))
        object.__setattr__(self, "thresholds", tuple(pairs))
        validate_model_id(self.default, "default")
        if not isinstance(self.include_system, bool):
            raise InvalidArgumentType("include_system must be a bool")
        object.__setattr__(self, "max_wait_s", _wait(self.max_wait_s))

    def choose(self, request: Mapping[str, Any], ctx: RoutingContext) -> list[str]:
        """The one model for the prompt's length."""
        _check_call(request, ctx)
        length = prompt_chars(request, include_system=self.include_system)
        for chars, model in self.thresholds:
            if length < chars:
                return [model]
        return [self.default]


@dataclass(frozen=True)
class Fallback:
    """Models in order of preference, those whose limiter can admit now first.

    Without ``ctx.can_admit`` the order is ``models`` as given. With it, the
    models that can admit now come first and the others after, each group in
    the given order: none is dropped, because the wrapper may still get one by
    waiting up to ``max_wait_s`` seconds (``acquire(timeout=max_wait_s)``)
    before it tries the next. ``max_wait_s`` may be 0 (never wait but on the
    last).
    """

    models: Sequence[str]
    max_wait_s: float = DEFAULT_MAX_WAIT_S

    def __post_init__(self) -> None:
        """Check and freeze the models (a non-empty tuple without repeats)."""
        if isinstance(self.models, str) or not isinstance(self.models, Sequence):
            raise InvalidArgumentType(
                f"models must be a sequence of model IDs, not {type(self.models).__name__}"
            )
        models = tuple(validate_model_id(m, f"models[{i}]") for i, m in enumerate(self.models))
        if not models:
            raise InvalidArgument("Fallback needs at least one model")
        if len(set(models)) != len(models):
            raise InvalidArgument(f"models must not repeat, got {list(models)}")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "max_wait_s", _wait(self.max_wait_s))

    def choose(self, request: Mapping[str, Any], ctx: RoutingContext) -> list[str]:
        """The models, those ``ctx.can_admit`` accepts first."""
        _check_call(request, ctx)
        if ctx.can_admit is None:
            return list(self.models)
        ready = [m for m in self.models if ctx.can_admit(m)]
        return ready + [m for m in self.models if m not in ready]


class BudgetAware:
    """``primary`` until the budget is nearly spent, then ``cheaper``.

    Once the budget's ``spent + reserved`` reaches ``above`` times its limit
    (a fraction in (0, 1]; 0.8 by default, the package's default alert), the
    request goes to ``cheaper``'s models only. Reserved money counts because
    calls in flight will be charged. Without a budget in the context it is
    always ``primary``. Either side is a model ID or another policy, so
    ``BudgetAware(Fallback([...]), "claude-haiku-4-5")`` composes.

    ``max_wait_s`` (seconds) defaults to the primary policy's, or the cheaper
    one's when ``primary`` is a plain model ID and ``cheaper`` a policy, else
    :data:`DEFAULT_MAX_WAIT_S`.
    """

    __slots__ = ("_above", "_cheaper", "_max_wait_s", "_primary")

    def __init__(
        self,
        primary: ModelPolicy | str,
        cheaper: str | ModelPolicy,
        above: float = 0.8,
        *,
        max_wait_s: float | None = None,
    ) -> None:
        self._primary = _policy(primary, "primary")
        self._cheaper = _policy(cheaper, "cheaper")
        fraction = exact(above, "above")
        if not 0 < fraction <= 1:
            raise InvalidArgument(f"above must be in (0, 1], got {above!r}")
        self._above = fraction
        if max_wait_s is not None:
            self._max_wait_s = _wait(max_wait_s)
        elif isinstance(primary, str) and not isinstance(cheaper, str):
            self._max_wait_s = self._cheaper.max_wait_s
        else:
            self._max_wait_s = self._primary.max_wait_s

    @property
    def primary(self) -> ModelPolicy:
        """The policy while the budget is below the mark (a model ID became :class:`Fixed`)."""
        return self._primary

    @property
    def cheaper(self) -> ModelPolicy:
        """The policy once the budget has reached the mark."""
        return self._cheaper

    @property
    def above(self) -> Decimal:
        """The switch-over point as an exact fraction of the budget's limit."""
        return self._above

    @property
    def max_wait_s(self) -> float:
        """Seconds the wrapper may wait for one candidate's limiter before the next."""
        return self._max_wait_s

    def over(self, budget: BudgetState | None) -> bool:
        """Whether ``budget`` has reached the switch-over point (False without a budget)."""
        if budget is None:
            return False
        return budget.spent + budget.reserved >= self._above * budget.limit

    def choose(self, request: Mapping[str, Any], ctx: RoutingContext) -> list[str]:
        """The cheaper side's models once the budget is over the mark, else the primary's."""
        _check_call(request, ctx)
        side = self._cheaper if self.over(ctx.budget) else self._primary
        return side.choose(request, ctx)

    def __eq__(self, other: object) -> bool:
        """Equal when both sides, the mark and the wait are."""
        if not isinstance(other, BudgetAware):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        """Hash of the configuration."""
        return hash(self._key())

    def _key(self) -> tuple[object, ...]:
        return (self._primary, self._cheaper, self._above, self._max_wait_s)

    def __repr__(self) -> str:
        """The constructor call that builds this policy."""
        return (
            f"BudgetAware({self._primary!r}, {self._cheaper!r}, above={self._above}, "
            f"max_wait_s={self._max_wait_s})"
        )
