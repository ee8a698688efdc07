"""The private servers the demo, tests and benchmarks start."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis

from ratelimit import server
from ratelimit.errors import ServerNotFound
from ratelimit.server import EmbeddedServer


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_taken_before_the_server_binds_it_is_replaced(
    taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([taken_port, server.free_port()])
    monkeypatch.setattr(server, "free_port", lambda: next(ports))
    with EmbeddedServer() as started:
        assert started.port != taken_port
        assert redis.Redis(port=started.port).ping()


def test_a_port_the_caller_chose_is_not_replaced(taken_port: int) -> None:
    with pytest.raises(ServerNotFound, match="Address already in use"):
        EmbeddedServer(port=taken_port).start()
