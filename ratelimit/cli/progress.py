"""A progress line on stderr for work that may take more than a second, on a terminal only.

Nothing is written when the stream is not a terminal (a file, a pipe, a CI
log), and nothing before the work has run for :data:`PROGRESS_DELAY_S`, so
quick commands and redirected output stay clean. The line is rewritten in
place and erased at the end, leaving the terminal as it was.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TextIO, TypeVar

#: Nothing is drawn before the work has run this long (seconds).
PROGRESS_DELAY_S = 0.5
#: The line is redrawn at most this often (seconds).
REDRAW_S = 0.1
#: Erase from the cursor to the end of the line (ANSI).
ERASE_LINE = "\x1b[K"

T = TypeVar("T")


class Progress:
    """``label: done of total (percent)``, redrawn as :meth:`advance` counts.

    ``total`` is what the work expects (None when unknown); ``at_most`` says
    it is an upper bound (a windowed read of a stream knows only its length).
    It draws only when ``enabled`` and ``stream`` (default stderr) is a terminal.
    Use it as a context manager so the line is erased however the work ends.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        at_most: bool = False,
        unit: str = "entries",
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self.label = label
        self.total = total
        self.at_most = at_most
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.active = enabled and self.stream.isatty()
        self.done = 0
        self.started = time.monotonic()
        self.next_draw = self.started + PROGRESS_DELAY_S
        self.drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish()

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more done; redraw the line if it is time to."""
        self.done += count
        if not self.active:
            return
        now = time.monotonic()
        if now >= self.next_draw:
            self.next_draw = now + REDRAW_S
            self._draw(now)

    def through(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, counting each as it passes."""
        for item in items:
            yield item
            self.advance()

    def _draw(self, now: float) -> None:
        text = f"{self.label}: {self.done:,}"
        if self.total:
            bound = "at most " if self.at_most else ""
            share = min(self.done / self.total, 1.0)
            text += f" of {bound}{self.total:,} {self.unit} ({share:.0%})"
        else:
            text += f" {self.unit}"
        text += f", {now - self.started:.0f}s"
        width = max(shutil.get_terminal_size().columns - 1, 10)
        self.stream.write("\r" + text[:width] + ERASE_LINE)
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        """Erase the line, if one was drawn."""
        if self.drawn:
            self.stream.write("\r" + ERASE_LINE)
            self.stream.flush()
            self.drawn = False
