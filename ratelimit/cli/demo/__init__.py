"""``ratelimit demo``: N worker processes share one scope; did its limits hold?

- :mod:`~ratelimit.cli.demo.workload`: the simulated calls, the demo scope's
  rates, and the check of admitted against allowed.
- :mod:`~ratelimit.cli.demo.workers`: the worker processes and their messages.
- :mod:`~ratelimit.cli.demo.progress`: the live progress line.
- :mod:`~ratelimit.cli.demo.run`: one run, from starting the server to the verdict.
- :mod:`~ratelimit.cli.demo.report`: the final tables and the verdict.
"""
