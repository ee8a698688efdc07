"""What each operation costs inside Redis, in instructions counted by callgrind.

Wall-clock figures on a shared machine move by a quarter from one minute to the
next, and in-server microseconds with them; the instructions a server runs for
a call do not. This script starts its own server under valgrind's callgrind,
calls each operation through the real limiter (so with the arguments the
client really sends), and prints instructions per call, less those of a PING
(what the event loop costs any request), and the budgeted cycle's over the
rate-only one's. Use it to see what a change to the scripts saves before the
noisy ``bench_peers.py`` can tell.

Needs valgrind (``apt-get install valgrind``). Each figure is the mean over
``--calls`` calls after a warm-up; budgeted permits stay below 128 in flight,
as in real use, so Redis keeps its small encodings.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from common import (
    COSTS_3,
    ONE_DIM,
    THREE_DIM,
    UNLIMITED,
    finish,
    positive,
    print_conditions,
    quota,
    server_version,
    table,
)

from ratelimit import Budget, Limiter
from ratelimit.server import find_binary

#: Budgeted permits a batch leaves in flight at most (Redis converts a hash or
#: sorted set past 128 entries to a costlier encoding; real permits settle).
IN_FLIGHT = 100
START_BOUND_S = 120.0
DUMP_BOUND_S = 60.0


class Callgrind:
    """A server under callgrind, and its instruction counter."""

    def __init__(self, process: subprocess.Popen[bytes], dumps: Path, url: str) -> None:
        self.process, self.dumps, self.url = process, dumps, url

    def zero(self) -> None:
        self._control("--zero")

    def count(self) -> int:
        """Instructions run since the last ``zero``."""
        before = set(self.dumps.iterdir())
        self._control("--dump")
        deadline = time.monotonic() + DUMP_BOUND_S
        while time.monotonic() < deadline:
            for path in set(self.dumps.iterdir()) - before:
                total = _total(path)
                if total is not None:
                    return total
            time.sleep(0.05)
        raise TimeoutError(f"callgrind wrote no dump within {DUMP_BOUND_S:.0f} s")

    def _control(self, flag: str) -> None:
        subprocess.run(
            ["callgrind_control", flag, str(self.process.pid)],
            capture_output=True,
            check=True,
            timeout=DUMP_BOUND_S,
        )


def _total(path: Path) -> int | None:
    """The instruction total of a finished dump file, or None while it is written."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return None


@contextmanager
def callgrind_server(engine: str | None) -> Iterator[Callgrind]:
    """A private server on a free port, run by callgrind from its first instruction."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install valgrind")
    _, binary = find_binary(engine)  # type: ignore[arg-type]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="callgrind-") as folder:
        dumps = Path(folder)
        process = subprocess.Popen(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={dumps}/cg.%p"),
                *(binary, "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
                # serverCron's own work (expiring keys among it) falls in whichever
                # call runs when it does: once a second, not ten times.
                *("--hz", "1", "--dynamic-hz", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            _wait_ready(url, process)
            yield Callgrind(process, dumps, url)
        finally:
            process.terminate()
            process.wait(timeout=DUMP_BOUND_S)


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + START_BOUND_S
    try:
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server under callgrind did not start") from None
                time.sleep(0.1)
    finally:
        client.close()


def per_call(server: Callgrind, run: Callable[[], object], calls: int, ping_ir: float) -> float:
    """Instructions per call of ``run`` (one request each), less a PING's."""
    server.zero()
    for _ in range(calls):
        run()
    return server.count() / calls - ping_ir


def measure(server: Callgrind, calls: int) -> dict[str, Any]:
    client = redis.Redis.from_url(server.url)
    narrow = quota(client, "cost-1", ONE_DIM)
    wide = quota(client, "cost-3", THREE_DIM)
    budgeted = Limiter(client, "cost-b", requests=UNLIMITED, usd=Budget(1_000_000, per="day"))
    reserve: dict[str, Any] = {"usd": "0.001", "model": "claude-sonnet-4-6"}
    warm_up = (
        narrow.try_acquire,
        lambda: wide.try_acquire(**COSTS_3),
        lambda: narrow.try_acquire().settle(requests=1),  # type: ignore[union-attr]
        lambda: budgeted.try_acquire(**reserve).settle(usd="0.0007"),  # type: ignore[union-attr]
    )
    for run in warm_up:
        for _ in range(50):
            run()
    ping_ir = per_call(server, client.ping, calls, 0.0)
    one = per_call(server, narrow.try_acquire, calls, ping_ir)
    three = per_call(server, lambda: wide.try_acquire(**COSTS_3), calls, ping_ir)
    permits = [narrow.try_acquire() for _ in range(calls)]
    rate_settle = per_call(server, lambda: permits.pop().settle(requests=1), calls, ping_ir)  # type: ignore[union-attr]
    batch = min(calls, IN_FLIGHT)
    budget_acquire = budget_settle = 0.0
    held: list[Any] = []  # each batch's permits, settled by the next figure
    for _ in range(0, calls, batch):
        budget_acquire += per_call(
            server, lambda: held.append(budgeted.try_acquire(**reserve)), batch, ping_ir
        )
        budget_settle += per_call(server, lambda: held.pop().settle(usd="0.0007"), batch, ping_ir)
    rounds = len(range(0, calls, batch))
    budget_acquire, budget_settle = budget_acquire / rounds, budget_settle / rounds
    client.close()
    rate_cycle = one + rate_settle
    budget_cycle = budget_acquire + budget_settle
    return {
        "ping": ping_ir,
        "try_acquire_1_dim": one,
        "try_acquire_3_dims": three,
        "settle_1_dim": rate_settle,
        "rate_cycle": rate_cycle,
        "budgeted_acquire": budget_acquire,
        "budgeted_settle": budget_settle,
        "budgeted_cycle": budget_cycle,
        "budgeted_over_rate_cycle": budget_cycle / rate_cycle,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--engine", choices=["redis", "valkey"], help="the server's engine")
    parser.add_argument("--quick", action="store_true", help="20 calls a figure (CI)")
    parser.add_argument("--calls", type=positive(int), help="calls per figure (200; quick 20)")
    parser.add_argument("--json", type=Path, help="also save the results to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import datetime
    import platform

    args = parse_args(argv)
    calls = int(args.calls or (20 if args.quick else 200))
    began = time.monotonic()
    with callgrind_server(args.engine) as server:
        client = redis.Redis.from_url(server.url)
        conditions = {
            "server": f"{server_version(client)} under valgrind --tool=callgrind",
            "client": f"redis-py {redis.__version__}, {platform.python_implementation()} "
            f"{platform.python_version()}",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "mode": f"{calls} calls a figure, after 50 of each to warm up",
        }
        client.close()
        print_conditions("llm-quota-guard script cost (instructions in the server)", conditions)
        figures = measure(server, calls)
    labels = [
        ("try_acquire_1_dim", "try_acquire, 1 dimension (acquire_rates)"),
        ("try_acquire_3_dims", "try_acquire, 3 dimensions (acquire_rates)"),
        ("settle_1_dim", "settle, 1 dimension (settle_rates)"),
        ("rate_cycle", "rate-only try_acquire + settle"),
        ("budgeted_acquire", "budgeted try_acquire (acquire)"),
        ("budgeted_settle", "budgeted settle with its ledger entry (settle)"),
        ("budgeted_cycle", "budgeted try_acquire + settle"),
    ]
    rows = [[label, f"{figures[key]:,.0f}"] for key, label in labels]
    print(table(["call", "instructions"], rows))
    print(f"  (a PING: {figures['ping']:,.0f}, taken off each figure)")
    print()
    ratio = figures["budgeted_over_rate_cycle"]
    print(f"budgeted cycle / rate-only cycle, in the server: x{ratio:.2f}")
    finish(began, {"conditions": conditions, "figures": figures}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
