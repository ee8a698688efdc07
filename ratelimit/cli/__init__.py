"""The ``ratelimit`` command line (the console script and ``python -m ratelimit``).

``ratelimit demo`` is the main job: N worker processes share one scope, each
booking simulated LLM calls through :class:`~ratelimit.Limiter`, and at the
end the demo checks, with the server's clock, that the limiter never admitted
more than its buckets allow (``burst + rate x elapsed`` in every dimension).

``ratelimit ledger``, ``spend`` and ``alerts`` read a deployment's Redis and
change nothing: a scope's ledger entries (as a table, CSV or JSON Lines), its
spend per day and model, and its budget alerts, past or as they fire.
``ratelimit status`` shows every scope's buckets, budget and permits in
flight, and ``ratelimit exporter`` serves them to Prometheus.

``ratelimit sync`` copies every ledger entry into PostgreSQL exactly once, and
``ratelimit restore`` rebuilds from there the spend Redis lost.
``ratelimit dashboard`` serves a read-only web page of it all.

- :mod:`~ratelimit.cli.parser`: the arguments of every command, and :func:`main`.
- :mod:`~ratelimit.cli.demo`: the demo (workload, workers, progress, run, report).
- :mod:`~ratelimit.cli.readers`: the read-only commands, over :mod:`ratelimit.ledger`.
- :mod:`~ratelimit.cli.status` (drawn by :mod:`~ratelimit.cli.status_view`): ``status``.
- :mod:`~ratelimit.cli.exporter`: ``exporter``.
- :mod:`~ratelimit.cli.postgres`: ``sync`` and ``restore``, the ledger of record in PostgreSQL.
- :mod:`~ratelimit.cli.dashboard`: ``dashboard``, over :mod:`ratelimit.dashboard`.
- :mod:`~ratelimit.cli.target`: ``--redis-url`` or ``$REDIS_URL``, said on stderr.
- :mod:`~ratelimit.cli.values`: the commands' number arguments.
- :mod:`~ratelimit.cli.output`: exit statuses, tables, numbers and money, for all of them.
"""

from ratelimit.cli.parser import main

__all__ = ["main"]
