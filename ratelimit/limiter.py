"""The synchronous client: a thin shell over :mod:`ratelimit._core`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import redis
import redis.cluster
import redis.exceptions
from redis.commands.core import Script

from ratelimit import _core, _scripts
from ratelimit._core import DimensionState, Rate, ScriptCall, Settlement
from ratelimit.errors import AcquireTimeout, RedisUnavailable

SyncClient = redis.Redis | redis.cluster.RedisCluster

#: Socket timeouts of a client built from a URL: an outage is noticed in
#: about a second instead of hanging workers.
URL_SOCKET_TIMEOUT_S = 1.0


def connect(url: str) -> redis.Redis:
    """A client for ``url`` with the short socket timeouts a limiter wants."""
    return redis.Redis.from_url(
        url, socket_timeout=URL_SOCKET_TIMEOUT_S, socket_connect_timeout=URL_SOCKET_TIMEOUT_S
    )


class Limiter:
    """A quota shared by every process that builds a Limiter with the same ``name``.

    ``client`` is a ``redis.Redis``, a ``redis.cluster.RedisCluster`` or a URL;
    each keyword names a dimension with its :class:`Rate` (``requests``,
    ``input_tokens``...). A dimension named ``requests`` costs 1 per acquire
    unless the caller says otherwise; the others cost 0 unless given.

    ``lease_s`` is how long a permit stays settleable after its admission;
    ``slot`` is the Redis Cluster hash tag of the quota's keys (default: its
    name); ``on_redis_error`` says what admission does while Redis is
    unreachable: ``"raise"`` (:class:`~ratelimit.errors.RedisUnavailable`),
    ``"allow"`` (unmetered) or ``"deny"``.
    """

    def __init__(
        self,
        client: SyncClient | str,
        name: str,
        *,
        on_redis_error: _core.OnRedisError = "raise",
        lease_s: float = _core.DEFAULT_LEASE_S,
        slot: str | None = None,
        **dimensions: Rate,
    ) -> None:
        self._spec = _core.QuotaSpec.build(
            name, dimensions, slot=slot, lease_s=lease_s, on_redis_error=on_redis_error
        )
        self.client: SyncClient = connect(client) if isinstance(client, str) else client
        self._scripts: dict[str, Script] = {
            script: self.client.register_script(_scripts.source(script))
            for script in _scripts.SCRIPT_NAMES
        }

    @property
    def name(self) -> str:
        """The quota's name."""
        return self._spec.name

    @property
    def rates(self) -> dict[str, Rate]:
        """Each dimension's rate."""
        return {dim.name: dim.rate for dim in self._spec.dimensions}

    def _run(self, call: ScriptCall) -> Any:
        try:
            return self._scripts[call.script](keys=call.keys, args=call.args)
        except redis.exceptions.RedisError as exc:
            raise _core.backend_error(exc) from exc

    def _book(self, costs: Mapping[str, object], timeout_s: object) -> Permit | AcquireTimeout:
        call, reserved, permit_id = self._spec.acquire_call(costs, timeout_s)
        try:
            grant = self._spec.parse_acquire(self._run(call))
        except RedisUnavailable as exc:
            grant = self._spec.when_unavailable(exc)
        if not grant.admitted:
            return self._spec.timeout_error(grant, timeout_s)
        return Permit(self, _core.PermitData.from_grant(permit_id, reserved, grant))

    def try_acquire(self, **costs: object) -> Permit | None:
        """A permit if every dimension can pay ``costs`` right now, else None; never waits."""
        outcome = self._book(costs, 0)
        return outcome if isinstance(outcome, Permit) else None

    def acquire(self, timeout: float | None = None, **costs: object) -> Permit:
        """Wait for a permit for ``costs``: one script call books the place in line.

        Raises :class:`~ratelimit.errors.AcquireTimeout` at once, consuming
        nothing, when admission would come later than ``timeout`` seconds.
        Interrupted while waiting, it returns its booking before re-raising.
        """
        outcome = self._book(costs, timeout)
        if isinstance(outcome, AcquireTimeout):
            raise outcome
        if outcome.wait_s > 0:
            try:
                time.sleep(outcome.wait_s)
            except BaseException:
                outcome.cancel()
                raise
        return outcome

    def settle(self, permit_id: str, **actual: object) -> Settlement:
        """Settle a permit by id (from any process): see :meth:`Permit.settle`."""
        return self._spec.parse_settle(self._run(self._spec.settle_call(permit_id, actual)))

    def cancel(self, permit_id: str) -> Settlement:
        """Return everything a permit took, by id: see :meth:`Permit.cancel`."""
        return self._spec.parse_settle(self._run(self._spec.cancel_call(permit_id)))

    def state(self) -> dict[str, DimensionState]:
        """Each dimension's bucket now, as Redis sees it."""
        return self._spec.parse_state(self._run(self._spec.state_call()))


class Permit(_core.PermitData):
    """Admission for one call; settle it with the real usage when the call is done.

    Used as a context manager, leaving the block by an exception before a
    settle cancels the permit (the call is taken not to have gone out).
    """

    def __init__(self, limiter: Limiter, data: _core.PermitData) -> None:
        super().__init__(**vars(data))
        self.limiter = limiter

    def settle(self, **actual: object) -> Settlement:
        """Charge what the call really used, once.

        Each given dimension gets back ``reserved - actual`` (or is debited the
        excess, going into debt so later callers wait); dimensions not given
        keep their reservation. A second settle of the same permit, from this
        process or any other, changes nothing and reports ``"unknown"``.
        """
        if self.backed:
            self.settlement = self.limiter.settle(self.id, **actual)
        else:
            self.settlement = Settlement("unbacked")
        return self.settlement

    def cancel(self) -> Settlement:
        """Give back everything the permit took (the call never went out), also in line."""
        if self.backed:
            self.settlement = self.limiter.cancel(self.id)
        else:
            self.settlement = Settlement("unbacked")
        return self.settlement

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.settlement is None:
            try:
                self.cancel()
            except Exception:
                _core.log.exception("could not cancel permit %s of %r", self.id, self.limiter.name)
