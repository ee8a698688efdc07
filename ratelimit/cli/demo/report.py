"""The demo's final report: what each worker did, admitted vs allowed, and the verdict."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TextIO

from ratelimit import Rate
from ratelimit.cli.demo.workers import Mode, WorkerTotals
from ratelimit.cli.demo.workload import DIMENSIONS, check_limit
from ratelimit.cli.output import (
    EXIT_ERROR,
    EXIT_HELD,
    EXIT_INTERRUPTED,
    EXIT_OVER_ADMITTED,
    number,
    per_second,
    table,
)


@dataclass(frozen=True)
class Outcome:
    """How a run of the demo ended: everything the report says."""

    mode: Mode
    rates: dict[str, Rate]
    totals: list[WorkerTotals]
    """Every worker's totals, in worker order (one that never reported is "lost")."""
    show_workers: bool
    """Whether the per-worker table says anything (not when the run never started)."""
    started: bool
    """Whether the workers were let go (and the server's start time read)."""
    elapsed_s: float | None
    """Server time from before the first call to after the last; None if not measured."""
    interrupted: bool
    end_error: str | None
    """Why the end of the interval could not be measured, if it could not."""


def report(outcome: Outcome, out: TextIO) -> int:
    """Print the tables and the verdict; returns the exit code."""
    admitted, errors, cancelled = _worker_table(outcome, out)
    if errors or outcome.end_error:
        out.write("\nErrors\n")
        for message, count in Counter(errors).most_common():
            out.write(f"  {count} worker{'s' if count > 1 else ''}: {message}\n")
        if outcome.end_error:
            out.write(f"  {outcome.end_error}\n")
    over: list[str] | None = None
    if outcome.elapsed_s is not None:
        over = _global_table(admitted, outcome.rates, outcome.elapsed_s, out)
    out.write("\n")
    if over:
        out.write(f"FAIL  over-admitted: {'; '.join(over)}\n")
    elif errors:
        how_many = f"{len(errors)} of {len(outcome.totals)} workers failed"
        checked = (
            "; the limit was not checked"
            if over is None
            else "; what was admitted stayed within the limit"
        )
        out.write(f"ERROR  {how_many}{checked}\n")
    elif over is None:
        when = "before the run started" if not outcome.started else "before the end"
        out.write(f"STOPPED  {when}: the limit was not checked\n")
    else:
        out.write("PASS  the limit held: admitted <= allowed in every dimension\n")
    if outcome.interrupted:
        out.write(f"(interrupted: {cancelled} in-flight permit(s) cancelled)\n")
    out.flush()
    if over:
        return EXIT_OVER_ADMITTED
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_ERROR if errors or over is None else EXIT_HELD


def _worker_table(outcome: Outcome, out: TextIO) -> tuple[dict[str, int], list[str], int]:
    """Print what each worker did (if the outcome shows workers).

    Returns the global admitted counts, the workers' errors and the number
    of permits cancelled.
    """
    every = outcome.totals
    acquire = outcome.mode == "acquire"
    header = ["worker", "calls", "input tokens", "output tokens"]
    header += ["booked wait", "timed out"] if acquire else ["denied"]
    header += ["cancelled", "status"]
    rows: list[list[str]] = []
    errors: list[str] = []
    for totals in every:
        status = "ok"
        if totals.error:
            status = "error"
            errors.append(totals.error)
        elif totals.interrupted:
            status = "interrupted"
        row = [str(totals.worker), number(totals.calls), number(totals.input_tokens)]
        row.append(number(totals.output_tokens))
        if acquire:
            row.append(f"{totals.waited_s:.1f}s")
        rows.append([*row, number(totals.refused), number(totals.cancelled), status])
    admitted = {
        "requests": sum(t.calls for t in every),
        "input_tokens": sum(t.input_tokens for t in every),
        "output_tokens": sum(t.output_tokens for t in every),
    }
    footer = ["all", *(number(admitted[d]) for d in DIMENSIONS)]
    if acquire:
        footer.append(f"{sum(t.waited_s for t in every):.1f}s")
    footer += [number(sum(t.refused for t in every)), number(sum(t.cancelled for t in every)), ""]
    if outcome.show_workers:
        out.write("\nPer worker (calls admitted and settled)\n")
        lines = table(header, rows, footer, left=(len(header) - 1,))
        out.write("\n".join(lines) + "\n")
    return admitted, errors, sum(t.cancelled for t in every)


def _global_table(
    admitted: dict[str, int], rates: dict[str, Rate], elapsed: float, out: TextIO
) -> list[str]:
    """Print admitted vs allowed per dimension; returns the over-admitted ones."""
    checks = check_limit(admitted, rates, elapsed)
    rows = [
        [
            c.dimension,
            number(c.admitted),
            # Admitted counts are integers: flooring the bound loses nothing.
            number(math.floor(c.allowed)),
            f"{c.admitted / c.allowed:.1%}",
            per_second(c.admitted / elapsed),
            per_second(c.rate.rate_per_s),
        ]
        for c in checks
    ]
    header = ["dimension", "admitted", "allowed", "used", "observed/s", "limit/s"]
    out.write(f"\nGlobal, over {elapsed:.3f} s of server time\n")
    out.write("\n".join(table(header, rows)) + "\n")
    out.write(
        "  allowed = burst + rate x elapsed, elapsed from the server's TIME before the\n"
        "  first call to after the last; observed/s may top limit/s by burst/elapsed.\n"
    )
    return [f"{c.dimension} {c.admitted:,} > {c.allowed:,.1f}" for c in checks if not c.held]
