"""One run of ``ratelimit demo``: start the server and the workers, follow them, report.

The parent process never books anything itself: it spawns the workers,
lets them go at once, reads their messages (drawing the live progress),
reads the server's clock before the first call and after the last, and
hands what happened to :mod:`~ratelimit.cli.demo.report`. Ctrl-C stops the
workers, which cancel their in-flight permits, before the embedded server
stops.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Literal, TextIO

import redis

from ratelimit import LimiterError, Rate
from ratelimit.backend import SyncClient, connect
from ratelimit.cli.demo.progress import PROGRESS_WINDOW_S, Progress
from ratelimit.cli.demo.report import Outcome, report
from ratelimit.cli.demo.workers import (
    Admitted,
    Done,
    Message,
    Ready,
    WorkerConfig,
    WorkerTotals,
    sigint_blocked,
    worker_main,
)
from ratelimit.cli.demo.workload import DIMENSIONS, CallShape, demo_limiter, demo_rates
from ratelimit.cli.output import EXIT_ERROR, number, safe_url
from ratelimit.errors import ServerNotFound
from ratelimit.server import EmbeddedServer

#: How long workers get to start (spawned interpreters import the package).
STARTUP_TIMEOUT_S = 60.0
#: After Ctrl-C, how long workers get to cancel their permits before being killed.
SHUTDOWN_GRACE_S = 10.0
#: A worker that died without reporting is declared lost after this long
#: (its last messages may still be in the queue's pipe).
LOST_AFTER_S = 1.0


def run_demo(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``ratelimit demo``: returns the exit code."""
    out = out or sys.stdout
    shape = CallShape.for_rates(args.rpm, args.itpm, args.otpm)
    rates = demo_rates(args.rpm, args.itpm, args.otpm, args.burst_seconds, shape)
    out.write("ratelimit demo\n")

    def amounts(of: dict[str, float]) -> str:
        return ", ".join(f"{number(of[d])} {d.replace('_', ' ')}" for d in DIMENSIONS)

    header = (
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
            out.write(f"  server   {version} at {safe_url(args.redis_url)}\n{header}")
            out.flush()
            return _Demo(args, args.redis_url, out, rates, shape).run()
        with _embedded_server(out) as server:
            out.write(header)
            out.flush()
            return _Demo(args, server.url, out, rates, shape).run()
    except ServerNotFound as exc:
        print(f"ratelimit demo: {exc}", file=sys.stderr)
    except redis.exceptions.RedisError as exc:
        print(f"ratelimit demo: cannot use the Redis server: {exc}", file=sys.stderr)
    except LimiterError as exc:
        print(f"ratelimit demo: {exc}", file=sys.stderr)
    return EXIT_ERROR


def _server_version(client: SyncClient) -> str:
    info = client.info("server")
    # Valkey also reports a redis_version (of the Redis it is compatible with).
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    return f"redis {info['redis_version']}"


def _server_time_us(client: SyncClient) -> int:
    """The server's clock in microseconds: the only clock the limit is judged by."""
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


@contextmanager
def _embedded_server(out: TextIO) -> Iterator[EmbeddedServer]:
    """A private server for this run, stopped at the end however the run ends."""
    server = EmbeddedServer()
    try:
        # The server never sees the terminal's Ctrl-C (it keeps SIGINT
        # blocked); stop() ends it with SIGTERM once the workers are done.
        with sigint_blocked():
            server.start()
        out.write(
            f"  server   {server.version()} on 127.0.0.1:{server.port}, embedded "
            f"({server.binary}), stopped at the end\n"
        )
        yield server
    finally:
        server.stop()


@dataclass
class _WorkerState:
    """The parent's view of one worker process, from its messages."""

    index: int
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

    def counted(self, error: str) -> WorkerTotals:
        """Totals for a worker that did not report its own: what its messages said."""
        return WorkerTotals(
            self.index, self.calls, self.input_tokens, self.output_tokens, error=error
        )


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
            # Validates the scope as the workers will build it, before spawning them.
            demo_limiter(client, self.args.name, self.rates)
            return self._run(client)
        finally:
            client.close()

    def _run(self, client: SyncClient) -> int:
        ctx = multiprocessing.get_context("spawn")
        messages: Queue[Message] = ctx.Queue()
        go = ctx.Event()
        stop = ctx.Event()
        progress = Progress(self.out, self.rates, self.args.seconds)
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
        return report(self._outcome(start_us, end_us), self.out)

    def _start(
        self,
        client: SyncClient,
        messages: Queue[Message],
        progress: Progress,
        go: Event,
        stop: Event,
    ) -> int | None:
        """Start the workers and, once all are ready, let them go: the server time then."""
        began = time.monotonic()
        self.out.write(f"  starting {len(self.workers)} worker processes...")
        self.out.flush()
        self.starting_line_open = True
        # Each worker unblocks SIGINT once its own handler is in place.
        with sigint_blocked():
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
                target=worker_main,
                args=(config, messages, go, stop),
                name=f"ratelimit-demo-{index}",
                daemon=True,  # never outlive the demo, even if it dies
            )
            self.workers.append(_WorkerState(index, process))

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
        progress: Progress,
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
                for worker in self.workers:
                    if not worker.finished:
                        worker.process.kill()
                        worker.totals = worker.counted(f"{why}; killed")
                return
            try:
                message = messages.get(timeout=0.05)
            except queue.Empty:
                self._notice_lost_workers()
            else:
                self._handle(message, progress)
            progress.tick()

    def _handle(self, message: Message, progress: Progress) -> None:
        index = message.totals.worker if isinstance(message, Done) else message.worker
        worker = self.workers[index - 1]
        if isinstance(message, Ready):
            worker.ready = True
        elif isinstance(message, Admitted):
            worker.calls += 1
            worker.input_tokens += message.input_tokens
            worker.output_tokens += message.output_tokens
            progress.record(message)
        else:
            worker.totals = message.totals

    def _notice_lost_workers(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.finished or worker.process.is_alive():
                continue
            if worker.dead_since is None:
                worker.dead_since = now
            elif now - worker.dead_since > LOST_AFTER_S:
                code = worker.process.exitcode
                worker.totals = worker.counted(f"exited with code {code} without reporting")

    def _outcome(self, start_us: int | None, end_us: int | None) -> Outcome:
        """What the report needs from this run."""
        # Interrupted while starting, the table would be all zeros: shown only
        # when a worker reported an error of its own.
        failed = any(w.totals is not None and w.totals.error for w in self.workers)
        elapsed_s = None
        if start_us is not None and end_us is not None:
            elapsed_s = (end_us - start_us) / 1_000_000
        return Outcome(
            mode=self.args.mode,
            rates=self.rates,
            totals=[w.totals or w.counted("lost") for w in self.workers],
            show_workers=start_us is not None or failed,
            started=start_us is not None,
            elapsed_s=elapsed_s,
            interrupted=self.interrupted,
            end_error=self.end_error,
        )
