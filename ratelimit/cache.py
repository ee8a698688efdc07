"""The response cache, at its first address: it lives in :mod:`ratelimit.anthropic.cache`.

The cache serves only the ``anthropic`` wrapper, so it moved in beside it;
``from ratelimit.cache import ResponseCache`` keeps working. Like the
wrapper, it needs the ``anthropic`` extra.
"""

import ratelimit.anthropic.cache
from ratelimit.anthropic.cache import *  # noqa: F403

__all__ = ratelimit.anthropic.cache.__all__
