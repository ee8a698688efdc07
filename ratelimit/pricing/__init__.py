"""What a Claude API request costs, in exact US dollars.

:class:`Pricing` holds a price table: for each model, a :class:`ModelPrice`
(a :class:`PriceCard` with prompt-length tiers) giving a price in USD per
million tokens (USD / MTok) for every kind of token Anthropic bills
separately, stored as :class:`~decimal.Decimal` so that every cost is exact.
The table shipped with the package (``ratelimit/pricing/prices.toml``)
records Anthropic's published list prices; :meth:`Pricing.from_file` lays a
user's own file (same format) over it.

>>> pricing = Pricing.default()
>>> pricing.cost("claude-sonnet-4-6", {"input_tokens": 1000, "output_tokens": 500})
Decimal('0.010500')

How a usage is priced (:meth:`Pricing.cost`):

* ``input_tokens`` at the ``input`` price, ``output_tokens`` at ``output``,
  ``cache_read_input_tokens`` at ``cache_read``.
* ``cache_creation_input_tokens`` at ``cache_write_5m`` and ``cache_write_1h``
  as split by ``cache_creation`` (``ephemeral_5m_input_tokens`` /
  ``ephemeral_1h_input_tokens``).  Without that split, or for any part of the
  total the split does not account for, writes are priced as 5-minute writes
  (the API's default TTL).
* Batch pricing (the ``batch_*`` prices) when ``batch=True`` or the usage says
  ``service_tier == "batch"``.  Any other service tier is priced as standard.
* Prompt-length tiers: the *prompt* is ``input_tokens +
  cache_creation_input_tokens + cache_read_input_tokens``, as Anthropic counts
  it for its long-context thresholds.  When a model has a tier whose
  ``above_prompt_tokens`` the prompt exceeds, the tier's prices apply to every
  token of the request, output included; a prompt of exactly the threshold
  pays the base prices.

Not priced: fast mode (a usage with ``speed == "fast"`` raises
:class:`MissingPrice`, since its prices are not in the table), the 1.1x
surcharge of US-only inference (``inference_geo``), server tool use (web
search and the like, billed per use) and Priority Tier contracts.

This package never imports ``anthropic``: a usage is read by attribute or by
key, so ``anthropic.types.Usage`` objects and plain mappings both work, and a
bare install without the ``anthropic`` extra can use it.

- :mod:`~ratelimit.pricing.cards`: price cards, tiers and a model's prices.
- :mod:`~ratelimit.pricing.usage`: reading a usage into counts by kind.
- :mod:`~ratelimit.pricing.price_file`: the TOML file format.
- :mod:`~ratelimit.pricing.table`: the :class:`Pricing` table and its costs.
"""

from ratelimit.errors import MissingPrice
from ratelimit.pricing.cards import (
    TOKEN_KINDS,
    TOKENS_PER_MILLION,
    ModelPrice,
    PriceCard,
    PriceTier,
    TokenKind,
)
from ratelimit.pricing.table import Pricing
from ratelimit.pricing.usage import UsageLike, token_counts

__all__ = [
    "TOKENS_PER_MILLION",
    "TOKEN_KINDS",
    "MissingPrice",
    "ModelPrice",
    "PriceCard",
    "PriceTier",
    "Pricing",
    "TokenKind",
    "UsageLike",
    "token_counts",
]
