"""``python -m ratelimit``: the same command line as the ``ratelimit`` script."""

import sys

from ratelimit.cli import main

# The guard matters: the demo's workers use the spawn start method, which
# re-imports this module in every child under the name ``__mp_main__``.
if __name__ == "__main__":
    sys.exit(main())
