"""Which Redis server a command talks to: ``--redis-url``, else ``$REDIS_URL``.

Every command that reads or uses a server resolves it here, once, and says
on stderr which server it is and where the URL came from (the password
masked), so a command never talks to a server its user did not expect. The
URL of any node of a Redis Cluster names the whole cluster
(:func:`ratelimit.backend.connect` finds out).
The commands that serve HTTP (``exporter``, ``dashboard``) take where they
listen here too: ``--port`` and ``--host``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from ratelimit.cli.output import safe_url
from ratelimit.cli.values import port_number

#: The environment variable a command reads when ``--redis-url`` is not given.
REDIS_URL_ENV = "REDIS_URL"


def add_server_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The ``--redis-url`` option of a command that reads a deployment."""
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="the deployment's Redis/Valkey server, or any node of a Redis Cluster "
        f"(default: ${REDIS_URL_ENV})",
    )


def resolve_server(args: argparse.Namespace, err: TextIO | None = None) -> str | None:
    """``--redis-url``, else ``$REDIS_URL`` (None when neither is set), said on ``err``.

    The URL goes back into ``args.redis_url`` for the command to use.
    """
    given = args.redis_url or None
    url = given or os.environ.get(REDIS_URL_ENV) or None
    args.redis_url = url
    if url is not None:
        source = "--redis-url" if given else f"${REDIS_URL_ENV}"
        print(
            f"ratelimit {args.command}: server {safe_url(url)} (from {source})",
            file=err or sys.stderr,
        )
    return url


def add_serving_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help_text: str,
    description: str,
    epilog: str,
    port: int,
    host: str,
    host_note: str = "",
) -> argparse.ArgumentParser:
    """A command that reads a deployment and serves HTTP: ``--redis-url``, ``--port``, ``--host``.

    ``port`` and ``host`` are the defaults; ``host_note`` ends ``--host``'s help.
    """
    command = commands.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_server_option(command)
    command.add_argument(
        "--port",
        type=port_number,
        default=port,
        help="the HTTP port (0: any free one, named on stderr; default: %(default)s)",
    )
    command.add_argument(
        "--host",
        default=host,
        help=f"the address to listen on (default: %(default)s, this machine only{host_note})",
    )
    return command
