"""The demo's worker processes: each books, "calls the API" and settles until the time is up.

A worker runs in its own spawned interpreter with its own :class:`~ratelimit.Limiter`
of the demo scope, and tells the parent what it did through a queue:
:class:`Ready` once connected, :class:`Admitted` per settled call, and
:class:`Done` with its totals, however it stopped.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from types import FrameType
from typing import Literal

import redis

from ratelimit import AcquireTimeout, LimiterError, Rate
from ratelimit.cli.demo.workload import CALL_LATENCY_S, CallShape, demo_limiter

#: How a worker books: ``acquire`` waits its booked turn, ``try`` backs off when denied.
Mode = Literal["try", "acquire"]

#: In try mode, how long a denied worker waits before asking again (uniform).
RETRY_BACKOFF_S = (0.02, 0.1)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs (pickled to the spawned child)."""

    index: int
    url: str
    name: str
    rates: dict[str, Rate]
    mode: Mode
    seconds: float
    shape: CallShape


@dataclass
class WorkerTotals:
    """What one worker did; it sends this back when it stops."""

    worker: int
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    waited_s: float = 0.0
    """Seconds the limiter booked this worker to wait (acquire mode)."""
    refused: int = 0
    """Acquire timeouts (acquire mode) or denied try_acquire calls (try mode)."""
    cancelled: int = 0
    """Permits given back because the worker was interrupted mid-call."""
    interrupted: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Ready:
    """A worker is connected and waits for the start signal."""

    worker: int


@dataclass(frozen=True)
class Admitted:
    """A worker made (and settled) one call."""

    worker: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Done:
    """A worker stopped; its last message."""

    totals: WorkerTotals


Message = Ready | Admitted | Done


class _Interrupts:
    """SIGINT handling in a worker: stop at the next safe point, or at once while waiting.

    Ctrl-C in a terminal reaches every process of the group, and the parent
    forwards it too, so a worker may get it twice: only the first counts.
    While the worker merely waits (for its turn, or for the simulated API)
    the signal raises KeyboardInterrupt, so a long booked wait ends at once
    (``Limiter.acquire`` then returns its booking) and an in-flight call is
    cancelled. Anywhere else, above all between a settle and its bookkeeping,
    it only sets a flag that the loop checks, so the counts stay exact.
    """

    def __init__(self, stop: Event) -> None:
        self.stop = stop
        self.requested = False
        self._waiting = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            return
        self.requested = True
        if self._waiting:
            raise KeyboardInterrupt

    @property
    def stopping(self) -> bool:
        return self.requested or self.stop.is_set()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """A block that Ctrl-C may cut short with KeyboardInterrupt."""
        if self.stopping:
            raise KeyboardInterrupt
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False


def run_worker(
    config: WorkerConfig, messages: Queue[Message], go: Event, interrupts: _Interrupts
) -> WorkerTotals:
    """One worker: book, "call the API", settle, until the time is up; returns its totals.

    Interrupted or failing, it still returns what it did so far, with the
    reason, so the parent's table accounts for every settled call.
    """
    totals = WorkerTotals(config.index)
    rng = random.Random()
    try:
        limiter = demo_limiter(config.url, config.name, config.rates)
        # Fail here, before the start line, rather than in the middle of the run.
        limiter.client.ping()
        messages.put(Ready(config.index))
        with interrupts.waiting():
            go.wait()
        # The client clock only paces the loop; the limit is judged on server time.
        deadline = time.monotonic() + config.seconds
        while not interrupts.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            input_tokens, max_output = config.shape.draw(rng)
            if config.mode == "acquire":
                try:
                    with interrupts.waiting():
                        permit = limiter.acquire(
                            timeout=remaining, input_tokens=input_tokens, output_tokens=max_output
                        )
                except AcquireTimeout:
                    # The line is booked past the end of the demo: nothing more to do.
                    totals.refused += 1
                    break
                totals.waited_s += permit.wait_s
            else:
                maybe = limiter.try_acquire(input_tokens=input_tokens, output_tokens=max_output)
                if maybe is None:
                    totals.refused += 1
                    with interrupts.waiting():
                        time.sleep(min(remaining, rng.uniform(*RETRY_BACKOFF_S)))
                    continue
                permit = maybe
            try:
                with interrupts.waiting():
                    time.sleep(rng.uniform(*CALL_LATENCY_S))  # the "API call"
            except KeyboardInterrupt:
                # The call is taken not to have gone out: give everything back.
                permit.cancel()
                totals.cancelled += 1
                raise
            output_tokens = config.shape.actual_output(rng, max_output)
            permit.settle(input_tokens=input_tokens, output_tokens=output_tokens)
            totals.calls += 1
            totals.input_tokens += input_tokens
            totals.output_tokens += output_tokens
            messages.put(Admitted(config.index, input_tokens, output_tokens))
    except KeyboardInterrupt:
        totals.interrupted = True
    except (LimiterError, redis.exceptions.RedisError, OSError) as exc:
        # Reported to the parent, which prints it: a child's traceback would
        # be interleaved with the progress line.
        totals.error = f"{type(exc).__name__}: {exc}"
    return totals


def worker_main(config: WorkerConfig, messages: Queue[Message], go: Event, stop: Event) -> None:
    """Process target: run one worker and always send its totals back."""
    interrupts = _Interrupts(stop)
    interrupts.install()
    # Started with SIGINT blocked (see sigint_blocked): a Ctrl-C that came
    # while this interpreter was starting is delivered now, to the handler.
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        totals = run_worker(config, messages, go, interrupts)
    except Exception as exc:  # a bug: still report, or the parent waits for nothing
        totals = WorkerTotals(config.index, error=f"{type(exc).__name__}: {exc}")
    # From here on nothing may stop the report from being sent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    messages.put(Done(totals))


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Hold back SIGINT in this block, and in the processes started in it.

    A blocked signal stays blocked across fork and exec. Ctrl-C in a terminal
    signals the whole process group: a worker still importing would die with
    a traceback, and the embedded server would shut down before the workers
    had cancelled their permits. In this process a Ctrl-C is only delayed to
    the end of the block.
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
