"""The pure core: everything a limiter decides in Python, with no I/O.

Nothing in this package talks to Redis, reads a clock other than the one
passed in, or knows any provider's prices. The sync :mod:`ratelimit.limiter`
and the asyncio :mod:`ratelimit.asyncio` shells drive its flows: an
operation (acquire, settle, state...) is a generator that yields
:class:`~ratelimit.core.calls.ScriptCall` objects and receives their
replies, so both clients share every rule.

- :mod:`~ratelimit.core.numbers`: exact amounts (micro-units, nano-dollars).
- :mod:`~ratelimit.core.settings`: the public configuration types
  (:class:`Rate`, :class:`Budget`, :class:`Retention`) and budget calendars.
- :mod:`~ratelimit.core.keys`: the Redis key layout.
- :mod:`~ratelimit.core.scope`: one scope's validated configuration, and the
  part of a script's arguments it contributes.
- :mod:`~ratelimit.core.results`: what operations return (states, permits,
  settlements, alerts).
- :mod:`~ratelimit.core.calls`: what a flow yields to its shell.
- :mod:`~ratelimit.core.entries`: what a permit tells the ledger.
- :mod:`~ratelimit.core.amounts`: the dimensions of some scopes, and every
  amount asked of them validated.
- :mod:`~ratelimit.core.part`: the scopes of one hash slot: one script call.
- :mod:`~ratelimit.core.replies`: what the scripts reply, read.
- :mod:`~ratelimit.core.plan`: how a set of scopes is checked, and the flows.
- :mod:`~ratelimit.core.base`: the I/O-free half of a limiter.
"""
