"""A configuration file as read: its TOML, and the line each key is written on.

``tomllib`` reports the line of a syntax error but keeps no positions in the
tables it returns, so an error found later (a negative rate, an unknown key)
could not say where it is. :class:`Document` scans the text once for table
headers (``[scope.team-a]``) and assignments (``lease_s = 600``, dotted keys
too) and maps every key path to the line that writes it; a key inside an
inline table (``{ amount = 4000, per = 60 }``) is reported on the line of
the key that holds the table.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ratelimit.errors import ConfigError

KeyPath = tuple[str, ...]

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\\n]|\\.)*"'
_LITERAL = r"'[^'\n]*'"
_KEY = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_PATH = rf"{_KEY}(?:[ \t]*\.[ \t]*{_KEY})*"
_HEADER = re.compile(rf"[ \t]*\[\[?[ \t]*({_PATH})[ \t]*\]\]?[ \t]*(?:#.*)?\Z")
_ASSIGNMENT = re.compile(rf"[ \t]*({_PATH})[ \t]*=")
_ONE_KEY = re.compile(_KEY)
_SYNTAX_AT = re.compile(r"\(at line (\d+), column \d+\)")
_BARE_KEY = re.compile(rf"{_BARE}\Z")


def key_text(path: Sequence[str]) -> str:
    """A key path written the way TOML spells it: ``scope."anthropic/sonnet".lease_s``."""
    return ".".join(part if _BARE_KEY.match(part) else _quoted(part) for part in path)


def _quoted(part: str) -> str:
    escaped = part.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'


def _parts(path: str) -> KeyPath:
    """``a."b.c".d`` as ``("a", "b.c", "d")``; quoted keys are unquoted by TOML itself."""
    return tuple(
        tomllib.loads(f"k = {token}")["k"] if token[0] in "\"'" else token
        for token in _ONE_KEY.findall(path)
    )


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(number, text) of each line that may start a key: none inside a multi-line string."""
    inside: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if inside is None:
            yield number, line
        for quotes in re.findall(r'"""|\'\'\'', line):
            if inside is None:
                inside = quotes
            elif quotes == inside:
                inside = None


@dataclass(frozen=True)
class Document:
    """One configuration file: its name for messages, its tables, and where each key is."""

    file: str
    tables: Mapping[str, Any]
    lines: Mapping[KeyPath, int]
    """The first line that writes each key path (a table header counts for its table)."""

    @classmethod
    def read(cls, path: Path) -> Document:
        """Read and parse ``path``; a file that cannot be read or parsed is a ConfigError."""
        file = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read it: {exc}", file=file, line=None, key="") from exc
        lines, context = _scan(text)
        try:
            tables = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            found = _SYNTAX_AT.search(str(exc))
            line = int(found[1]) if found else text.count("\n") + 1
            key = key_text(context.get(line, ()))
            raise ConfigError(f"not valid TOML: {exc}", file=file, line=line, key=key) from exc
        return cls(file, tables, lines)

    def line_of(self, path: KeyPath) -> int:
        """The line of ``path``, or of the nearest table or key that holds it."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return 1

    def error(self, path: KeyPath, problem: str) -> ConfigError:
        """A ConfigError naming this file, the line of ``path``, and ``path``."""
        return ConfigError(problem, file=self.file, line=self.line_of(path), key=key_text(path))


def _scan(text: str) -> tuple[dict[KeyPath, int], dict[int, KeyPath]]:
    """Where each key path is first written, and what each line writes (or the table it is in).

    A header also places the tables above it (``[scope.a.rates]`` defines
    ``scope`` and ``scope.a`` if nothing did before).
    """
    lines: dict[KeyPath, int] = {}
    context: dict[int, KeyPath] = {}
    table: KeyPath = ()
    for number, line in _logical_lines(text):
        header = _HEADER.match(line)
        assignment = None if header else _ASSIGNMENT.match(line)
        if header:
            table = _parts(header[1])
            written = table
        elif assignment:
            written = table + _parts(assignment[1])
        else:
            context[number] = table
            continue
        context[number] = written
        for end in range(1, len(written) + 1):
            lines.setdefault(written[:end], number)
    return lines, context
