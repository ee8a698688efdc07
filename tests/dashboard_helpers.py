"""The dashboard's tests: budgeted traffic with known figures, a served dashboard, HTTP GETs.

The dashboard is built the way ``ratelimit dashboard`` builds it (its
arguments parsed by the real parser, :func:`ratelimit.cli.dashboard.build_server`)
and served by uvicorn in a thread on a free port of 127.0.0.1.
"""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import redis

from ratelimit import Budget, Limiter, Rate
from ratelimit.cli.dashboard import build_server
from ratelimit.cli.parser import build_parser
from ratelimit.dashboard.serving import DashboardServer

MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5")
#: Seconds any HTTP request of the tests may take.
HTTP_TIMEOUT_S = 30.0


def budgeted_traffic(client: redis.Redis) -> dict[str, Limiter]:
    """Two budgeted scopes and a rate-only one, used as an application leaves them.

    team-a (a day budget of $10) settles six calls on two models with
    ``user`` and ``team`` tags, crossing its 50% alert, and keeps one permit
    of $0.50 in flight; team-b (slot ``acme``, a month budget) settles two;
    ``chat`` (rates only, slow refill) has used 3 of its 10 requests.
    """
    team_a = Limiter(
        client, "team-a", usd=Budget("10", alerts=(0.5, 0.8)), requests=Rate(100, per=3600)
    )
    costs = ["0.91", "1.234567891", "2.5", "0.000000001", "0.75", "0.3"]
    for i, cost in enumerate(costs):
        tags = {"user": f"u-{i % 3}", "team": "search" if i % 2 else "chat"}
        permit = team_a.acquire(usd="3", model=MODELS[i % 2], tags=tags, timeout=5)
        permit.settle(usd=cost)
    team_a.acquire(usd="0.5", model=MODELS[0], tags={"user": "u-9"}, timeout=5)  # in flight
    team_b = Limiter(client, "team-b", slot="acme", usd=Budget("50", per="month"))
    for cost in ("4.2", "0.05"):
        team_b.acquire(usd="5", model=MODELS[1], tags={"team": "ops"}, timeout=5).settle(usd=cost)
    chat = Limiter(
        client, "chat", requests=Rate(10, per=86400), input_tokens=Rate(10_000, per=86400)
    )
    for _ in range(3):
        chat.acquire(input_tokens=1_000, timeout=5)
    return {"team-a": team_a, "team-b": team_b, "chat": chat}


def money(amount: Decimal) -> str:
    """USD as the dashboard's JSON writes it (no trailing zeros)."""
    return "0" if amount == 0 else format(amount.normalize(), "f")


def dashboard_args(redis_url: str, *extra: str) -> Any:
    """``ratelimit dashboard --redis-url URL --port 0 EXTRA`` parsed by the real parser."""
    return build_parser().parse_args(["dashboard", "--redis-url", redis_url, "--port", "0", *extra])


@contextmanager
def served(redis_url: str, *extra: str) -> Iterator[DashboardServer]:
    """A dashboard as ``ratelimit dashboard ARGS`` builds it, served in a thread until the end.

    Its token is ``--token``'s, if given (``$RATELIMIT_DASHBOARD_TOKEN`` is not read).
    """
    args = dashboard_args(redis_url, *extra)
    server, client = build_server(args, args.token)
    try:
        with server:
            yield server
    finally:
        client.close()


def request(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request: status, headers (lower-case names) and body, errors included."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, _lower(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers.items()), error.read()


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


def get_json(url: str, token: str | None = None) -> Any:
    """GET a JSON endpoint (with the bearer token when given); fails unless it answers 200."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    status, _, body = request(url, headers=headers)
    assert status == 200, (status, body[:500])
    return json.loads(body)


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels (row by row) of an 8-bit RGB or RGBA PNG, as
    chromedriver writes its screenshots; anything else fails the test that asked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, header, compressed = 8, b"", b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        at += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed += body
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8, depth
    assert color in (2, 6), color
    assert interlace == 0, interlace
    step = 3 if color == 2 else 4
    raw, stride = zlib.decompress(compressed), width * step
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - step] if x >= step else 0
            up, corner = previous[x], previous[x - step] if x >= step else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                near = min((abs(guess - v), i) for i, v in enumerate((left, up, corner)))[1]
                line[x] = (line[x] + (left, up, corner)[near]) & 0xFF
        rows.append(line)
        previous = line
    pixels = [tuple(row[x : x + 3]) for row in rows for x in range(0, stride, step)]
    return width, height, pixels  # type: ignore[return-value]  # 3-tuples by construction
