"""Where the Lua scripts are, and their source as sent to Redis.

The scripts live in the repository's top-level ``lua/`` folder. A built wheel
carries them as ``ratelimit/lua/`` (see ``pyproject.toml``); an editable
install or a source checkout imports ``ratelimit`` from the repository, where
they sit beside the package.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

ScriptName = Literal["acquire", "settle", "state", "observe", "record"]
SCRIPT_NAMES: tuple[ScriptName, ...] = ("acquire", "settle", "state", "observe", "record")

_PACKAGE = Path(__file__).resolve().parent

# Prepended, in this order, to every script: rate buckets, then scopes,
# budgets, permits, the ledger and alerts.
_HELPERS = ("bucket", "quota")


def lua_dir() -> Path:
    """The folder the scripts are loaded from."""
    for candidate in (_PACKAGE / "lua", _PACKAGE.parent / "lua"):
        if (candidate / "bucket.lua").is_file():
            return candidate
    raise FileNotFoundError(f"the Lua scripts are neither in {_PACKAGE / 'lua'} nor beside it")


@cache
def source(name: ScriptName) -> str:
    """A script's full source: the shared helpers, then the operation itself."""
    folder = lua_dir()
    parts = [*_HELPERS, name]
    return "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in parts)
