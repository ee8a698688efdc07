"""A real Redis Cluster (three primaries started by the test) runs the same scripts.

Every key of a quota shares one hash tag, so each script call touches one slot
and redis-py routes it to the node that owns it.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

import ratelimit.asyncio
from ratelimit import Budget, BudgetExceeded, Limiter, LimiterGroup, Rate


def test_quotas_on_different_nodes(cluster: redis.cluster.RedisCluster) -> None:
    limiters = [Limiter(cluster, f"quota-{i}", requests=Rate(2, per=3600)) for i in range(12)]
    nodes = {
        cluster.get_node_from_key(lim._scope.keys.rates).name  # type: ignore[no-untyped-call]
        for lim in limiters
    }
    assert len(nodes) == 3  # the quotas really are spread over the nodes
    for limiter in limiters:
        permit = limiter.acquire()
        assert limiter.try_acquire() is not None
        assert limiter.try_acquire() is None
        assert permit.settle(requests=0).applied
        assert limiter.state().rate("requests").available == pytest.approx(1, abs=0.01)


def test_keys_of_a_quota_share_one_slot(cluster: redis.cluster.RedisCluster) -> None:
    limiter = Limiter(cluster, "team-a", requests=Rate(5, per=60), tokens=Rate(100, per=60))
    limiter.acquire(tokens=10)
    part = limiter._plan.parts[0]
    keys = part.keys()
    slots = {cluster.keyslot(k) for k in keys}  # type: ignore[no-untyped-call]
    assert len(slots) == 1


def test_noscript_recovers_on_every_node(
    cluster: redis.cluster.RedisCluster, cluster_nodes: list[int]
) -> None:
    limiters = [Limiter(cluster, f"q{i}", requests=Rate(5, per=60)) for i in range(6)]
    for limiter in limiters:
        limiter.acquire()
    for port in cluster_nodes:
        node = redis.Redis(port=port)
        node.script_flush()
        node.close()
    for limiter in limiters:
        assert limiter.acquire().settle().applied


async def test_async_cluster_client(cluster_nodes: list[int]) -> None:
    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_nodes[0])
    try:
        limiter = ratelimit.asyncio.Limiter(client, "async-q", requests=Rate(1, per=3600))
        permit = await limiter.acquire()
        assert await limiter.try_acquire() is None
        assert (await permit.cancel()).applied
        assert await limiter.try_acquire() is not None
    finally:
        await client.aclose()


def test_a_group_across_nodes_leaks_nothing(cluster: redis.cluster.RedisCluster) -> None:
    model = Limiter(cluster, "model", slot="node-a", tokens=Rate(100, per=3600))
    team = Limiter(cluster, "team", slot="node-b", usd=Budget("1.00", per="day"))
    assert cluster.get_node_from_key(model._scope.keys.rates) != cluster.get_node_from_key(  # type: ignore[no-untyped-call]
        team._scope.keys.rates
    )
    group = LimiterGroup(model, team)
    assert len(group._plan.parts) == 2  # one script call per slot

    permit = group.acquire(tokens=30, usd="0.60")
    assert model.state().rate("tokens").available == pytest.approx(70, abs=0.1)
    # The team's budget refuses the next one after the model scope admitted it:
    # the model's tokens come back, so nothing leaks.
    with pytest.raises(BudgetExceeded):
        group.acquire(tokens=30, usd="0.60")
    assert model.state().rate("tokens").available == pytest.approx(70, abs=0.1)

    assert permit.settle(tokens=10, usd="0.25").applied
    assert model.state().rate("tokens").available == pytest.approx(90, abs=0.1)
    budget = team.state().budget("usd")
    assert (budget.spent, budget.reserved) == (Decimal("0.25"), Decimal(0))
