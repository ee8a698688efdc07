"""One file for a deployment's limits: ``ratelimit.toml``, read by :func:`load_config`.

>>> from ratelimit import load_config
>>> config = load_config("ratelimit.toml")          # doctest: +SKIP
>>> limiter = config.limiter("team-a", redis_client)  # doctest: +SKIP
>>> client = wrap(anthropic.Anthropic(), redis_client,
...               **config.wrap_kwargs())            # doctest: +SKIP

The file (``examples/ratelimit.toml`` shows every key) has a
``[scope.<name>]`` table per scope, with its ``rates``, ``budget``,
``retention``, ``slot``, ``lease_s`` and ``on_redis_error``, and an
``[anthropic]`` table with the options of :func:`ratelimit.anthropic.wrap`.
Every process that loads the same file builds the same limiters.

- :mod:`~ratelimit.config_file.document`: the TOML text, and the line of each key;
- :mod:`~ratelimit.config_file.schema`: what each table may hold, checked by the
  library's own validators;
- :mod:`~ratelimit.config_file.config`: :class:`Config` and :func:`load_config`.
"""

from ratelimit.config_file.config import CONFIG_ENV, Config, load_config
from ratelimit.config_file.schema import ScopeConfig, WrapperConfig
from ratelimit.errors import ConfigError

__all__ = ["CONFIG_ENV", "Config", "ConfigError", "ScopeConfig", "WrapperConfig", "load_config"]
