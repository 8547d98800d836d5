"""A step's row that ended with its cluster task is held and rides with its call's next
write (cluster/clustercalls.py, decision 750), against a real redis-server: in the node's
journal at once, in Redis with the next step's row (one write), with the call's end, or
alone after HOLD_FOR; a row whose end no task's record keeps is written at once; a holder
whose call was taken over meanwhile writes none of what it held, and the successor finds
the step running under its task's id (which it submits again, and is answered with the
task the cluster has); a write Redis did not answer holds its rows again (decision 796):
a flush with Redis killed, then back, and a failed ride's, under newer ones."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from corral.cluster import clustercalls
from corral.cluster.clustercalls import HOLD_FOR, ClusterCalls, field_of
from corral.cluster.connection import connect
from corral.cluster.membership import Membership
from corral.cluster.scripts import Scripts
from corral.cluster.trust import Trust
from corral.jsonrpc import CONFLICT, RpcError
from corral.supervisor.config import ClusterSettings
from corral.supervisor.durable.store import MemoryStore

from ..redis_harness import RedisServer
from .test_cluster_calls import CALL_ID, KEY, K, Node, killed, record, row

SETTLED = {"task-first--1", "task-each-0", "task-each-1"}  # the step tasks that ended


@pytest.fixture
async def pair(redis: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    """Nodes a and b of cluster t, each told which step tasks ended (SETTLED)."""
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
                             membership, local, settled=SETTLED.__contains__)
        made.append(Node(calls, membership, local, said))
    yield made[0], made[1]
    for n in made:
        await n.calls.close()
        await n.calls.redis.aclose()


async def _status(n: Node, step: str, item: int) -> str | None:
    got = await n.calls.fetch(CALL_ID)
    assert got is not None
    kept = got.rows.get((step, item))
    return None if kept is None else kept.status


async def test_an_ended_row_rides_with_the_next_steps_row(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("first", -1, "out")])
    assert a.local.output(CALL_ID, "first", -1) == "out"  # the journal's at once
    assert await _status(b, "first", -1) is None  # Redis's with the next write
    await a.calls.save_steps(CALL_ID, [row("second", -1, None, "running")])
    got = await b.calls.fetch(CALL_ID)
    assert got is not None
    assert got.rows == {("first", -1): row("first", -1, "out"),
                        ("second", -1): row("second", -1, None, "running")}
    assert a.calls.held == {}


async def test_held_rows_go_with_the_calls_end(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("each", 0, 1)])
    await a.calls.save_steps(CALL_ID, [row("each", 1, 2)])
    await a.calls.save_call(record("succeeded"))
    got = await b.calls.fetch(CALL_ID)
    assert got is not None and got.status == "succeeded"
    assert {k: r.output for k, r in got.rows.items()} == {("each", 0): 1, ("each", 1): 2}


async def test_a_held_row_with_no_write_after_it_goes_alone(pair: tuple[Node, Node]) -> None:
    """(A parallel branch's end while the others run on.)"""
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("first", -1, "out")])
    assert await _status(b, "first", -1) is None
    deadline = time.monotonic() + HOLD_FOR * 100
    while a.calls.held or a.calls.flushing:  # (the flush's write under way)
        assert time.monotonic() < deadline, a.calls.held
        await asyncio.sleep(HOLD_FOR / 10)
    assert await _status(b, "first", -1) == "succeeded"


async def test_a_row_whose_end_no_task_keeps_is_written_at_once(
        pair: tuple[Node, Node]) -> None:
    """(A row ended otherwise: a signal's, a nested run's, one the run's end cancelled.)"""
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("other", -1, "now")])
    assert await _status(b, "other", -1) == "succeeded"
    assert a.calls.held == {}


async def test_a_holder_taken_over_writes_nothing_it_held(
        pair: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """a, frozen past its TTL, holds an ended row (it does not know it is dead); b takes
    the call: it finds the step running under its task's id. a, thawed, writes its next
    row: refused, and what it held with it; b's rows stay as b found them. (a shares
    this loop with b: frozen, its hold's timer does not fire while b takes the call. On
    a loaded host a hold of HOLD_FOR flushed between b's reads: a was then no holder
    taken over.)"""
    monkeypatch.setattr(clustercalls, "HOLD_FOR", 3600.0)
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("first", -1, None, "running")])
    await killed(a)
    await a.calls.save_steps(CALL_ID, [row("first", -1, "a's")])
    taken = await b.calls.orphans()
    assert [(t.record.rows[("first", -1)].status, t.record.rows[("first", -1)].task_id)
            for t in taken] == [("running", "task-first--1")]
    with pytest.raises(RpcError) as late:
        await a.calls.save_steps(CALL_ID, [row("second", -1, None, "running")])
    assert (late.value.code, late.value.message) == (CONFLICT, (
        f"call {CALL_ID} not kept: it is no longer this node's (its lease as a/1, fence "
        "1): another node took it over"))
    assert await _status(b, "first", -1) == "running"
    assert await _status(b, "second", -1) is None
    assert (a.calls.fenced, a.calls.held) == (1, {})


async def _until(ok: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HOLD_FOR * 100
    while not ok():
        assert time.monotonic() < deadline
        await asyncio.sleep(HOLD_FOR / 10)


async def test_held_rows_a_failed_flush_took_are_held_again_and_reach_redis(
        pair: tuple[Node, Node], redis: RedisServer) -> None:
    """Redis killed as a held row goes alone, then back (decision 796): the row is held
    again, goes alone once Redis answers, and the call goes on and ends with every
    step's row ended in Redis."""
    a, b = pair
    await a.calls.redis.config_set("appendfsync", "always")  # (a kill loses no write)
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("each", 0, None, "running"),
                                       row("each", 1, None, "running")])
    await a.calls.save_steps(CALL_ID, [row("each", 0, 1)])
    redis.kill()  # (before the flush's timer: it finds Redis away)
    await _until(lambda: a.calls.held_again > 0)
    assert (a.calls.held_again, list(a.calls.held), list(a.calls.held[CALL_ID])) == (
        1, [CALL_ID], [field_of("each", 0)])
    redis.start()  # (before the flush tried again: it finds Redis back)
    await _until(lambda: not a.calls.held and not a.calls.flushing)
    assert (await _status(b, "each", 0), await _status(b, "each", 1)) == (
        "succeeded", "running")
    await a.calls.save_steps(CALL_ID, [row("each", 1, 2)])
    await a.calls.save_call(record("succeeded"))
    got = await b.calls.fetch(CALL_ID)
    assert got is not None
    assert (got.status, {k: (r.status, r.output) for k, r in got.rows.items()}) == (
        "succeeded", {("each", 0): ("succeeded", 1), ("each", 1): ("succeeded", 2)})
    assert (a.calls.held, a.calls.held_tasks, a.calls.held_again) == ({}, {}, 1)


async def test_a_failed_rides_held_rows_are_held_again_under_newer_ones(
        pair: tuple[Node, Node]) -> None:
    """A ride whose submit failed (Ride.unsent): the held rows it took are held again,
    but for its own row's step and one held anew since, whose newer row stays."""
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("each", 0, 1)])
    await a.calls.save_steps(CALL_ID, [row("each", 1, 2)])
    await a.calls.save_steps(CALL_ID, [row("first", -1, "old")])
    ride = a.calls.ride(CALL_ID, row("each", 1, None, "running"), lambda: None)
    assert a.calls.held == {}
    await a.calls.save_steps(CALL_ID, [row("first", -1, "new")])
    ride.unsent()
    assert (sorted(a.calls.held[CALL_ID]), a.calls.held_tasks[CALL_ID]) == (
        sorted([field_of("each", 0), field_of("first", -1)]),
        ["task-each-0", "task-each-1", "task-first--1"])
    await a.calls.save_call(record("succeeded"))
    got = await b.calls.fetch(CALL_ID)
    assert got is not None
    assert {k: r.output for k, r in got.rows.items()} == {
        ("each", 0): 1, ("first", -1): "new"}
    assert (a.calls.held, a.calls.held_again) == ({}, 1)
