"""A call's step's outcome told at once on the node that ran its task and carried by the
call's next write (decision 795: outbox.py's `hold`, `take`, `landed`, `send_held`;
rides.py's guard), against a real redis-server: the outcome held, not in the record
until the next step's ride carries it, the FINISH first in the ride's pipeline; a ride
whose carried outcome the record refuses (the task taken over) writes no row and makes
no task; an outcome held when the call ends goes first, and its refusal refuses the
end; one no write carries goes as any other after a beat. The runs' edges on daemons
are bench_cluster_runs's and test_cluster_workflows's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from corral.cluster import records
from corral.cluster.clustercalls import ClusterCalls, field_of
from corral.cluster.connection import connect
from corral.cluster.membership import Membership
from corral.cluster.outbox import Outbox
from corral.cluster.queue import ClusterTask
from corral.cluster.rides import REFUSED, Ride
from corral.cluster.scripts import Scripts
from corral.cluster.trust import Trust
from corral.jsonrpc import CONFLICT, RpcError
from corral.supervisor.config import ClusterSettings
from corral.supervisor.durable.store import MemoryStore
from corral.supervisor.tasks import TaskFinished, TaskStatus
from corral.supervisor.tasks.payload import Output

from ..redis_harness import RedisServer
from .claimscript import claim_script
from .test_cluster_calls import CALL_ID, KEY, K, Node, record, row
from .test_cluster_held_rows import _status
from .test_cluster_rides import TASK as NEXT
from .test_cluster_rides import _running, _submit

DONE = "task-first--1"  # the task of row("first", -1): ended on a


class Queue:
    def wake(self, agent: str) -> None:
        """(a freed slot: nothing reads here)"""


@pytest.fixture
async def a(redis: RedisServer) -> AsyncIterator[tuple[Node, Outbox]]:
    """Node a of cluster t, its calls' held outcomes sent by its outbox (beat 0.2 s)."""
    settings = ClusterSettings(redis=redis.url, name="t", node="a")
    client = connect(settings, "a")
    said: list[str] = []
    scripts = Scripts(client)
    membership = Membership(scripts, K, Trust(None, "t", print), settings, "a", lambda: (1, 0, {}),
                            said.append)
    await membership.join()
    trust = Trust(KEY, "t", said.append)
    outbox = Outbox(scripts, K, trust, "a", 0.2, Queue(), said.append,  # type: ignore[arg-type]
                    60)
    local = MemoryStore()
    calls = ClusterCalls(scripts, K, trust, membership, local,
                         settled={DONE}.__contains__, outcomes_first=outbox.send_held)
    yield Node(calls, membership, local, said), outbox
    await calls.close()
    await client.aclose()


async def _ended_here(n: Node, outbox: Outbox) -> ClusterTask:
    """DONE submitted and claimed by a, then ended there (succeeded, output 7), its
    outcome held for the call's next write."""
    s = n.calls.scripts
    stream = K.stream("default", "w", 0)
    await s.submit(keys=[K.task(DONE), stream, K.priorities("default", "w"), K.agents,
                         K.live],
                   args=[DONE, "w", b"{}", 0, "", "", "1.0", "a", 0, "0", "", "", "",
                         "", "default", "mac"])
    entry = await n.calls.redis.hget(K.task(DONE), "entry")
    token, *_ = await claim_script(s)(
        keys=[K.task(DONE), K.attempts(DONE), K.fence, stream],
        args=[n.membership.consumer, "a", "2.0", entry, records.claimed_attempt("a", 2.0), 0,
              "30.0", "default"])
    task = ClusterTask(DONE, "w", msgspec.Raw(b"{}"), 0, 30.0, 0, 1.0, token=token,
                       base=0, entry=entry.decode(), stream=stream,
                       consumer=n.membership.consumer)
    task.status, task.out, task.finished = TaskStatus.SUCCEEDED, Output(msgspec.Raw(b"7"), 1), 3.0
    assert outbox.finished(TaskFinished(task), hold=True) is not None
    return task


async def _ride(n: Node, outbox: Outbox, ride: Ride) -> list[Any]:
    """The ride's pipeline as ClusterTasks._put sends it: the carried FINISH calls, then
    the riding submit (no claim) with their checks."""
    carried = outbox.take(ride.tasks)
    submit, keys, args = _submit(n, ride, claim=False, task=NEXT)
    ended = [(K.task(t.id), t.token, a[2]) for t, a in carried]
    args[-8:-5] = ride.args(ended)
    answers = await n.calls.scripts.acknowledged(
        [*(outbox.call_of(*c) for c in carried), (submit, keys, args)])
    for c, answer in zip(carried, answers, strict=False):
        outbox.landed(c, answer)
    return answers


async def test_an_outcome_told_here_is_carried_by_the_next_steps_ride(
        a: tuple[Node, Outbox]) -> None:
    n, outbox = a
    await n.calls.save_call(record())
    await _ended_here(n, outbox)
    assert await n.calls.redis.hget(K.task(DONE), "status") == b"running"  # held here
    await n.calls.save_steps(CALL_ID, [row("first", -1, 7)])  # held too
    ride = n.calls.ride(CALL_ID, _running("second"), lambda: None)
    assert ride.tasks == [DONE]
    assert await _ride(n, outbox, ride) == [1, 1]
    assert await n.calls.redis.hmget(K.task(DONE), "status", "output") == [
        b"succeeded", b"7"]
    assert await _status(n, "first", -1) == "succeeded"
    assert await _status(n, "second", -1) == "running"
    assert await n.calls.redis.hget(K.task(NEXT), "status") == b"queued"
    assert (outbox.held, list(outbox.pending), outbox.published) == ({}, [], 1)


async def test_a_ride_whose_carried_outcome_is_refused_writes_nothing(
        a: tuple[Node, Outbox]) -> None:
    """DONE taken over from a while a was paused (its record under another claim's
    fence): the FINISH refused, and the ride with it: no ended row, no next row, no
    task; the outcome goes back to the outbox, whose send counts it refused."""
    n, outbox = a
    await n.calls.save_call(record())
    await _ended_here(n, outbox)
    await n.calls.redis.hset(K.task(DONE), "fence", 99)
    await n.calls.save_steps(CALL_ID, [row("first", -1, 7)])
    answers = await _ride(n, outbox, n.calls.ride(CALL_ID, _running("second"),
                                                  lambda: None))
    assert answers == [0, REFUSED]
    assert await n.calls.redis.hmget(K.task(DONE), "status", "fence") == [b"running", b"99"]
    assert (await _status(n, "first", -1), await _status(n, "second", -1)) == (None, None)
    assert await n.calls.redis.exists(K.task(NEXT)) == 0
    assert len(outbox.pending) == 1
    await outbox.send()
    assert (outbox.refused, outbox.published, list(outbox.pending)) == (1, 0, [])


async def test_an_outcome_held_at_the_calls_end_goes_first(a: tuple[Node, Outbox]) -> None:
    n, outbox = a
    await n.calls.save_call(record())
    await _ended_here(n, outbox)
    await n.calls.save_steps(CALL_ID, [row("first", -1, 7)])
    await n.calls.save_call(record("succeeded"))
    assert await n.calls.redis.hget(K.task(DONE), "status") == b"succeeded"
    assert await _status(n, "first", -1) == "succeeded"
    assert await n.calls.redis.hget(K.call(CALL_ID), "status") == b"succeeded"
    assert (outbox.held, outbox.published, n.calls.held_tasks) == ({}, 1, {})


async def test_a_refused_held_outcome_refuses_the_calls_end(
        a: tuple[Node, Outbox]) -> None:
    n, outbox = a
    await n.calls.save_call(record())
    await _ended_here(n, outbox)
    await n.calls.redis.hset(K.task(DONE), "fence", 99)
    await n.calls.save_steps(CALL_ID, [row("first", -1, 7)])
    with pytest.raises(RpcError) as refused:
        await n.calls.save_call(record("succeeded"))
    assert (refused.value.code, refused.value.message) == (CONFLICT, (
        f"call {CALL_ID} not kept: it is no longer this node's (its lease as "
        f"{n.membership.consumer}, fence 1): another node took it over"))
    assert await n.calls.redis.hget(K.call(CALL_ID), "status") == b"running"
    assert await _status(n, "first", -1) is None
    assert (outbox.refused, outbox.turned, n.calls.fenced) == (1, {}, 1)


async def test_an_outcome_no_write_carries_goes_after_a_beat(
        a: tuple[Node, Outbox]) -> None:
    n, outbox = a
    await _ended_here(n, outbox)
    while outbox.held:  # released by its timer (a beat: 0.2 s)
        await asyncio.sleep(0.01)
    assert [t.id for t, _ in outbox.pending] == [DONE]
    await outbox.send()
    assert await n.calls.redis.hget(K.task(DONE), "status") == b"succeeded"
    assert outbox.published == 1


async def test_a_failed_rides_outcome_goes_before_its_rows_held_again(
        a: tuple[Node, Outbox]) -> None:
    """A ride whose submit failed (Redis did not answer, decision 796): its carried
    outcome waits in the outbox again and its ended row is held again; the call's end
    sends the outcome first, then the row with the end."""
    n, outbox = a
    await n.calls.save_call(record())
    await _ended_here(n, outbox)
    await n.calls.save_steps(CALL_ID, [row("first", -1, 7)])
    ride = n.calls.ride(CALL_ID, _running("second"), lambda: None)
    [carried] = outbox.take(ride.tasks)
    outbox.landed(carried, ConnectionError("the submit was not answered"))
    ride.unsent()
    assert (list(n.calls.held[CALL_ID]), n.calls.held_tasks, n.calls.held_again) == (
        [field_of("first", -1)], {CALL_ID: [DONE]}, 1)
    await n.calls.save_call(record("succeeded"))
    assert await n.calls.redis.hget(K.task(DONE), "status") == b"succeeded"
    assert await _status(n, "first", -1) == "succeeded"
    assert await _status(n, "second", -1) is None
    assert await n.calls.redis.hget(K.call(CALL_ID), "status") == b"succeeded"
    assert (outbox.published, list(outbox.pending), n.calls.held, n.calls.held_tasks) == (
        1, [], {}, {})
