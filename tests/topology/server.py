"""One server process that a test can crash, pause and restart on the same port."""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self
from urllib.parse import quote

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ratelimit.errors import ServerNotFound
from ratelimit.server import Engine, find_binary, free_port
from topology.waiting import ADMIN_TIMEOUT_S, DEADLINE_S, TopologyError, command, wait_for

if TYPE_CHECKING:
    # Only named in annotations: topology.tls itself starts Servers.
    from topology.tls import TlsFiles


def _binary(engine: Engine) -> str:
    try:
        return find_binary(engine)[1]
    except ServerNotFound as exc:
        pytest.skip(f"no {engine} server binary: {exc}")


_LIVE: set[Server] = set()


@atexit.register
def _kill_leftovers() -> None:
    # A test that crashed between start and stop must not leave servers
    # running after the session: kill their whole process groups.
    for server in list(_LIVE):
        server.stop()


class Server:
    """One server process on 127.0.0.1 that tests can break: a context manager.

    ``options`` are passed to the server after the defaults (persistence off:
    ``--save "" --appendonly no``; full syncs at once:
    ``--repl-diskless-sync-delay 0``), so ``Server("--appendonly", "yes",
    "--appendfsync", "always")`` turns the AOF on. With ``tls``, the server
    listens only on its TLS port (``--port 0``) and ``port`` is that one.

    The process runs in its own session (process group), so ``kill``, ``pause``
    and ``stop`` reach it and any child it forked (AOF rewrite, RDB save).
    Options changed by ``config_set`` last until the process ends; a restart
    starts from ``options`` again.
    """

    def __init__(
        self,
        *options: str,
        engine: Engine = "redis",
        tls: TlsFiles | None = None,
        start_timeout_s: float = DEADLINE_S,
    ) -> None:
        self.binary = _binary(engine)
        self.options = options
        self.tls = tls
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        # Created at the first start, so a server never started leaves nothing.
        self.workdir = Path(tempfile.gettempdir()) / f"ratelimit-topology-{secrets.token_hex(8)}"
        self._process: subprocess.Popen[bytes] | None = None
        self._started = False
        self._admin: redis.Redis | None = None

    # -- addresses and clients

    @property
    def address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``."""
        return ("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``, or ``rediss://...?ssl_ca_certs=<the CA>`` with TLS."""
        return self.url_for()

    def url_for(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        ca_cert: Path | None = None,
    ) -> str:
        """This server's URL with credentials, and with TLS the CA to verify it with.

        ``ca_cert`` defaults to the CA that signed the server's certificate.
        """
        credentials = ""
        if username is not None:
            credentials = f"{quote(username, safe='')}:{quote(password or '', safe='')}@"
        if self.tls is None:
            return f"redis://{credentials}127.0.0.1:{self.port}/0"
        ca = ca_cert or self.tls.ca_cert
        return f"rediss://{credentials}127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(ca))}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new client of this server (TLS set up when needed); the caller closes it.

        ``kwargs`` override the defaults (5 s socket timeouts, TLS verified
        with the server's own CA).
        """
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "socket_connect_timeout": ADMIN_TIMEOUT_S,
            "socket_timeout": ADMIN_TIMEOUT_S,
        }
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.ca_cert))
        options.update(kwargs)
        return redis.Redis(**options)

    @property
    def admin(self) -> redis.Redis:
        """The helpers' own client: decoded replies, no retries (a dead server
        must show at once), 5 s timeouts (a paused one must not hang a poll)."""
        if self._admin is None:
            self._admin = self.client(decode_responses=True, retry=Retry(NoBackoff(), 0))
        return self._admin

    def info(self, section: str = "default") -> dict[str, Any]:
        """``INFO <section>`` as redis-py parses it (``{"role": "master", ...}``)."""
        return self.admin.info(section)

    def config_set(self, name: str, value: str | int) -> None:
        """``CONFIG SET name value``; lasts until the process ends."""
        self.admin.config_set(name, value)

    def role(self) -> str:
        """``master`` or ``slave``, from INFO replication."""
        return str(self.info("replication")["role"])

    def replicaof(self, primary: Server | None) -> None:
        """``REPLICAOF`` the given primary, or ``REPLICAOF NO ONE`` for None.

        It is a runtime change: after a restart the server is a primary again.
        """
        if primary is None:
            command(self.admin, "REPLICAOF", "NO", "ONE")
        else:
            command(self.admin, "REPLICAOF", "127.0.0.1", primary.port)

    # -- life cycle

    @property
    def running(self) -> bool:
        """Whether the process is alive (a paused one is)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> Server:
        """Start the server and wait until it serves (INFO persistence ``loading:0``).

        The first start picks another port when the one found free was taken
        before the server bound it. Later starts (after ``kill``) reuse the
        same port and directory, so clients reconnect and the AOF is reloaded.
        """
        if self.running:
            return self
        if self._started:
            self._spawn()
            return self
        for attempt in range(3):
            self.prepare_workdir()
            try:
                self._spawn()
            except TopologyError as exc:
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                self.port = free_port()
            else:
                break
        self._started = True
        return self

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is flushed), keeping its directory."""
        self._signal(signal.SIGKILL)
        self._reap(DEADLINE_S)

    def restart(self, *, graceful: bool = True) -> None:
        """Stop the server and start it again on the same port and directory.

        ``graceful`` sends SIGTERM (Redis flushes its AOF and, since 7.0, waits
        up to ``shutdown-timeout`` for lagging replicas), else SIGKILL.
        Returns when the restarted server has loaded its data.
        """
        if graceful and self.running:
            self._signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            self._signal(signal.SIGTERM)
            if not self._reap(DEADLINE_S):
                self.kill()
        else:
            self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server and remove its directory: the end of its life."""
        self.kill()
        _LIVE.discard(self)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Server:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what a subclass (a sentinel) changes

    def command_line(self) -> list[str]:
        """The server's argv: defaults first, then ``options``, which override them."""
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.server_cert),
                "--tls-key-file", str(self.tls.server_key),
                "--tls-ca-cert-file", str(self.tls.ca_cert),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        return [
            self.binary,
            *listen,
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--logfile", "server.log",
            "--save", "",
            "--appendonly", "no",
            # A primary would wait 5 s for more replicas before each full sync.
            "--repl-diskless-sync-delay", "0",
            *self.options,
        ]  # fmt: skip

    def prepare_workdir(self) -> None:
        """Make an empty working directory before a first start."""
        # A failed first attempt may have left files (nodes.conf) naming the old port.
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir()

    def serving(self, probe: redis.Redis) -> bool:
        """Whether the server answers ``probe`` and has loaded its data (``loading:0``)."""
        return probe.info("persistence").get("loading") == 0

    # -- internals

    def _spawn(self) -> None:
        stderr = (self.workdir / "stderr.log").open("ab")
        with stderr:
            # Its own session: signals to it (and to pytest's group) stay apart.
            self._process = subprocess.Popen(
                self.command_line(),
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        _LIVE.add(self)
        process = self._process

        # Short timeouts: a stranger that took the port accepts connections but
        # never answers, and each probe it swallows delays noticing our exit.
        probe = self.client(socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))

        def ready() -> bool:
            if process.poll() is not None:
                raise TopologyError(
                    f"{self.binary} exited with {process.returncode} on port "
                    f"{self.port}: {self._log_tail()}"
                )
            return self.serving(probe)

        try:
            wait_for(
                ready, f"the server on port {self.port} to serve", timeout_s=self.start_timeout_s
            )
        except TopologyError:
            self.kill()
            raise
        finally:
            probe.close()

    def _log_tail(self) -> str:
        logs = [self.workdir / name for name in ("server.log", "stderr.log")]
        return " | ".join(log.read_text()[-1500:] for log in logs if log.exists())

    def _signal(self, signum: signal.Signals) -> None:
        # Once reaped, the process id (and so the group id) may belong to
        # someone else: never signal it again.
        if self._process is None or self._process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signum)

    def _reap(self, timeout_s: float) -> bool:
        if self._process is None:
            return True
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        return True


class ServerFactory(Protocol):
    """The ``start_server`` fixture: starts a ``Server`` stopped after the test."""

    def __call__(self, *options: str, tls: TlsFiles | None = None) -> Server:
        """Start a server with these options (see ``Server``)."""
        ...


class ServerGroup:
    """Servers started together and all stopped on exit: a context manager.

    A subclass starts its servers in ``start_all``, entering each into the
    given stack; if anything fails halfway, those already started stop.
    """

    def __init__(self) -> None:
        self._stack = ExitStack()

    def start_all(self, stack: ExitStack) -> None:
        """Start every server (``stack.enter_context(server)``) and wait until they agree."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        with ExitStack() as stack:
            self.start_all(stack)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()
