"""How the ``ratelimit`` commands report: exit statuses, aligned tables, numbers and money.

Every command prints through these, so the demo's tables and the readers'
line up the same way, and money is printed exactly everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

#: Exit statuses of the commands (the demo's verdict, or how a command ended).
EXIT_HELD = 0
EXIT_OVER_ADMITTED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
#: The reader of stdout went away (``ratelimit ledger ... | head``).
EXIT_BROKEN_PIPE = 141


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    footer: Sequence[str] = (),
    *,
    left: Sequence[int] = (0,),
) -> list[str]:
    """Aligned text columns: those in ``left`` left-aligned, the others right-aligned."""
    every = [header, *rows, *([footer] if footer else [])]
    widths = [max(len(row[i]) for row in every) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  " + "  ".join(padded).rstrip()

    rule = "  " + "  ".join("-" * width for width in widths)
    lines = [line(header), rule, *(line(row) for row in rows)]
    if footer:
        lines += [rule, line(footer)]
    return lines


def number(value: float, decimals: int = 0) -> str:
    """``value`` with thousands separators: ``12,345``."""
    return f"{value:,.{decimals}f}"


def per_second(value: float) -> str:
    """A per-second rate: one decimal for small rates (requests), none for tokens."""
    return number(value, 1 if abs(value) < 100 else 0)


def format_usd(amount: Decimal) -> str:
    """Exact US dollars in plain notation, at least two decimals: 0.00, 1.50, 0.000001234."""
    whole, _, fraction = format(amount, "f").partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def align_points(lines: Sequence[list[str]], columns: Iterable[int]) -> None:
    """Pad the money cells of ``columns`` on the right so, right-aligned, their points line up."""
    for column in columns:
        cells = [line[column] for line in lines if line[column]]
        decimals = max((len(cell.partition(".")[2]) for cell in cells), default=0)
        for line in lines:
            if line[column]:
                line[column] += " " * (decimals - len(line[column].partition(".")[2]))


def format_time(instant: datetime) -> str:
    """A UTC time to the millisecond, as the tables print it."""
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def format_threshold(threshold: float) -> str:
    """An alert threshold as a percentage: ``0.8`` is ``80%``."""
    return f"{threshold * 100:.4g}%"


def pairs(mapping: Mapping[str, object]) -> str:
    """``key=value`` pairs for a table cell (values that are not scalars as JSON)."""

    def cell(value: object) -> str:
        if isinstance(value, str | int | float):
            return str(value)
        return json.dumps(value, default=repr, sort_keys=True)

    return " ".join(f"{key}={cell(value)}" for key, value in mapping.items())


def safe_url(url: str) -> str:
    """``url`` without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + host))
