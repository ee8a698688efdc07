"""Model routing policies, at their first address: they live in :mod:`ratelimit.anthropic.routing`.

The policies serve only the ``anthropic`` wrapper, so they moved in beside
it; ``from ratelimit.routing import Fallback`` keeps working. Like the
wrapper, they need the ``anthropic`` extra.
"""

import ratelimit.anthropic.routing
from ratelimit.anthropic.routing import *  # noqa: F403

__all__ = ratelimit.anthropic.routing.__all__
