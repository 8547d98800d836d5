"""A cluster run's end never reaches Redis before its last step's row (corral/cluster/
clustercalls.py). The CI's failure of test_attack_s7's unanswered submit: `runs.get` showed
the run `succeeded` with no output. On a cluster node the last step's ended row is held
(it rides with the call's next write, or goes alone after HOLD_FOR); on a loaded host the
engine's end came after HOLD_FOR, when the flush had taken the row and its write was still
on its way, and the end went alone and reached Redis first. A `runs.get` then copied the
run as Redis held it: `succeeded`, its last step still `running`, no output. Here the
flush's write is held back on its way to Redis (a test proxy of its own: the cluster's
proxy holds answers back, not commands), against a real redis-server. And the copy `runs.get`
makes: one commit of the node's journal, never over the rows of a driver that took the
run while the copy's read was under way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.cluster.clustercalls import ClusterCalls
from corral.cluster.connection import connect
from corral.cluster.keys import Keys
from corral.cluster.membership import Membership
from corral.cluster.scripts import Scripts
from corral.cluster.trust import Trust
from corral.daemon.calljournal import CallJournal
from corral.daemon.store import StateStore
from corral.supervisor.config import ClusterSettings
from corral.supervisor.durable import CallRecord, StepRow
from corral.supervisor.durable.store import DurableStore, MemoryStore

from .cluster.proxy import Proxy
from .redis_harness import REDIS_SERVER, RedisServer, redis_server

K = Keys("t")
KEY = b"k" * 32
RUN_ID = "0190a5c0-0000-7000-8000-0000000000e1"
LATE = 2.0  # seconds the flush's write is held back on its way to Redis
# the last step's task, which ended on the node (its row is held)
ENDED = "0190a5c0-0000-7000-8000-0000000000e2"


@dataclass
class Node:
    calls: ClusterCalls
    local: DurableStore
    membership: Membership


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    assert REDIS_SERVER is not None, "redis-server is not installed: . scripts/redis.sh"
    with redis_server(tmp_path / "redis") as server:
        yield server


async def _node(name: str, url: str, local: DurableStore | None = None) -> Node:
    settings = ClusterSettings(redis=url, name="t", node=name)
    client = connect(settings, name)
    membership = Membership(Scripts(client), K, Trust(None, "t", print), settings, name,
                            lambda: (1, 0, {}), print)
    await membership.join()
    local = local if local is not None else MemoryStore()
    return Node(ClusterCalls(Scripts(client), K, Trust(KEY, "t", print), membership, local,
                             settled=lambda task_id: task_id == ENDED), local, membership)


def _record(status: str) -> CallRecord:
    return CallRecord(RUN_ID, "workflow", "slow", b'{"steps":[]}', None, status, 1.0)


def _last(status: str, output: object = None) -> StepRow:
    return StepRow("last", -1, status, ENDED, 2.0, 3.0 if status != "running" else None,
                   output)


@pytest.mark.deadline(60)
async def test_a_runs_end_waits_for_its_last_rows_flush_under_way(
        redis: RedisServer) -> None:
    proxy = Proxy(redis.port)
    a = await _node("a", proxy.url)  # the run's driver, its writes through the proxy
    b = await _node("b", redis.url)  # a node that shows the run (`runs.get`)
    try:
        await a.calls.save_call(_record("running"))
        await a.calls.save_steps(RUN_ID, [_last("running")])  # (its task's submit's)
        # its end held, and flushed alone after HOLD_FOR: that write late to Redis
        late = proxy.gate(b'"succeeded","' + ENDED.encode(), answers=False, most=LATE)
        await a.calls.save_steps(RUN_ID, [_last("succeeded", 55)])
        assert a.local.output(RUN_ID, "last", -1) == 55  # (the node's journal at once)
        assert await asyncio.to_thread(late.reached.wait, 30), "the row was never flushed"
        assert a.calls.held == {}  # (the flush took the row: its write under way)
        await a.calls.save_call(_record("succeeded"))
        got = await b.calls.fetch(RUN_ID)
        assert got is not None
        assert (got.status, got.rows) == ("succeeded", {("last", -1): _last("succeeded", 55)})
        await b.calls.copy([RUN_ID])  # (as `runs.get` on b reads it)
        assert b.local.output(RUN_ID, "last", -1) == 55
    finally:
        for n in (a, b):
            await n.calls.close()
            await n.calls.redis.aclose()
        proxy.close()


@pytest.mark.deadline(60)
async def test_a_run_copied_from_redis_is_one_commit_of_the_nodes_journal(
        redis: RedisServer, tmp_path: Path) -> None:
    """(`runs.get` on a node that does not drive the run copies it from Redis: the call
    was one commit and its rows the next, and another caller's read between the two saw
    the run ended beside its last step as the node's copy had it, running.)"""
    store = StateStore(tmp_path / "corral.db")
    store.open_writer(on_error=print, on_notice=print)
    journal = CallJournal(store)
    a = await _node("a", redis.url)
    b = await _node("b", redis.url, journal)
    seen: set[tuple[str, str, object]] = set()

    def look() -> None:
        # one read transaction: its reads are one snapshot, as a reader's one statement is
        # (a commit the writer thread makes lands between two statements otherwise, and
        # the look would see a commit's halves that were never apart)
        store.db.execute("BEGIN")
        try:
            kept = journal.load(RUN_ID)
            assert kept is not None
            seen.add((kept.status, kept.rows[("last", -1)].status,
                      journal.output(RUN_ID, "last", -1)))
        finally:
            store.db.execute("COMMIT")

    async def looking() -> None:  # (another caller's reads, one every turn of the loop)
        while True:
            look()
            await asyncio.sleep(0)

    try:
        await a.calls.save_call(_record("running"))
        await a.calls.save_steps(RUN_ID, [_last("running")])
        await b.calls.copy([RUN_ID])  # (b showed it running)
        await a.calls.save_steps(RUN_ID, [_last("succeeded", 55)])
        await a.calls.save_call(_record("succeeded"))
        reader = asyncio.ensure_future(looking())
        await b.calls.copy([RUN_ID])
        reader.cancel()
        look()
        assert seen == {("running", "running", None), ("succeeded", "succeeded", 55)}
    finally:
        for n in (a, b):
            await n.calls.close()
            await n.calls.redis.aclose()
        await store.close_writer()
        store.close()


@pytest.mark.deadline(60)
async def test_a_copy_read_before_the_node_took_the_run_leaves_its_drivers_rows(
        redis: RedisServer) -> None:
    """(`runs.get` copies a run no driver holds here, as when its driver stopped: the
    beat may take it again while the copy's read is under way, and the driver's rows
    in the journal are then newer than what the read found.)"""
    proxy = Proxy(redis.port)
    a = await _node("a", proxy.url)
    try:
        await a.calls.save_call(_record("running"))
        await a.calls.save_steps(RUN_ID, [_last("running")])
        a.calls.stopped(RUN_ID)  # (its driver stopped: the lease let go)
        proxy.hold(LATE, b"HGETALL", K.call_steps(RUN_ID).encode())
        reading = asyncio.ensure_future(a.calls.copy([RUN_ID]))
        assert await a.calls.take(RUN_ID, a.membership.consumer)  # (the beat's)
        await a.calls.save_steps(RUN_ID, [_last("succeeded", 55)])  # (held)
        await reading
        assert a.local.output(RUN_ID, "last", -1) == 55
        kept = a.local.load(RUN_ID)
        assert kept is not None and kept.rows[("last", -1)].status == "succeeded"
    finally:
        await a.calls.close()
        await a.calls.redis.aclose()
        proxy.close()
