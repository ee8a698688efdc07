"""Serving the dashboard with uvicorn, on a socket bound before it starts.

The socket is bound first, so a port that is taken fails at once, port 0
picks a free one whose number is known before the first request, and a
test or a script can start the server in a thread, wait until it answers,
and stop it.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from ratelimit.errors import DashboardRefused

#: How long :meth:`DashboardServer.start` waits for the server to accept requests.
START_TIMEOUT_S = 30.0


def page_url(host: str, port: int) -> str:
    """The page's URL (an IPv6 address in brackets)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _ignore(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful stop: nothing left to do."""


class DashboardServer:
    """uvicorn serving ``app`` on ``host:port`` (0: any free port), bound at construction.

    Raises :class:`~ratelimit.errors.DashboardRefused` when the address
    cannot be bound (taken, or not this machine's).
    """

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host.strip("[]"), port))
            # Listening now, a request made as soon as the URL is printed waits in
            # the backlog for uvicorn rather than being refused.
            self._socket.listen(128)
        except OSError as exc:
            self._socket.close()
            raise DashboardRefused(f"cannot listen on {host}:{port}: {exc}") from exc
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's URL."""
        return page_url(self.host, self.port)

    def serve(self) -> None:
        """Serve until Ctrl-C or SIGTERM, in this thread.

        uvicorn shuts down gracefully on either, then raises the signal again
        under the handler found before it started: Ctrl-C is then the usual
        KeyboardInterrupt, and SIGTERM (a container's stop) returns normally.
        """
        main = threading.current_thread() is threading.main_thread()
        before = signal.signal(signal.SIGTERM, _ignore) if main else None
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._socket.close()
            if before is not None:
                signal.signal(signal.SIGTERM, before)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Serve in a background thread; return once it accepts requests (bounded wait)."""
        self._thread = threading.Thread(target=self.serve, name="dashboard", daemon=True)
        self._thread.start()
        # uvicorn sets .started from its own loop: look in short steps, up to the bound.
        deadline = time.monotonic() + timeout_s
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not self._server.started:
            self.stop()
            raise DashboardRefused(f"the dashboard did not start within {timeout_s:g} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop a server started by :meth:`start` and wait for its thread (bounded)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> DashboardServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
