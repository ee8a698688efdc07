"""Where the Lua scripts are, and their source as sent to Redis.

The scripts live in the repository's top-level ``lua/`` folder: one file per
atomic operation, and the helpers they share under ``lua/lib/``, one file
per concept. Each operation names the helpers it uses on a ``-- lib:`` line
of its header, in order; they are prepended to it when it is loaded. A
built wheel carries the folder as ``ratelimit/lua/`` (see ``pyproject.toml``);
an editable install or a source checkout imports ``ratelimit`` from the
repository, where it sits beside the package.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

from ratelimit.core.calls import SCRIPT_NAMES, ScriptName

__all__ = ["SCRIPT_NAMES", "OperatorScript", "ScriptName", "lua_dir", "source"]

#: Scripts an operator's command runs, not a limiter: ``restore``
#: (``ratelimit restore``, :mod:`ratelimit.postgres.restore`).
OperatorScript = Literal["restore"]

_PACKAGE = Path(__file__).resolve().parent
_LIB_LINE = re.compile(r"^-- lib:(.*)$", re.MULTILINE)


def lua_dir() -> Path:
    """The folder the scripts are loaded from."""
    for candidate in (_PACKAGE / "lua", _PACKAGE.parent / "lua"):
        if (candidate / "lib" / "args.lua").is_file():
            return candidate
    raise FileNotFoundError(f"the Lua scripts are neither in {_PACKAGE / 'lua'} nor beside it")


@cache
def source(name: ScriptName | OperatorScript) -> str:
    """A script's full source: the helpers its ``-- lib:`` line names, then itself."""
    folder = lua_dir()
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    found = _LIB_LINE.search(body)
    libs = found.group(1).split() if found else []
    parts = [(folder / "lib" / f"{lib}.lua").read_text(encoding="utf-8") for lib in libs]
    return "\n".join([*parts, body])
