"""Progress on stderr for long exports: drawn on a terminal (a real pty here), never elsewhere."""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from ratelimit import Budget, Limiter
from ratelimit.cli import main, progress
from ratelimit.cli.progress import ERASE_LINE, Progress

ENTRIES = 30


@pytest.fixture
def ledger_of_30(r: redis.Redis) -> str:
    team = Limiter(r, "team", usd=Budget(100))
    for _ in range(ENTRIES):
        team.acquire(usd="0.01").settle(usd="0.01")
    return "team"


@pytest.fixture
def at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draw from the first entry on, and at every one: the export here is quick."""
    monkeypatch.setattr(progress, "PROGRESS_DELAY_S", 0.0)
    monkeypatch.setattr(progress, "REDRAW_S", 0.0)


@contextmanager
def terminal() -> Iterator[tuple[io.TextIOWrapper, list[bytes]]]:
    """A pty: its terminal end as a text stream, and what the other end read from it."""
    controller, tty_fd = os.openpty()
    received: list[bytes] = []

    def drain() -> None:  # the pty's buffer is small: read it while the test writes
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # EIO: the terminal end is closed
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    tty = open(tty_fd, "w", encoding="utf-8")  # noqa: SIM115 - closed below, then drained
    try:
        assert tty.isatty()
        yield tty, received
    finally:
        tty.close()
        reader.join(timeout=10)
        os.close(controller)


def on_terminal(monkeypatch: pytest.MonkeyPatch, argv: list[str], *, stdout: bool = False) -> str:
    """Run ``ratelimit argv`` with stderr (and ``stdout`` too, if asked) on a pty: what it shows."""
    with terminal() as (tty, received):
        monkeypatch.setattr(sys, "stderr", tty)
        if stdout:
            monkeypatch.setattr(sys, "stdout", tty)
        assert main(argv) == 0
    return b"".join(received).decode()


@pytest.mark.usefixtures("at_once")
def test_a_ledger_export_shows_its_progress_on_a_terminal(
    ledger_of_30: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ledger.csv"
    argv = ["ledger", ledger_of_30, "--redis-url", redis_url, "--format", "csv", "-o", str(out)]
    shown = on_terminal(monkeypatch, argv)
    assert f"\rreading the ledger of team: 1 of {ENTRIES} entries (3%)" in shown
    assert f"\rreading the ledger of team: {ENTRIES} of {ENTRIES} entries (100%)" in shown
    # The line is erased before the summary, which stays.
    erased, summary = shown.rsplit("\r" + ERASE_LINE, 1)
    assert "reading the ledger" in erased
    assert summary.startswith(f"ratelimit ledger: wrote {ENTRIES} entries of team")
    assert len(out.read_text().splitlines()) == ENTRIES + 1  # and the header


@pytest.mark.usefixtures("at_once")
def test_a_windowed_export_knows_only_an_upper_bound(
    ledger_of_30: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["ledger", ledger_of_30, "--redis-url", redis_url, "--since", "2000-01-01"]
    shown = on_terminal(monkeypatch, [*argv, "--format", "jsonl", "-o", str(tmp_path / "o")])
    assert f"of at most {ENTRIES} entries" in shown


@pytest.mark.usefixtures("at_once")
def test_nothing_is_drawn_on_a_stderr_that_is_not_a_terminal(
    ledger_of_30: str, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ledger.csv"
    assert main(["ledger", ledger_of_30, "--redis-url", redis_url, "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"ratelimit ledger: server {redis_url} (from --redis-url)",
        f"ratelimit ledger: wrote {ENTRIES} entries of team (0.30 USD) to {out}",
    ]


@pytest.mark.usefixtures("at_once")
def test_csv_to_the_same_terminal_is_not_torn_by_a_progress_line(
    ledger_of_30: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["ledger", ledger_of_30, "--redis-url", redis_url, "--format", "csv"]
    shown = on_terminal(monkeypatch, argv, stdout=True)
    assert "reading the ledger" not in shown
    # The header and the entries, after the line naming the server.
    assert shown.count("\n") == ENTRIES + 2


@pytest.mark.usefixtures("at_once")
def test_a_table_on_the_same_terminal_comes_after_the_progress_is_erased(
    ledger_of_30: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = on_terminal(
        monkeypatch, ["ledger", ledger_of_30, "--redis-url", redis_url], stdout=True
    )
    progress_lines, table = shown.rsplit("\r" + ERASE_LINE, 1)
    assert f"{ENTRIES} of {ENTRIES} entries (100%)" in progress_lines
    assert table.startswith("ledger of team\r\n")
    assert f"total, {ENTRIES} entries" in table


def test_progress_waits_before_drawing_and_stays_off_other_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with terminal() as (tty, received), Progress("work", 10, stream=tty) as slow_start:
        slow_start.advance(10)  # well within PROGRESS_DELAY_S: nothing yet
        assert not slow_start.drawn
    assert received == []
    monkeypatch.setattr(progress, "PROGRESS_DELAY_S", 0.0)
    stream = io.StringIO()
    with Progress("work", 10, stream=stream) as elsewhere:
        elsewhere.advance(10)
    assert stream.getvalue() == ""
