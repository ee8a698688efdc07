"""``ratelimit exporter``: serve a deployment's quotas to Prometheus, read at scrape time.

Serves ``/metrics`` over HTTP: every scope's buckets, budget, permits in
flight and daily spend, read from Redis by each scrape
(:mod:`ratelimit.metrics.collector`), and, when ``PROMETHEUS_MULTIPROC_DIR``
(or ``--multiprocess-dir``) names the directory where the workers' client
metrics are written, their sum. It runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType

import redis

from ratelimit.backend import connect
from ratelimit.cli.config_option import configured_scopes
from ratelimit.cli.output import EXIT_ERROR
from ratelimit.metrics import METRICS_EXTRA

#: Prometheus's registered default port for this exporter's kind is taken; this is ours.
DEFAULT_PORT = 9464
#: Only this machine can scrape by default; give --host 0.0.0.0 to serve others.
DEFAULT_HOST = "127.0.0.1"
#: Where prometheus_client's multiprocess mode has the workers write.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_url(host: str, port: int) -> str:
    """The URL of the served page."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def run_exporter(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """``ratelimit exporter``: returns the exit code once ``stop`` is set, or on Ctrl-C/SIGTERM."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        from ratelimit.metrics.collector import DeploymentCollector
    except ImportError:
        print(
            f"ratelimit exporter: needs prometheus_client: pip install '{METRICS_EXTRA}'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        client = connect(args.redis_url)
    except (ValueError, redis.exceptions.RedisError) as exc:
        print(f"ratelimit exporter: {exc}", file=sys.stderr)
        return EXIT_ERROR
    registry = CollectorRegistry(auto_describe=False)
    collector = DeploymentCollector(
        client, configured=configured_scopes(args), spend_days=args.spend_days
    )
    registry.register(collector)
    multiproc = args.multiprocess_dir or os.environ.get(MULTIPROC_ENV)
    if multiproc:
        if not os.path.isdir(multiproc):
            print(f"ratelimit exporter: no directory {multiproc}", file=sys.stderr)
            return EXIT_ERROR
        MultiProcessCollector(registry, path=multiproc)  # type: ignore[no-untyped-call]
    try:
        server, thread = start_http_server(args.port, addr=args.host, registry=registry)
    except OSError as exc:
        print(
            f"ratelimit exporter: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        client.close()
        return EXIT_ERROR
    stop = stop or _stopped_by_sigterm()
    workers = f", and the client metrics in {multiproc}" if multiproc else ""
    print(
        f"ratelimit exporter: serving {metrics_url(args.host, server.server_port)} "
        f"(quotas read from Redis at each scrape{workers}; Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        client.close()
    return 0


def _stopped_by_sigterm() -> threading.Event:
    """An event SIGTERM sets (a container's stop); Ctrl-C interrupts the wait as usual."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
    return stop
