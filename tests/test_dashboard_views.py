"""The dashboard's pure parts: the documents shaped from readings, and the access rules."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from ratelimit.core.results import Alert
from ratelimit.dashboard.access import (
    TOKEN_ENV,
    check_binding,
    is_loopback,
    presented_token,
    resolve_token,
    token_matches,
)
from ratelimit.dashboard.views import (
    SpendTotals,
    alert_view,
    fraction,
    money,
    spend_view,
    tag_value,
    totals_from_entries,
)
from ratelimit.errors import DashboardRefused, LimiterError
from ratelimit.ledger import FiredAlert, LedgerEntry

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _entry(day: str, model: str, cost: str, scope: str = "a", **tags: object) -> LedgerEntry:
    return LedgerEntry(
        f"{day}-{cost}", T0, scope, "p", "settled", day, model, Decimal(cost), {}, dict(tags)
    )


def test_money_is_exact_and_plain() -> None:
    assert money(Decimal("0.009100000")) == "0.0091"
    assert money(Decimal("100.000000000")) == "100"
    assert money(Decimal("0E-9")) == "0"
    assert money(Decimal("1234567.000000001")) == "1234567.000000001"
    assert fraction(3, 10) == "0.3000"
    assert fraction(Decimal("2.99999"), 10) == "0.3000"
    assert fraction(15, 10) == "1.5000"
    assert fraction(1, 0) == "0"


def test_entries_are_summed_by_day_and_model_scope_and_tag() -> None:
    entries = [
        _entry("2026-11-30", "m1", "0.000000001", user="u-1", team="x"),
        _entry("2026-11-30", "m2", "1.5", scope="b", user="u-2", n=3),
        _entry("2026-11-29", "m1", "2", user="u-1", flag=True),
        _entry("2026-10-31", "m1", "50", user="u-9"),  # before the window
    ]
    totals = totals_from_entries(entries, date(2026, 11, 1))
    assert totals.entries == 3
    assert totals.by_day_model == {
        ("2026-11-30", "m1"): Decimal("0.000000001"),
        ("2026-11-30", "m2"): Decimal("1.5"),
        ("2026-11-29", "m1"): Decimal("2"),
    }
    assert totals.by_scope == {"a": Decimal("2.000000001"), "b": Decimal("1.5")}
    assert totals.by_tag[("user", "u-1")] == Decimal("2.000000001")
    assert totals.by_tag[("n", "3")] == Decimal("1.5")  # as PostgreSQL's jsonb_each_text
    assert totals.by_tag[("flag", "true")] == Decimal("2")
    assert tag_value({"b": 1, "a": "x"}) == '{"a": "x", "b": 1}'


def test_the_spend_view_covers_thirty_days_and_ranks_the_top() -> None:
    totals = SpendTotals(
        by_day_model={
            ("2026-11-30", "small"): Decimal("0.5"),
            ("2026-11-30", "big"): Decimal("3"),
            ("2026-11-02", "small"): Decimal("1"),
            ("2026-12-01", "big"): Decimal("0.25"),  # a zone ahead of UTC is tomorrow already
        },
        by_scope={f"s{i}": Decimal(i) for i in range(12)},
        by_tag={("user", "u"): Decimal(1), ("team", "t1"): Decimal(5), ("team", "t2"): Decimal(5)},
        entries=4,
    )
    view = spend_view(totals, date(2026, 11, 30), source="redis", top=3)
    assert view["first_day"] == "2026-11-01"
    assert view["last_day"] == "2026-12-01"
    assert len(view["days"]) == 31
    assert view["models"] == ["big", "small"]  # most spent first: the stacks keep that order
    assert view["days"][0] == {"day": "2026-11-01", "total_usd": "0", "models": {}}
    today = view["days"][-2]
    assert today == {
        "day": "2026-11-30",
        "total_usd": "3.5",
        "models": {"big": "3", "small": "0.5"},
    }
    assert view["total_usd"] == "4.75"
    assert view["top_scopes"] == [
        {"name": "s11", "usd": "11"},
        {"name": "s10", "usd": "10"},
        {"name": "s9", "usd": "9"},
    ]
    assert view["top_tags"] == [
        {"tag": "team", "values": [{"name": "t1", "usd": "5"}, {"name": "t2", "usd": "5"}]},
        {"tag": "user", "values": [{"name": "u", "usd": "1"}]},
    ]


def test_an_alert_keeps_its_money_exact() -> None:
    fired = FiredAlert(T0, Alert(0.8, "team", Decimal("8.000000001"), Decimal("10"), "2026-11-30"))
    assert alert_view(fired) == {
        "fired_at": "2026-11-30T12:00:00+00:00",
        "scope": "team",
        "threshold": "0.8",
        "spent_usd": "8.000000001",
        "limit_usd": "10",
        "period": "2026-11-30",
    }


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("dashboard.internal", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        check_binding(host, None)
    else:
        with pytest.raises(DashboardRefused, match=f"refusing to serve on {host}"):
            check_binding(host, None)
        check_binding(host, "a-token")


def test_the_token_is_read_from_the_header_or_the_query() -> None:
    assert presented_token({"authorization": "Bearer abc"}, {}) == "abc"
    assert presented_token({"authorization": "bearer  abc "}, {"token": "x"}) == "abc"
    assert presented_token({"authorization": "Basic abc"}, {"token": "q"}) == "q"
    assert presented_token({}, {}) is None
    assert token_matches("abc", "abc")
    assert not token_matches("abc", "abd")
    assert not token_matches("abc", None)
    assert not token_matches("abc", "")
    assert resolve_token(None, {TOKEN_ENV: "env"}) == "env"
    assert resolve_token("flag", {TOKEN_ENV: "env"}) == "flag"
    assert resolve_token(None, {TOKEN_ENV: ""}) is None
    assert issubclass(DashboardRefused, LimiterError)
