"""A deployment's configuration from one file: :func:`load_config` and :class:`Config`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from ratelimit.config_file import schema
from ratelimit.config_file.document import Document
from ratelimit.config_file.schema import ScopeConfig, WrapperConfig
from ratelimit.core.base import AlertCallback
from ratelimit.errors import InvalidArgument
from ratelimit.limiter import Limiter, SyncClient
from ratelimit.pricing import Pricing

if TYPE_CHECKING:
    import ratelimit.asyncio
    from ratelimit.anthropic.config import WrapOptions

#: The environment variable that names the configuration file by default.
CONFIG_ENV: Final = "RATELIMIT_CONFIG"

_TOP_KEYS: Final = ("scope", "anthropic")


@dataclass(frozen=True)
class Config:
    """The scopes and wrapper options of one configuration file, checked.

    ``scopes`` holds every scope the file configures: each ``[scope.<name>]``,
    and the scopes ``ratelimit.anthropic.wrap`` builds from ``[anthropic]``
    (``<name>:<family>`` per family, ``<name>:budget``), so that a reader of
    the deployment can name them all.
    """

    file: str
    scopes: Mapping[str, ScopeConfig]
    anthropic: WrapperConfig | None

    @property
    def limiters(self) -> tuple[str, ...]:
        """The name of every scope :meth:`limiter` can build, in the file's order."""
        return tuple(self.scopes)

    def scope(self, name: str) -> ScopeConfig:
        """The configuration of scope ``name``; an InvalidArgument if the file has none."""
        found = self.scopes.get(name)
        if found is None:
            raise InvalidArgument(
                f"{self.file} configures no scope {name!r}; "
                f"it configures {', '.join(map(repr, self.scopes)) or 'none'}"
            )
        return found

    def limiter(
        self,
        name: str,
        client: SyncClient | str,
        *,
        on_alert: AlertCallback | None = None,
        pricing: Pricing | None = None,
    ) -> Limiter:
        """The :class:`~ratelimit.Limiter` of scope ``name`` on ``client`` (a client or URL).

        ``on_alert`` and ``pricing`` are the limiter's own arguments (code,
        not configuration).
        """
        return Limiter(
            client, name, on_alert=on_alert, pricing=pricing, **self.scope(name).limiter_kwargs()
        )

    def async_limiter(
        self,
        name: str,
        client: ratelimit.asyncio.AsyncClient | str,
        *,
        on_alert: AlertCallback | None = None,
        pricing: Pricing | None = None,
    ) -> ratelimit.asyncio.Limiter:
        """The asyncio twin of :meth:`limiter`: a :class:`ratelimit.asyncio.Limiter`."""
        import ratelimit.asyncio

        return ratelimit.asyncio.Limiter(
            client, name, on_alert=on_alert, pricing=pricing, **self.scope(name).limiter_kwargs()
        )

    def wrap_kwargs(self) -> WrapOptions[Any]:
        """The options of ``ratelimit.anthropic.wrap`` from the ``[anthropic]`` table.

        ``wrap(client, redis, **config.wrap_kwargs())``; add the options that
        are code (``cache``, ``policy``, ``on_alert``, ``pricing``) as keywords.
        """
        if self.anthropic is None:
            raise InvalidArgument(f"{self.file} has no [anthropic] table")
        return cast("WrapOptions[Any]", self.anthropic.wrap_kwargs())


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and check the configuration file at ``path`` (default: ``$RATELIMIT_CONFIG``).

    Every error in the file is a :class:`~ratelimit.errors.ConfigError` naming
    the file, the line and the key; no limiter is built from a file that has
    one. Without ``path`` and without the environment variable, an
    :class:`~ratelimit.errors.InvalidArgument`.
    """
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
        if path is None:
            raise InvalidArgument(f"no configuration file: give a path or set ${CONFIG_ENV}")
    doc = Document.read(Path(path))
    for key in doc.tables:
        if key not in _TOP_KEYS:
            raise doc.error((key,), f"unknown key; expected one of {', '.join(_TOP_KEYS)}")
    scope_tables = schema.table(doc, doc.tables.get("scope", {}), ("scope",), "[scope.<name>]")
    scopes = {name: schema.scope(doc, name, value) for name, value in scope_tables.items()}
    wrapper = None
    if "anthropic" in doc.tables:
        wrapper = schema.wrapper(doc, doc.tables["anthropic"], scopes)
        scopes.update(wrapper.scopes())
    return Config(doc.file, scopes, wrapper)
