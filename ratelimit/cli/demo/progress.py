"""The demo's live progress line: admissions per second against each rate, as the run goes."""

from __future__ import annotations

import shutil
import time
from collections import deque
from typing import TextIO

from ratelimit import Rate
from ratelimit.cli.demo.workers import Admitted
from ratelimit.cli.demo.workload import DIMENSIONS
from ratelimit.cli.output import per_second

#: The live progress rates are averaged over this many recent seconds, so they
#: show the steady state instead of the opening burst.
PROGRESS_WINDOW_S = 3.0


class Progress:
    """The live progress: one line rewritten in place on a TTY, a line a second otherwise."""

    def __init__(self, out: TextIO, rates: dict[str, Rate], seconds: float) -> None:
        self.out = out
        self.rates = rates
        self.seconds = seconds
        self.tty = out.isatty()
        self.interval = 0.1 if self.tty else 1.0
        self.started: float | None = None
        self.next_draw = 0.0
        self.recent: deque[tuple[float, int, int]] = deque()
        self.calls = 0
        self.drawn = False

    def start(self) -> None:
        """The workers are off: the clock of the live rates starts now."""
        self.started = time.monotonic()
        self.next_draw = self.started + self.interval

    def record(self, event: Admitted) -> None:
        """Count one settled call."""
        now = time.monotonic()
        self.calls += 1
        self.recent.append((now, event.input_tokens, event.output_tokens))

    def tick(self) -> None:
        """Redraw the line, if it is time to."""
        now = time.monotonic()
        if self.started is None or now < self.next_draw:
            return
        self.next_draw = now + self.interval
        self._draw(now)

    def _draw(self, now: float) -> None:
        if self.started is None:
            return
        while self.recent and self.recent[0][0] < now - PROGRESS_WINDOW_S:
            self.recent.popleft()
        span = max(min(now - self.started, PROGRESS_WINDOW_S), 1e-3)
        observed = {
            "requests": len(self.recent) / span,
            "input_tokens": sum(e[1] for e in self.recent) / span,
            "output_tokens": sum(e[2] for e in self.recent) / span,
        }
        labels = {"requests": "req", "input_tokens": "in", "output_tokens": "out"}
        parts = [
            f"{labels[d]} {per_second(observed[d]):>7}/s of {per_second(self.rates[d].rate_per_s)}"
            for d in DIMENSIONS
        ]
        elapsed = f"{now - self.started:5.1f}/{self.seconds:g}s"
        line = f"  {elapsed}  {self.calls:>6,} admitted | " + " | ".join(parts)
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.out.write("\r" + line[:width].ljust(width))
        else:
            self.out.write(line + "\n")
        self.out.flush()
        self.drawn = True

    def finish(self) -> None:
        """End the live line so the tables start on a fresh one."""
        if self.tty and self.drawn:
            self.out.write("\n")
            self.out.flush()
