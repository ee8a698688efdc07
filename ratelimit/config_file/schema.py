"""What each table of a configuration file may hold, checked by the library's own validators.

Every value is checked by the constructor that will use it (:class:`Rate`,
:class:`Budget`, :class:`Retention`, the scope's own validation), so the file
accepts exactly what the code accepts. When a constructor refuses a table,
each of its keys is tried alone with the others at neutral values, and the
error names the first key that fails by itself; a refusal no single key
explains is reported on the table. Unknown keys are refused, so a typo
cannot silently leave a limit out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Literal, TypeVar, cast

from ratelimit.config_file.document import Document, KeyPath
from ratelimit.core.keys import ScopeKeys
from ratelimit.core.numbers import exact, positive
from ratelimit.core.scope import OnRedisError, ScopeSpec, validate_name
from ratelimit.core.settings import Budget, Rate, Retention
from ratelimit.errors import InvalidArgument, InvalidArgumentType

T = TypeVar("T")
Table = Mapping[str, Any]

#: The dimension a configured budget is charged in: ``usd``, as the wrapper names it.
BUDGET_DIMENSION: Final = "usd"
#: The rate dimensions an ``[anthropic.limits.<family>]`` table may set (the API's RPM,
#: ITPM and OTPM); the same as ``ratelimit.anthropic.DIMENSIONS``, which needs the SDK.
WRAPPER_DIMENSIONS: Final = ("requests", "input_tokens", "output_tokens")

RATE_EXAMPLE: Final = "{ amount = 4000, per = 60 }"
BUDGET_EXAMPLE: Final = '{ usd = 50, per = "day" }'
RETENTION_EXAMPLE: Final = "{ max_age_s = 604800 }"

_SCOPE_KEYS: Final = ("slot", "lease_s", "on_redis_error", "rates", "budget", "retention")
_WRAPPER_KEYS: Final = (
    "name",
    "limits",
    "budget",
    "estimate",
    "max_attempts",
    "lease_s",
    "acquire_timeout",
)
#: Dimensions that let a scope's options be checked alone.
_NEUTRAL_RATES: Final = {"requests": Rate(1)}


@dataclass(frozen=True)
class ScopeConfig:
    """One scope as the file configures it: what ``Limiter(client, name, ...)`` is given.

    ``slot``, ``lease_s``, ``on_redis_error`` and ``retention`` are None where
    the file leaves the library's default. ``line`` is where the file defines
    the scope (for the wrapper's scopes, its ``[anthropic]`` table).
    """

    name: str
    rates: Mapping[str, Rate]
    budget: Budget | None = None
    slot: str | None = None
    lease_s: float | None = None
    on_redis_error: OnRedisError | None = None
    retention: Retention | None = None
    line: int = 1

    @property
    def dimensions(self) -> dict[str, Rate | Budget]:
        """The limiter's dimensions: each rate, and the budget as ``usd``."""
        budget = {} if self.budget is None else {BUDGET_DIMENSION: self.budget}
        return {**self.rates, **budget}

    @property
    def keys(self) -> ScopeKeys:
        """The scope's Redis keys."""
        return ScopeKeys(self.name, self.name if self.slot is None else self.slot)

    @property
    def spec(self) -> ScopeSpec:
        """The scope as a limiter built from this configuration checks it."""
        return ScopeSpec.build(self.name, self.dimensions, slot=self.slot)

    def limiter_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``Limiter(client, name, **...)`` that the file sets."""
        options = {
            "slot": self.slot,
            "lease_s": self.lease_s,
            "on_redis_error": self.on_redis_error,
            "retention": self.retention,
        }
        return {**{k: v for k, v in options.items() if v is not None}, **self.dimensions}


@dataclass(frozen=True)
class WrapperConfig:
    """The ``[anthropic]`` table: the options of ``ratelimit.anthropic.wrap`` it sets."""

    limits: Mapping[str, Mapping[str, Rate]]
    budget: Budget | None
    options: Mapping[str, object]
    """``name``, ``estimate``, ``max_attempts``, ``lease_s``, ``acquire_timeout`` as given."""
    line: int = 1

    @property
    def name(self) -> str:
        """The prefix of the wrapper's scope names (``wrap``'s default: ``"anthropic"``)."""
        return cast(str, self.options.get("name", "anthropic"))

    def wrap_kwargs(self) -> dict[str, Any]:
        """The keyword options of ``wrap`` that the file sets."""
        budget = {} if self.budget is None else {"budget": self.budget}
        return {"limits": {k: dict(v) for k, v in self.limits.items()}, **budget, **self.options}

    def scopes(self) -> dict[str, ScopeConfig]:
        """The scopes ``wrap`` builds: ``<name>:<family>`` each, and ``<name>:budget``."""
        lease = cast("float | None", self.options.get("lease_s"))
        scopes = {
            f"{self.name}:{family}": ScopeConfig(
                f"{self.name}:{family}", rates, slot=self.name, lease_s=lease, line=self.line
            )
            for family, rates in self.limits.items()
        }
        if self.budget is not None:
            budget_scope = f"{self.name}:budget"
            scopes[budget_scope] = ScopeConfig(
                budget_scope, {}, self.budget, slot=self.name, lease_s=lease, line=self.line
            )
        return scopes


def table(doc: Document, value: object, path: KeyPath, example: str) -> Table:
    """``value`` if it is a table, else an error showing what one looks like."""
    if not isinstance(value, Mapping):
        raise doc.error(path, f"must be a table, e.g. {example}, not {value!r}")
    return value


def refuse_unknown(doc: Document, value: Table, path: KeyPath, allowed: tuple[str, ...]) -> None:
    """An error on the first key of ``value`` that is not ``allowed``."""
    for key in value:
        if key not in allowed:
            raise doc.error((*path, key), f"unknown key; expected one of {', '.join(allowed)}")


def blame(
    doc: Document,
    path: KeyPath,
    build: Callable[[], T],
    alone: Mapping[KeyPath, Callable[[], object]],
) -> T:
    """``build()``; when it refuses, the first of ``alone`` that refuses by itself is named."""
    try:
        return build()
    except InvalidArgument as whole:
        for key, attempt in alone.items():
            try:
                attempt()
            except InvalidArgument as exc:
                raise doc.error(key, str(exc)) from exc
        raise doc.error(path, str(whole)) from whole


def setting(doc: Document, value: object, path: KeyPath, cls: Callable[..., T], example: str) -> T:
    """A Rate, Budget or Retention from its table, by its own constructor."""
    given = table(doc, value, path, example)
    fields = tuple(f.name for f in dataclasses.fields(cast(Any, cls)))
    refuse_unknown(doc, given, path, fields)
    # Arrays arrive as lists; the settings are frozen (hashable) and take tuples.
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    required = {"amount": 1} if cls is Rate else {"usd": 1} if cls is Budget else {}
    for key in required:
        if key not in args:
            raise doc.error(path, f"{key!r} is required, e.g. {example}")
    alone = {(*path, k): partial(cls, **{**required, k: v}) for k, v in args.items()}
    return blame(doc, path, partial(cls, **args), alone)


def rates(
    doc: Document, value: object, path: KeyPath, allowed: tuple[str, ...] | None = None
) -> dict[str, Rate]:
    """A table of rates by dimension (only ``allowed`` dimensions, when given)."""
    given = table(doc, value, path, f"{{ requests = {RATE_EXAMPLE} }}")
    if allowed is not None:
        refuse_unknown(doc, given, path, allowed)
    return {dim: setting(doc, v, (*path, dim), Rate, RATE_EXAMPLE) for dim, v in given.items()}


def scope(doc: Document, name: str, value: object) -> ScopeConfig:
    """A ``[scope.<name>]`` table, checked as ``Limiter(client, name, ...)`` checks it."""
    path = ("scope", name)
    blame(doc, path, partial(validate_name, name, "a scope name"), {})
    given = table(doc, value, path, f"[scope.{name}] with a [scope.{name}.rates] table")
    refuse_unknown(doc, given, path, _SCOPE_KEYS)
    scope_rates = rates(doc, given.get("rates", {}), (*path, "rates"))
    budget = retention = None
    if "budget" in given:
        budget = setting(doc, given["budget"], (*path, "budget"), Budget, BUDGET_EXAMPLE)
        if BUDGET_DIMENSION in scope_rates:
            raise doc.error(
                (*path, "rates", BUDGET_DIMENSION),
                f"the budget is the dimension {BUDGET_DIMENSION!r}: name this rate otherwise",
            )
    if "retention" in given:
        retention = setting(
            doc, given["retention"], (*path, "retention"), Retention, RETENTION_EXAMPLE
        )
    options = {k: given[k] for k in ("slot", "lease_s", "on_redis_error") if k in given}
    config = ScopeConfig(name, scope_rates, budget, retention=retention, line=doc.line_of(path))
    alone: dict[KeyPath, Callable[[], object]] = {
        (*path, k): partial(ScopeSpec.build, name, _NEUTRAL_RATES, **{k: v})
        for k, v in options.items()
    }
    for dim, configured in config.dimensions.items():
        where = (*path, "budget") if isinstance(configured, Budget) else (*path, "rates", dim)
        alone[where] = partial(ScopeSpec.build, name, {dim: configured})
    whole = partial(ScopeSpec.build, name, config.dimensions, retention=retention, **options)
    spec = blame(doc, path, whole, alone)
    return dataclasses.replace(
        config,
        slot=cast("str | None", options.get("slot")),
        lease_s=float(options["lease_s"]) if "lease_s" in options else None,
        on_redis_error=spec.on_redis_error if "on_redis_error" in options else None,
    )


def wrapper(doc: Document, value: object, taken: Mapping[str, ScopeConfig]) -> WrapperConfig:
    """The ``[anthropic]`` table: ``wrap``'s limits, budget and plain options.

    A scope it would build must not be one of ``taken`` (the ``[scope]`` tables).
    """
    path = ("anthropic",)
    given = table(doc, value, path, "[anthropic] with [anthropic.limits.<family>] tables")
    refuse_unknown(doc, given, path, _WRAPPER_KEYS)
    if "limits" not in given:
        raise doc.error(path, "'limits' is required: [anthropic.limits.<family>] tables")
    families = table(doc, given["limits"], (*path, "limits"), "[anthropic.limits.<family>]")
    if not families:
        raise doc.error((*path, "limits"), "must name at least one model family")
    limits: dict[str, dict[str, Rate]] = {}
    for family, family_rates in families.items():
        where = (*path, "limits", family)
        blame(doc, where, partial(validate_name, family, "a model family"), {})
        limits[family] = rates(doc, family_rates, where, WRAPPER_DIMENSIONS)
        if not limits[family]:
            raise doc.error(where, f"must set a rate, e.g. requests = {RATE_EXAMPLE}")
    budget = None
    if "budget" in given:
        budget = setting(doc, given["budget"], (*path, "budget"), Budget, BUDGET_EXAMPLE)
    options: dict[str, object] = {}
    for key in ("name", "estimate", "max_attempts", "lease_s", "acquire_timeout"):
        if key in given:
            options[key] = blame(doc, (*path, key), partial(_WRAP_OPTION[key], given), {})
    config = WrapperConfig(limits, budget, options, doc.line_of(path))
    for family in limits:
        _not_taken(doc, f"{config.name}:{family}", (*path, "limits", family), taken)
    if budget is not None:
        _not_taken(doc, f"{config.name}:budget", (*path, "budget"), taken)
    return config


def _not_taken(doc: Document, name: str, path: KeyPath, taken: Mapping[str, ScopeConfig]) -> None:
    if name in taken:
        line = taken[name].line
        raise doc.error(path, f"the wrapper's scope {name!r} is also a [scope] table, line {line}")


# ``wrap``'s own checks of these options (ratelimit.anthropic.config.WrapConfig.build),
# which this package cannot import without the anthropic SDK; a test keeps them equal.


def _name(given: Table) -> str:
    return validate_name(given["name"], "name")


def _estimate(given: Table) -> Literal["local", "count_tokens"]:
    estimate = given["estimate"]
    if estimate not in ("local", "count_tokens"):
        raise InvalidArgument(f"estimate must be 'local' or 'count_tokens', got {estimate!r}")
    return cast(Literal["local", "count_tokens"], estimate)


def _max_attempts(given: Table) -> int:
    attempts = given["max_attempts"]
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise InvalidArgumentType("max_attempts must be an int")
    if attempts < 1:
        raise InvalidArgument(f"max_attempts must be at least 1, got {attempts}")
    return attempts


def _lease_s(given: Table) -> float:
    return float(positive(given["lease_s"], "lease_s"))


def _acquire_timeout(given: Table) -> float:
    wait = exact(given["acquire_timeout"], "acquire_timeout")
    if wait < 0:
        raise InvalidArgument(f"acquire_timeout must not be negative, got {wait}")
    return float(wait)


_WRAP_OPTION: Final[Mapping[str, Callable[[Table], object]]] = {
    "name": _name,
    "estimate": _estimate,
    "max_attempts": _max_attempts,
    "lease_s": _lease_s,
    "acquire_timeout": _acquire_timeout,
}
