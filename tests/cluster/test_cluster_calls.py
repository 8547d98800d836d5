"""Durable calls in Redis (cluster/clustercalls.py) against a real redis-server, each rule
alone: a call and its rows read back whole by another node; a call is taken from a dead
holder only, never from a live one; the late writes of a holder whose lease was taken
are refused by the store, atomically, leaving the successor's rows as they were; a
record or row not signed with the cluster key is refused by name and never taken."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis as redis_py

from corral.cluster.clustercalls import ClusterCalls, field_of
from corral.cluster.connection import connect
from corral.cluster.keys import Keys
from corral.cluster.membership import Membership
from corral.cluster.scripts import Scripts
from corral.cluster.trust import Trust
from corral.jsonrpc import CONFLICT, UNAVAILABLE, RpcError
from corral.supervisor.config import ClusterSettings
from corral.supervisor.durable import CallRecord, StepRow
from corral.supervisor.durable.store import MemoryStore

from ..redis_harness import RedisServer

K = Keys("t")
KEY = b"k" * 32
CALL_ID = "0190a5c0-0000-7000-8000-000000000001"


@dataclass
class Node:
    calls: ClusterCalls
    membership: Membership
    local: MemoryStore
    said: list[str] = field(default_factory=list)


@pytest.fixture
async def pair(redis: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    """Nodes a and b of cluster t, joined, each with its own journal (memory)."""
    made = []
    for name in ("a", "b"):
        settings = ClusterSettings(redis=redis.url, name="t", node=name)
        client = connect(settings, name)
        said: list[str] = []
        membership = Membership(Scripts(client), K, Trust(None, "t", print), settings, name,
                                lambda: (1, 0, {}), said.append)
        await membership.join()
        membership.connected_since = -1e9  # (settled: as after a TTL and a beat of beats)
        local = MemoryStore()
        calls = ClusterCalls(Scripts(client), K, Trust(KEY, "t", said.append),
                             membership, local)
        made.append(Node(calls, membership, local, said))
    yield made[0], made[1]
    for n in made:
        await n.calls.redis.aclose()


def record(status: str = "running") -> CallRecord:
    return CallRecord(CALL_ID, "workflow", "wf", b'{"steps":[]}', {"n": 3}, status, 1.0,
                      tenant="acme", deadline=99.0, agents=["w"])


def row(step: str, item: int, output: object = None, status: str = "succeeded") -> StepRow:
    return StepRow(step, item, status, f"task-{step}-{item}", 2.0, 3.0, output)


async def killed(n: Node) -> None:
    """Its incarnation dead to the cluster (its liveness key gone, as at its TTL)."""
    await n.calls.redis.delete(K.alive(n.membership.consumer))


async def test_a_call_and_its_rows_are_read_back_whole_on_another_node(
        pair: tuple[Node, Node]) -> None:
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("first", -1, {"x": 1}), row("each", 0, [1, 2]),
                                        row("each", 1, None, "running")])
    got = await b.calls.fetch(CALL_ID)
    assert got is not None
    assert (got.kind, got.name, got.input, got.tenant, got.deadline, got.agents) == (
        "workflow", "wf", {"n": 3}, "acme", 99.0, ["w"])
    assert got.rows == {("first", -1): row("first", -1, {"x": 1}),
                        ("each", 0): row("each", 0, [1, 2]),
                        ("each", 1): row("each", 1, None, "running")}
    assert a.local.load(CALL_ID) is not None  # and a's journal has its copy


async def test_a_live_holders_call_is_not_taken_a_dead_ones_is_once(
        pair: tuple[Node, Node]) -> None:
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("first", -1, "out")])
    assert await b.calls.orphans() == []  # a beats on
    await killed(a)
    taken = await b.calls.orphans()
    assert [(t.record.call_id, t.holder) for t in taken] == [(CALL_ID, "a/1")]
    assert taken[0].record.rows[("first", -1)].task_id == "task-first--1"
    assert b.local.output(CALL_ID, "first", -1) == "out"  # copied into b's journal
    assert await b.calls.orphans() == []  # b holds it now
    # an ended call is nobody's to take
    await b.calls.save_call(record("succeeded"))
    assert await b.calls.redis.zrange(K.calls_running, 0, -1) == []
    assert await b.calls.redis.zrange(K.calls("workflow"), 0, -1) == [CALL_ID.encode()]


async def test_a_holders_late_writes_after_a_takeover_are_refused(
        pair: tuple[Node, Node]) -> None:
    """a is frozen past its TTL; b takes its call and writes; a, thawed, writes a step
    and the call's end: both refused by Redis, b's rows and status as b left them."""
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("first", -1, "a's")])
    await killed(a)
    assert len(await b.calls.orphans()) == 1
    await b.calls.save_steps(CALL_ID, [row("second", -1, "b's")])
    with pytest.raises(RpcError) as late:
        await a.calls.save_steps(CALL_ID, [row("second", -1, "a's late")])
    assert late.value.code == CONFLICT
    assert late.value.message == (
        f"call {CALL_ID} not kept: it is no longer this node's (its lease as a/1, fence "
        "1): another node took it over")
    with pytest.raises(RpcError) as later:  # the call's end too, said the same
        await a.calls.save_call(record("failed"))
    assert later.value.message == late.value.message
    got = await b.calls.fetch(CALL_ID)
    assert got is not None and got.status == "running"
    assert got.rows[("second", -1)].output == "b's"
    assert a.local.load(CALL_ID).rows.get(("second", -1)) is None  # type: ignore[union-attr]
    assert (a.calls.fenced, b.calls.taken) == (1, 1)


async def test_a_holders_late_writes_made_at_once_are_each_refused_by_name(
        pair: tuple[Node, Node]) -> None:
    """A thawed holder's map writes its items' rows at once: every one is refused with
    the takeover's words, none with an error of the node's own bookkeeping (the second
    used to raise KeyError, its driver stopping with the run's id as its reason)."""
    a, b = pair
    await a.calls.save_call(record())
    await killed(a)
    assert len(await b.calls.orphans()) == 1
    got = await asyncio.gather(*(a.calls.save_steps(CALL_ID, [row("map", i, "a's late")])
                                 for i in range(4)), return_exceptions=True)
    words = (f"call {CALL_ID} not kept: it is no longer this node's (its lease as a/1, "
             "fence 1): another node took it over")
    assert [(type(g), getattr(g, "message", g)) for g in got] == [(RpcError, words)] * 4
    assert a.calls.fenced == 4


@pytest.mark.parametrize("forge", ["record", "row"])
async def test_a_forged_or_unsigned_call_is_refused_by_name_and_not_taken(
        pair: tuple[Node, Node], forge: str) -> None:
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("first", -1, "out")])
    await killed(a)
    r = a.calls.redis
    if forge == "record":  # a Redis writer's record: any input, a MAC made without the key
        kept = await r.hget(K.call(CALL_ID), "rec")
        await r.hset(K.call(CALL_ID), "rec", b"0" * 64 + kept[64:].replace(b'"n":3', b'"n":4'))
        what = "record"
    else:  # a row with no MAC at all
        await r.hset(K.call_steps(CALL_ID), field_of("first", -1),
                     b' ["first",-1,"succeeded","t",2.0,3.0,"forged",null]')
        what = "step '-1\\nfirst'"
    assert await b.calls.orphans() == []
    assert b.calls.trust.refused["calls"] == 1
    assert any(f"cluster: refused call {what} of call {CALL_ID} from Redis" in s and
               "the call is not driven on it" in s for s in b.said), b.said
    assert await r.hget(K.call(CALL_ID), "holder") == b"a/1"  # not taken


async def test_a_call_whose_driver_stopped_is_taken_again_by_its_node_alone(
        pair: tuple[Node, Node]) -> None:
    """A driver that stopped on a write Redis did not take (it was away) lets its call
    go: the next beat of its own node takes it again, under a new fence; another live
    node does not, while its holder lives."""
    a, b = pair
    await a.calls.save_call(record())
    first = await a.calls.redis.hget(K.call(CALL_ID), "fence")
    a.calls.stopped(CALL_ID)
    assert await b.calls.orphans() == []
    taken = await a.calls.orphans()
    assert [(t.record.call_id, t.holder) for t in taken] == [(CALL_ID, "a/1")]
    assert int(await a.calls.redis.hget(K.call(CALL_ID), "fence")) > int(first)
    await a.calls.save_steps(CALL_ID, [row("first", -1, "again")])
    got = await b.calls.fetch(CALL_ID)
    assert got is not None and got.rows[("first", -1)].output == "again"


def joining(redis: RedisServer, name: str, ttl: float) -> Node:
    """A node of cluster t whose membership has not joined yet (a daemon just READY)."""
    settings = ClusterSettings(redis=redis.url, name="t", node=name, node_ttl=ttl,
                               beat=ttl / 3)
    client = connect(settings, name)
    membership = Membership(Scripts(client), K, Trust(None, "t", print), settings, name,
                            lambda: (1, 0, {}), lambda _: None)
    return Node(ClusterCalls(Scripts(client), K, Trust(KEY, "t", lambda _: None),
                             membership, MemoryStore()), membership, MemoryStore())


async def test_a_call_started_before_the_nodes_join_is_leased_to_it_once_joined(
        redis: RedisServer) -> None:
    """A run started on a node that has not joined yet waits for the join, and its lease
    names the incarnation that joined: not '' (no live holder), which the next node to
    look took over at once."""
    c = joining(redis, "c", 10.0)
    try:
        saving = asyncio.ensure_future(c.calls.save_call(record()))
        # not kept while the node is no member (its Redis round trips take milliseconds)
        done, _ = await asyncio.wait({saving}, timeout=0.3)
        assert not done
        assert await c.calls.redis.exists(K.call(CALL_ID)) == 0
        await c.membership.join()
        await asyncio.wait_for(saving, 10)
        assert await c.calls.redis.hget(K.call(CALL_ID), "holder") == b"c/1"
    finally:
        await c.membership.leave()
        await c.calls.redis.aclose()


async def test_a_call_on_a_node_that_never_joins_is_refused_and_nothing_kept(
        redis: RedisServer) -> None:
    c = joining(redis, "c", 0.3)
    try:
        with pytest.raises(RpcError) as refused:
            await c.calls.save_call(record())
        assert (refused.value.code, refused.value.message) == (UNAVAILABLE, (
            f"call {CALL_ID} not kept: this node is not a member of its cluster (joining) "
            "within 0.3 s"))
        # read by a client of its own: the node's connects within its beat, which this
        # short TTL makes shorter than a loaded host's loop took (a fresh clone's run)
        direct = redis_py.Redis.from_url(redis.url)
        try:
            assert direct.exists(K.call(CALL_ID)) == 0
        finally:
            direct.close()
        assert c.local.load(CALL_ID) is None
    finally:
        await c.calls.redis.aclose()
