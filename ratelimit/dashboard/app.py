"""The dashboard's HTTP layer: one page and two JSON endpoints, GET only (Starlette).

- ``GET /``: the page, with its script and styles inlined from the package's
  ``static/`` folder, so one request brings everything and a
  Content-Security-Policy of hashes lets nothing else run or load: the page
  can only talk to this server (``connect-src 'self'``).
- ``GET /api/live``: budgets, each quota's utilization and recent alerts (the
  page polls it every few seconds).
- ``GET /api/spend``: spend per day and model over the last 30 days, the top
  scopes and tag values (polled every minute).

Any other method is answered 405; a request without the token, when there
is one, 401. What the endpoints answer comes from the two readers given to
:func:`create_app`, which do the I/O; a reader's
:class:`~ratelimit.errors.LimiterError` is a 503 whose body says why.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ratelimit.dashboard.access import presented_token, token_matches
from ratelimit.errors import LimiterError

#: A reader: returns one endpoint's JSON document, or raises a LimiterError.
Reader = Callable[[], dict[str, Any]]

#: Sent with every answer: nothing is cached, nothing is sniffed or framed.
COMMON_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _hash_source(text: str) -> str:
    """A CSP source that allows exactly this inline script or style."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


@dataclass(frozen=True)
class Page:
    """The page with its script and styles inlined, and the policy that allows only them."""

    html: str
    policy: str


def build_page() -> Page:
    """The page from ``static/``: ``index.html`` with ``dashboard.css`` and ``.js`` inlined."""
    static = resources.files("ratelimit.dashboard").joinpath("static")
    html = static.joinpath("index.html").read_text(encoding="utf-8")
    css = static.joinpath("dashboard.css").read_text(encoding="utf-8")
    script = static.joinpath("dashboard.js").read_text(encoding="utf-8")
    html = html.replace('<link rel="stylesheet" href="dashboard.css">', f"<style>{css}</style>")
    html = html.replace('<script src="dashboard.js"></script>', f"<script>{script}</script>")
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hash_source(script)}",
            f"style-src {_hash_source(css)}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(html, policy)


class TokenRequired:
    """ASGI middleware: every HTTP request must carry the token (else 401)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            presented = presented_token(request.headers, request.query_params)
            if not token_matches(self.token, presented):
                response = PlainTextResponse(
                    "401: this dashboard needs its token: open /?token=TOKEN, "
                    "or send 'Authorization: Bearer TOKEN'\n",
                    status_code=401,
                    headers={**COMMON_HEADERS, "WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _json_endpoint(read: Reader) -> Callable[[Request], Response]:
    """A GET endpoint answering ``read()`` (run in Starlette's thread pool: it blocks)."""

    def endpoint(request: Request) -> Response:
        try:
            document = read()
        except LimiterError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers=COMMON_HEADERS)
        return JSONResponse(document, headers=COMMON_HEADERS)

    return endpoint


def create_app(
    *, live: Reader, spend: Reader, token: str | None = None, page: Page | None = None
) -> Starlette:
    """The dashboard's ASGI application over two readers (see the module's docstring).

    With ``token``, every request must carry it (:class:`TokenRequired`).
    """
    shown = page or build_page()

    def index(request: Request) -> Response:
        headers = {**COMMON_HEADERS, "Content-Security-Policy": shown.policy}
        return HTMLResponse(shown.html, headers=headers)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/live", _json_endpoint(live), methods=["GET"]),
        Route("/api/spend", _json_endpoint(spend), methods=["GET"]),
    ]
    middleware = [] if token is None else [Middleware(TokenRequired, token=token)]
    return Starlette(routes=routes, middleware=middleware)
