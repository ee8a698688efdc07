"""The ``--config`` option of the ``ratelimit`` command, and what every command reads from it.

The option (default: the file ``$RATELIMIT_CONFIG`` names) is given before the
command: ``ratelimit --config ratelimit.toml ledger team-b``. A command that
can use the configuration calls :func:`loaded_config` (None when no file is
named) or :func:`scope_keys`, which finds a configured scope's slot so that
``--slot`` need not repeat it.
"""

from __future__ import annotations

import argparse
import os

from ratelimit.config_file import CONFIG_ENV, Config, load_config
from ratelimit.core.keys import ScopeKeys
from ratelimit.core.scope import ScopeSpec


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` to the top-level parser."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"the deployment's configuration file, ratelimit.toml (default: ${CONFIG_ENV}); "
        "commands take scopes' slots and configured limits from it",
    )


def loaded_config(args: argparse.Namespace) -> Config | None:
    """The file ``--config`` or ``$RATELIMIT_CONFIG`` names, loaded; None when neither does.

    An error in the file is a :class:`~ratelimit.errors.ConfigError` naming its
    line and key.
    """
    path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or None
    return None if path is None else load_config(path)


def scope_keys(args: argparse.Namespace, name: str, slot: str | None = None) -> ScopeKeys:
    """The keys of scope ``name``: in ``slot`` when given, else where the configuration puts it.

    A scope the configuration does not name is in its own slot (its name).
    """
    if slot is not None:
        return ScopeKeys(name, slot)
    config = loaded_config(args)
    if config is not None and name in config.scopes:
        return config.scopes[name].keys
    return ScopeKeys(name, name)


def configured_scopes(args: argparse.Namespace) -> list[ScopeSpec]:
    """The scopes the configuration file names (none without a file), for the
    readers of a deployment to show their configured limits."""
    config = loaded_config(args)
    return [] if config is None else [scope.spec for scope in config.scopes.values()]
