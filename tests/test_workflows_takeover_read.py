"""A run taken over from a node that lapsed is driven from its rows as Redis holds them
under the taker's lease (corral/cluster/clustercalls.py, `orphans`). The whole suite's
failure of test_cluster_workflows' kill -9 mid-map: a map item's work done by two tasks
of two ids. The driving node, kept off a core past its TTL, still held the run's fence
and wrote the item's new row (with its task's submit) after the taker had read the run's
rows and before the taker's take: the taker drove the run from that read, found the item
without a row and made it a second task. Here the taker's read of the run's steps is
answered only once the lapsed node's write has landed (a gate at a proxy of the test's
own, on the taker's connection), against a real redis-server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from corral import jsonrpc
from corral.cluster.clustercalls import ClusterCalls
from corral.cluster.connection import connect
from corral.cluster.keys import Keys
from corral.cluster.membership import Membership
from corral.cluster.scripts import Scripts
from corral.cluster.trust import Trust
from corral.jsonrpc import RpcError
from corral.supervisor.config import ClusterSettings
from corral.supervisor.durable import CallRecord, StepRow
from corral.supervisor.durable.store import MemoryStore

from .cluster.proxy import Gate, Proxy
from .redis_harness import RedisServer
from .test_workflows_ended_rows import redis  # noqa: F401 - the fixture, shared

K = Keys("t")
KEY = b"k" * 32
RUN_ID = "0190a5c0-0000-7000-8000-0000000000f1"
FIRST = StepRow("s01", -1, "succeeded", "0190a5c0-0000-7000-8000-0000000000f2", 1.0, 2.0)
# the map's item whose row the lapsed node writes while the taker's read is under way
ITEM = StepRow("s10", 21, "running", "0190a5c0-0000-7000-8000-0000000000f3", 3.0)
TTL, BEAT = 0.5, 0.2


@dataclass
class Node:
    calls: ClusterCalls
    membership: Membership


async def _node(name: str, url: str) -> Node:
    settings = ClusterSettings(redis=url, name="t", node=name, node_ttl=TTL, beat=BEAT)
    client = connect(settings, name)
    membership = Membership(Scripts(client), K, Trust(None, "t", print), settings, name,
                            lambda: (1, 0, {}), print)
    await membership.join()
    return Node(ClusterCalls(Scripts(client), K, Trust(KEY, "t", print), membership,
                             MemoryStore()), membership)


def _record() -> CallRecord:
    return CallRecord(RUN_ID, "workflow", "long", b'{"steps":[]}', None, "running", 1.0)


async def _lapsed(a: Node, b: Node, proxy: Proxy) -> Gate:
    """a drives the run and lapses (it beats no more: kept off a core, its liveness key
    gone, its lease kept); b settled: its beat would take the run. The gate is on b's
    read of the run's steps."""
    await a.calls.save_call(_record())
    await a.calls.save_steps(RUN_ID, [FIRST])
    await b.membership.step()  # (b's beat: Redis answers it)
    while not b.membership.settled() or await b.membership.alive([a.membership.consumer]):
        await asyncio.sleep(BEAT / 4)
    return proxy.gate(b"HGETALL", K.call_steps(RUN_ID).encode())


@pytest.mark.deadline(60)
async def test_a_run_taken_over_is_driven_from_its_rows_read_under_the_takers_lease(
        redis: RedisServer) -> None:  # noqa: F811 - the fixture
    proxy = Proxy(redis.port)
    a = await _node("a", redis.url)  # the run's driver, which lapses and writes on
    b = await _node("b", proxy.url)  # the taker, its reads through the gate
    try:
        gate = await _lapsed(a, b, proxy)
        taking = asyncio.ensure_future(b.calls.orphans())  # (b's beat)
        assert await asyncio.to_thread(gate.reached.wait, 30), "b never read the run"
        # a, on a core again, starts the item (its row as its task's submit writes it)
        await a.calls.save_steps(RUN_ID, [ITEM])
        gate.opened.set()
        (handover,) = await taking
        assert handover.holder == a.membership.consumer
        assert handover.record.rows == {("s01", -1): FIRST, ("s10", 21): ITEM}
        assert b.calls.local.load(RUN_ID) == handover.record
        with pytest.raises(RpcError) as refused:  # (a's writes after the take)
            await a.calls.save_steps(RUN_ID, [StepRow("s10", 22, "running", "x", 4.0)])
        lease = a.calls.lost[RUN_ID]
        assert (refused.value.code, refused.value.message) == (jsonrpc.CONFLICT, (
            f"call {RUN_ID} not kept: it is no longer this node's (its lease as "
            f"{lease.holder}, fence {lease.token}): another node took it over"))
    finally:
        for n in (a, b):
            await n.calls.close()
            await n.calls.redis.aclose()
        proxy.close()


@pytest.mark.deadline(60)
async def test_a_run_whose_rows_a_redis_writer_changed_before_the_take_is_let_go(
        redis: RedisServer) -> None:  # noqa: F811 - the fixture
    """(Its read under the lease finds a row no node of the cluster wrote: the run is
    not driven, and the lease is let go, as the read before the take lets it be.)"""
    proxy = Proxy(redis.port)
    a = await _node("a", redis.url)
    b = await _node("b", proxy.url)
    try:
        gate = await _lapsed(a, b, proxy)
        taking = asyncio.ensure_future(b.calls.orphans())
        assert await asyncio.to_thread(gate.reached.wait, 30), "b never read the run"
        await a.calls.redis.hset(K.call_steps(RUN_ID), "21\ns10", b"forged [1]")
        gate.opened.set()
        assert await taking == []
        assert RUN_ID not in b.calls.leases and b.calls.local.load(RUN_ID) is None
        # (its holder b's incarnation, whose own later beats find it so again)
        assert await a.calls.redis.hget(K.call(RUN_ID), "holder") == \
            b.membership.consumer.encode()
    finally:
        for n in (a, b):
            await n.calls.close()
            await n.calls.redis.aclose()
        proxy.close()
