"""Who may see the dashboard: the loopback rule and the token, with no I/O.

The dashboard binds to 127.0.0.1 unless told otherwise. Any other address
(a LAN address, ``0.0.0.0``, ``::``, a host name) needs a token, and every
request must then carry it: ``Authorization: Bearer <token>``, or
``?token=<token>`` on the URL (how a person opens the page; the page then
sends it to the API in the header). Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping

from ratelimit.errors import DashboardRefused

#: The environment variable that gives the token when ``--token`` does not.
TOKEN_ENV = "RATELIMIT_DASHBOARD_TOKEN"
#: Only this machine can open the page by default.
DEFAULT_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost`` or a loopback address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


def resolve_token(given: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """``--token``, else ``$RATELIMIT_DASHBOARD_TOKEN``; None when neither is set (or empty)."""
    env = os.environ if environ is None else environ
    return given or env.get(TOKEN_ENV) or None


def check_binding(host: str, token: str | None) -> None:
    """Raise :class:`~ratelimit.errors.DashboardRefused` for a non-loopback host without a token."""
    if token is None and not is_loopback(host):
        raise DashboardRefused(
            f"refusing to serve on {host}, which other machines can reach, without a token: "
            f"give --token TOKEN or set ${TOKEN_ENV} (every request must then carry it), "
            f"or listen on {DEFAULT_HOST}"
        )


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token a request carries: a bearer ``Authorization`` header, else ``?token=``."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return query.get("token") or None


def token_matches(expected: str, presented: str | None) -> bool:
    """Whether ``presented`` is ``expected``, compared in constant time."""
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))
