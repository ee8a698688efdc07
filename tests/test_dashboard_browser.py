"""The dashboard in a real browser: Debian's chromium, headless, driven through chromedriver.

The page must load without a console error, show the figures the ledger
holds, update the live utilization after new traffic, and request nothing
from any origin but its own. Without /usr/bin/chromium and
/usr/bin/chromedriver (``apt-get install chromium chromium-driver``, which
``.ci/run`` does as root) these tests skip, saying so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from dashboard_helpers import budgeted_traffic, png_pixels, served

from ratelimit.cli.output import format_usd

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Seconds any wait on the page may take (the live figures refresh every 3 s).
PAGE_TIMEOUT_S = 45.0

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        f"the browser tests need {CHROMIUM} and {CHROMEDRIVER}: "
        "apt-get install chromium chromium-driver",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless chromium with its console log kept, closed at the end."""
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1800"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def usd(amount: Decimal) -> str:
    """What the page shows for an amount below $1,000: ``$5.694567892``, ``$0.50``."""
    return "$" + format_usd(amount)


def _loaded(driver: Any) -> None:
    """Wait until the page has drawn both documents once."""
    body = driver.find_element(By.TAG_NAME, "body")
    WebDriverWait(driver, PAGE_TIMEOUT_S).until(
        lambda _: body.get_attribute("data-spend-loaded") and body.get_attribute("data-live-time")
    )


def _text(driver: Any, selector: str) -> str:
    """The text of the element ``selector`` finds, read in one step of the page's own loop.

    The live figures are redrawn every 3 s: an element found first and read
    after could be gone by then (a stale element), so it is found and read
    by one script.
    """
    text = driver.execute_script(
        "const node = document.querySelector(arguments[0]); return node && node.textContent",
        selector,
    )
    assert text is not None, f"nothing on the page matches {selector}"
    return str(text)


def _utilization(driver: Any) -> str:
    return _text(driver, 'tr[data-scope="chat"][data-dimension="requests"] td.utilization')


def test_the_page_shows_the_ledger_and_follows_live_traffic(
    r: redis.Redis, redis_url: str, browser: Any
) -> None:
    limiters = budgeted_traffic(r)
    team_a = limiters["team-a"]
    spent = sum((entry.cost_usd for entry in team_a.ledger_entries()), Decimal(0))
    day_totals: dict[str, Decimal] = {}
    for name in ("team-a", "team-b"):
        for day, models in limiters[name].spend().items():
            day_totals[day] = day_totals.get(day, Decimal(0)) + sum(models.values(), Decimal(0))
    (today,) = day_totals

    with served(redis_url) as dashboard:
        browser.get(dashboard.url)
        _loaded(browser)
        card = 'div.budget[data-scope="team-a"] '
        assert _text(browser, card + ".spent") == usd(spent) == "$5.694567892"
        assert _text(browser, card + ".reserved") == "$0.50"
        assert _text(browser, card + ".limit") == "$10.00"
        assert _text(browser, card + ".available") == usd(10 - spent - Decimal("0.5"))
        assert "h" in _text(browser, card + ".resets") or "min" in _text(browser, card + ".resets")
        # The chart's last day, today, and its readout.
        total = browser.execute_script(
            "return document.querySelector(arguments[0]).dataset.total",
            f'g.bar-day[data-day="{today}"]',
        )
        assert Decimal(total) == day_totals[today]
        assert _text(browser, "#spend-readout .day-total") == usd(day_totals[today])
        assert _text(browser, '#top-scopes tr[data-name="team-a"] .usd') == usd(spent)
        alerts = browser.execute_script(
            "return [...document.querySelectorAll('#alerts tr.alert')].map(r => r.textContent)"
        )
        assert len(alerts) == 1
        assert "team-a" in alerts[0]
        assert "50.0%" in alerts[0]

        # Live: 4 more of chat's 10 requests (its bucket refills one in 2.4 hours).
        assert 29.0 <= float(_utilization(browser).rstrip("%")) <= 30.0
        for _ in range(4):
            limiters["chat"].acquire(input_tokens=10, timeout=5)
        WebDriverWait(browser, PAGE_TIMEOUT_S).until(
            lambda driver: float(_utilization(driver).rstrip("%")) >= 69.0
        )

        # A new settle shows on team-a's gauge without a reload (the live refresh).
        team_a.acquire(usd="1", model="claude-sonnet-4-6", timeout=5).settle(usd="0.25")
        WebDriverWait(browser, PAGE_TIMEOUT_S).until(
            lambda driver: _text(driver, card + ".spent") == usd(spent + Decimal("0.25"))
        )

        _chart_is_drawn(browser, today)

        entries = browser.execute_script(
            "return performance.getEntriesByType('navigation')"
            ".concat(performance.getEntriesByType('resource')).map(e => e.name)"
        )
        logs = browser.get_log("browser")

    origin = dashboard.url.rstrip("/")
    assert f"{origin}/api/live" in entries
    assert f"{origin}/api/spend" in entries
    assert all(str(name).startswith(origin + "/") for name in entries), entries
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == []


def _chart_is_drawn(driver: Any, day: str) -> None:
    """A screenshot of the spend chart has the chart's size, and the bar of ``day``
    shows in each of its models' colours: the SVG was really painted."""
    chart = driver.find_element(By.ID, "spend-chart")
    png = chart.screenshot_as_png
    ratio, box = driver.execute_script(
        "const r = document.getElementById('spend-chart').getBoundingClientRect();"
        "return [window.devicePixelRatio, [r.width, r.height]]"
    )
    width, height, pixels = png_pixels(png)
    assert abs(width - box[0] * ratio) <= 2, (width, box, ratio)
    assert abs(height - box[1] * ratio) <= 2, (height, box, ratio)
    assert width >= 400, width
    assert height >= 150, height
    fills = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(r => r.getAttribute('fill'))",
        f'g.bar-day[data-day="{day}"] rect.segment',
    )
    assert len(fills) == 2, fills  # the day's two models
    counts = {fill: 0 for fill in fills}
    wanted = {tuple(int(f[i : i + 2], 16) for i in (1, 3, 5)): f for f in fills}
    for pixel in pixels:
        fill = wanted.get(pixel)
        if fill is not None:
            counts[fill] += 1
    # Each segment is tens of pixels wide; the smaller is still thousands of pixels tall x wide.
    assert all(count >= 200 for count in counts.values()), counts
    print("chart", width, height, counts)
    assert len(set(pixels)) >= 5, "the chart is one flat colour"


def test_the_page_opened_with_its_token_passes_it_to_the_api(
    r: redis.Redis, redis_url: str, browser: Any
) -> None:
    budgeted_traffic(r)
    with served(redis_url, "--token", "page-token") as dashboard:
        browser.get(dashboard.url + "?token=page-token")
        _loaded(browser)
        assert _text(browser, 'div.budget[data-scope="team-b"] .spent') == "$4.25"
        assert "cannot read" not in _text(browser, "#status")
        logs = browser.get_log("browser")
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
