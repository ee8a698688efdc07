#!/usr/bin/env python3
"""The SDK wrapper under load: many processes against one provider limit, with and without it.

    python benchmarks/bench_anthropic.py [--quick] [--seconds S] [--processes N]
                                         [--redis-url URL] [--engine redis|valkey]
                                         [--json PATH]

A local fake of the Messages API (``tests/fake_anthropic.py``) enforces per-second
limits (``minute_s=1``: its "per minute" numbers are per second) on requests, input
tokens and output tokens, as token buckets whose burst is one second's worth. N worker
processes (spawned) send requests with prompts of random length for S seconds, in three
runs:

* **plain**: the bare ``anthropic.Anthropic`` client, with its default retries (it
  sleeps out each 429's ``retry-after``, then tries again);
* **wrapped**: the same client through ``ratelimit.anthropic.wrap`` with the fake's own
  limits and the default local estimate of input tokens (which errs high), on a Redis
  server shared by every worker: an embedded one (``ratelimit.server.EmbeddedServer``),
  or ``--redis-url`` (only keys of ``bench-<id>`` quotas are touched, and deleted at
  the end);
* **wrapped, exact**: the same with ``estimate="count_tokens"``, which reserves the
  exact input count (one more, free, API call per request).

Each run gets a fresh fake server. Before it starts, every worker sends one request to a
separate, unlimited fake, so that the SDK's first-call setup (lazy imports, first
parse) is not part of the run. Reported per run, from the fake's own counters and its
log of admitted requests: HTTP requests received, 429 answers, requests admitted,
calls that failed at the client, and for each dimension the share of the limit used:
what was admitted during the run divided by what the bucket could give in that time,
``burst + rate x elapsed``. The binding dimension is the one closest to its limit.

``--quick`` runs 3 seconds each (CI); ``--json`` saves the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any, Literal

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from fake_anthropic import FakeAnthropic  # noqa: E402

from ratelimit import Rate  # noqa: E402
from ratelimit.server import EmbeddedServer, Engine  # noqa: E402

Kind = Literal["plain", "wrapped", "wrapped_exact"]
KINDS: tuple[Kind, ...] = ("plain", "wrapped", "wrapped_exact")
TITLES: dict[Kind, str] = {
    "plain": "plain SDK",
    "wrapped": "wrapped",
    "wrapped_exact": "wrapped, exact",
}
DIMENSIONS = ("requests", "input_tokens", "output_tokens")

#: A model ID the fake answers; no budget is set, so it needs no price.
MODEL = "claude-bench-1"
#: The fake writes 8 to 64 tokens per answer; max_tokens covers it, so none is cut.
MAX_TOKENS = 64
#: Prompt lengths, in characters of text: about 30 to 400 fake tokens.
PROMPT_CHARS = (100, 1600)
_WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota")


#: Seconds of refill the quota's burst is kept under the provider's. A request reaches
#: the provider a moment after the limiter admits it; if the provider's bucket is full
#: meanwhile, it cannot bank that moment's refill, while the quota's can. With an exact
#: input count there is no over-estimate to absorb that, so the burst does.
HEADROOM_S = 0.05


@dataclass(frozen=True)
class Limits:
    """The fake provider's limits, per second (its bucket holds one second's worth)."""

    requests: int = 60
    input_tokens: int = 6_000
    output_tokens: int = 2_400

    def rates(self) -> dict[str, Rate]:
        """The wrapper's quota: the same rates, with a burst 50 ms of refill under the
        provider's (see :data:`HEADROOM_S`)."""
        return {
            dim: Rate(getattr(self, dim), per=1, burst=getattr(self, dim) * (1 - HEADROOM_S))
            for dim in DIMENSIONS
        }


@dataclass(frozen=True)
class Job:
    """What one worker process is told to do."""

    kind: Kind
    index: int
    base_url: str
    warmup_url: str
    redis_url: str
    quota: str
    limits: Limits


@dataclass
class WorkerReport:
    """What one worker saw from the client side."""

    calls: int = 0
    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)


@dataclass
class RunReport:
    """One run's figures (``share`` maps each dimension, and ``binding``, to a fraction)."""

    kind: Kind
    elapsed_s: float
    requests: int
    rate_limited: int
    accepted: int
    succeeded: int
    failed: int
    accepted_in_window: dict[str, int]
    allowed_in_window: dict[str, float]
    share: dict[str, float]


def prompt(rng: random.Random) -> str:
    length = rng.randint(*PROMPT_CHARS)
    words: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def run_job(job: Job, go: Any, ready: Any, duration_s: float) -> WorkerReport:
    """One run of one worker: build the client, warm it up, wait for go, send."""
    import anthropic

    from ratelimit.anthropic import Estimate, wrap

    def client(url: str, quota: str) -> anthropic.Anthropic:
        plain = anthropic.Anthropic(
            base_url=url, api_key="bench", http_client=anthropic.DefaultHttpxClient(verify=False)
        )
        if job.kind == "plain":
            return plain
        limits: Mapping[str, Mapping[str, Rate]] = {MODEL: job.limits.rates()}
        estimate: Estimate = "count_tokens" if job.kind == "wrapped_exact" else "local"
        return wrap(
            plain, job.redis_url, limits=limits, name=quota, estimate=estimate, acquire_timeout=10.0
        )

    rng = random.Random(job.index)
    # One call against an unlimited fake, under a quota of its own: the first call's
    # setup (Redis scripts, the client's connections) would otherwise delay the first
    # requests of the run between their admission and their arrival.
    with client(job.warmup_url, f"{job.quota}-warmup") as warm:
        warm.messages.create(
            model=MODEL, max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": "warm"}]
        )
    report = WorkerReport()
    with client(job.base_url, job.quota) as api:
        ready.put(job.index)
        go.get()
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            report.calls += 1
            try:
                api.messages.create(
                    model=MODEL,
                    max_tokens=MAX_TOKENS,
                    messages=[{"role": "user", "content": prompt(rng)}],
                )
            except Exception as exc:
                name = type(exc).__name__
                report.failed[name] = report.failed.get(name, 0) + 1
            else:
                report.succeeded += 1
    return report


def worker(jobs: Any, go: Any, ready: Any, results: Any, duration_s: float) -> None:
    """A worker process: runs the jobs it is given until it gets None.

    One process serves every run, so that importing the SDK (seconds of CPU) is paid
    once, before any run.
    """
    import anthropic  # noqa: F401  (imported before the first run, not during it)

    ready.put(-1)
    while (job := jobs.get()) is not None:
        results.put(asdict(run_job(job, go, ready, duration_s)))


class Pool:
    """N worker processes, each with its own job and go queues."""

    def __init__(self, processes: int, duration_s: float, ctx: SpawnContext) -> None:
        self.duration_s = duration_s
        self.ready: multiprocessing.Queue[int] = ctx.Queue()
        self.results: multiprocessing.Queue[dict[str, Any]] = ctx.Queue()
        self.jobs: list[multiprocessing.Queue[Job | None]] = [ctx.Queue() for _ in range(processes)]
        self.go: list[multiprocessing.Queue[bool]] = [ctx.Queue() for _ in range(processes)]
        self.procs = [
            ctx.Process(
                target=worker,
                args=(self.jobs[i], self.go[i], self.ready, self.results, duration_s),
                daemon=True,
            )
            for i in range(processes)
        ]
        for proc in self.procs:
            proc.start()
        self._await_ready()

    def _await_ready(self) -> None:
        for _ in self.procs:
            self.ready.get(timeout=300)

    def run(self, jobs: list[Job]) -> tuple[float, list[dict[str, Any]]]:
        """Hand out one job each; start them together; their reports and the start time."""
        for queue_, job in zip(self.jobs, jobs, strict=True):
            queue_.put(job)
        self._await_ready()  # every worker has built and warmed up its client
        # The fake's clock is time.monotonic(), which all processes share on one machine.
        began = time.monotonic()
        for go in self.go:
            go.put(True)
        reports = [self.results.get(timeout=self.duration_s + 120) for _ in self.procs]
        return began, reports

    def close(self) -> None:
        for queue_ in self.jobs:
            queue_.put(None)
        for proc in self.procs:
            proc.join(timeout=30)


def measure(
    kind: Kind,
    pool: Pool,
    *,
    limits: Limits,
    redis_url: str,
    warmup_url: str,
    quota: str,
) -> RunReport:
    """One run against a fresh fake server."""
    duration_s = pool.duration_s
    with FakeAnthropic(
        rpm=limits.requests,
        itpm=limits.input_tokens,
        otpm=limits.output_tokens,
        minute_s=1.0,
    ) as server:
        jobs = [
            Job(kind, i, server.base_url, warmup_url, redis_url, quota, limits)
            for i in range(len(pool.procs))
        ]
        began, reports = pool.run(jobs)
        window_end = began + duration_s
        stats = server.stats()
        log = [entry for entry in server.accepted() if began <= entry.at <= window_end]
    admitted = {
        "requests": len(log),
        "input_tokens": sum(entry.itpm_tokens for entry in log),
        "output_tokens": sum(entry.output_tokens for entry in log),
    }
    # What a full bucket plus its refill could give over the window: the most any
    # client could have got through.
    allowed = {dim: getattr(limits, dim) * (1 + duration_s) for dim in DIMENSIONS}
    share = {dim: admitted[dim] / allowed[dim] for dim in DIMENSIONS}
    share["binding"] = max(share.values())
    failed = sum(sum(r["failed"].values()) for r in reports)
    return RunReport(
        kind=kind,
        elapsed_s=duration_s,
        requests=stats.requests,
        rate_limited=stats.rate_limited,
        accepted=stats.accepted,
        succeeded=sum(r["succeeded"] for r in reports),
        failed=failed,
        accepted_in_window=admitted,
        allowed_in_window=allowed,
        share=share,
    )


@contextmanager
def redis_server(url: str | None, engine: Engine | None) -> Iterator[tuple[str, str]]:
    """A Redis URL and a description of the server behind it."""
    if url is not None:
        yield url, f"given server {url}"
        return
    with EmbeddedServer(engine) as server:
        yield server.url, f"embedded {server.engine}"


def cleanup(url: str, prefix: str) -> None:
    """Delete every key of the benchmark's quotas (their names, in every key's hash tag,
    start with ``prefix``)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{{{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def print_report(
    limits: Limits, processes: int, duration_s: float, server: str, runs: Mapping[Kind, RunReport]
) -> None:
    order = [runs[kind] for kind in KINDS]
    print("llm-quota-guard Anthropic wrapper benchmark")
    print(
        f"  fake API limits: {limits.requests} requests/s, {limits.input_tokens} input tokens/s, "
        f"{limits.output_tokens} output tokens/s (burst: one second's worth)"
    )
    print(f"  {processes} worker processes, {duration_s:g} s per run, Redis: {server}")
    print(f"  python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print()
    rows: list[tuple[str, list[str]]] = [
        ("HTTP requests received", [str(run.requests) for run in order]),
        ("429 responses", [str(run.rate_limited) for run in order]),
        ("requests admitted", [str(run.accepted) for run in order]),
        ("calls that succeeded", [str(run.succeeded) for run in order]),
        ("calls that failed", [str(run.failed) for run in order]),
        ("share of the limit used:", ["" for _ in order]),
    ]
    for dim in (*DIMENSIONS, "binding"):
        rows.append((f"  {dim.replace('_', ' ')}", [percent(run.share[dim]) for run in order]))
    print(f"  {'':<28}" + "".join(f"{TITLES[kind]:>16}" for kind in KINDS))
    for label, cells in rows:
        print(f"  {label:<28}" + "".join(f"{cell:>16}" for cell in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s per run (CI)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per run (10)")
    parser.add_argument("--processes", type=int, default=8, help="worker processes (8)")
    parser.add_argument("--redis-url", default=None, help="use this server, not an embedded one")
    parser.add_argument("--engine", choices=("redis", "valkey"), default=None)
    parser.add_argument("--json", type=Path, default=None, help="save the figures here")
    args = parser.parse_args(argv)
    duration_s = args.seconds if args.seconds is not None else (3.0 if args.quick else 10.0)
    limits = Limits()
    ctx = multiprocessing.get_context("spawn")
    quota = f"bench-{secrets.token_hex(4)}"
    with redis_server(args.redis_url, args.engine) as (url, server), FakeAnthropic() as warmup:
        pool = Pool(args.processes, duration_s, ctx)
        try:
            runs = {
                kind: measure(
                    kind,
                    pool,
                    limits=limits,
                    redis_url=url,
                    warmup_url=warmup.base_url,
                    quota=f"{quota}-{kind}",
                )
                for kind in KINDS
            }
        finally:
            pool.close()
            cleanup(url, quota)
    print_report(limits, args.processes, duration_s, server, runs)
    if args.json is not None:
        report = {
            "conditions": {
                "limits_per_s": asdict(limits),
                "processes": args.processes,
                "seconds": duration_s,
                "redis": server,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "runs": {kind: asdict(run) for kind, run in runs.items()},
        }
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
