"""Users with restricted rights, made with ACL SETUSER."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from topology.server import Server
from topology.waiting import command


@dataclass(frozen=True)
class AclUser:
    """A user made with ``ACL SETUSER``, and URLs to log in as it."""

    name: str
    password: str
    url: str
    """The server's URL with this user's name and password."""
    wrong_password_url: str
    """The same URL with a wrong password: connecting raises ``AuthenticationError``."""


@contextmanager
def acl_user(server: Server, name: str, *rules: str) -> Iterator[AclUser]:
    """Create user ``name`` on ``server`` with ``rules``; delete it on exit.

    The user starts from ``reset`` (no keys, channels or commands) and is
    turned ``on`` with a random password, then ``rules`` apply, e.g.
    ``acl_user(server, "limited", "~rl:v1:*", "resetchannels", "-@all",
    "+evalsha", "+eval", "+script|load")``.
    """
    password = secrets.token_hex(16)
    command(server.admin, "ACL", "SETUSER", name, "reset", "on", f">{password}", *rules)
    try:
        yield AclUser(
            name=name,
            password=password,
            url=server.url_for(name, password),
            wrong_password_url=server.url_for(name, password + "-wrong"),
        )
    finally:
        if server.running:
            command(server.admin, "ACL", "DELUSER", name)
