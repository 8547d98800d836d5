"""A second read of decision 1500 (a cluster turn's end in two steps: the end marks the
turn ended, and a node moves its session): what the ended turns' set (Keys.turns_ended)
makes a node do when it holds what no end wrote (a Redis writer's marker, a record gone),
when two nodes move one turn at once, and when a cancel meets the line's advance. Each
runs the real scripts on the test's own redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ResponseError

from corral import jsonrpc
from corral.cluster.clustersessions import SUBMIT, ClusterSessions, turn_args
from corral.cluster.keys import GROUP, Keys
from corral.cluster.reaper import take_over
from corral.cluster.scripts import CANCEL, RedisPart, Scripts
from corral.cluster.trust import Trust
from corral.jsonrpc import RpcError
from corral.supervisor.tasks.sessions import SessionKey, end_turns

T = Keys("t")
W = SessionKey("t1", "w", "s")
A, B, C = (f"0190a5c0-0000-7000-8000-00000000000{i}" for i in (1, 2, 3))
STREAM = T.stream("t1", "w", 0)


def sessions_of(client: Any, said: list[str] | None = None) -> ClusterSessions:
    return ClusterSessions(Scripts(client), T, Trust(None, "t", print), Any, None, Any,
                           print if said is None else said.append, Any)


async def turns(client: Any, cur: str, *line: str, status: str = "running") -> None:
    """Session s of agent w (tenant t1): `cur` holding its place with `status`, `line`
    queued behind it (out of the stream, entry 0-0)."""
    for tid, st, entry in ((cur, status, "1-1"), *((t, "queued", "0-0") for t in line)):
        await client.hset(T.task(tid), mapping={
            "agent": "w", "session": "s", "stenant": "t1", "status": st, "entry": entry,
            "stream": STREAM, "tenant": "t1"})
    await client.hset(T.session(W), mapping={"cur": cur, "created": 1.0, "tasks": 1,
                                             "ttl": 60})
    if line:
        await client.rpush(T.session_line(W), *line)


async def started(client: Any) -> list[bytes]:
    """The turns put in the agent's stream (started), in order."""
    return [f[b"task"] for _, f in await client.xrange(STREAM)]


async def test_two_nodes_moving_one_ended_turn_at_once_advance_the_line_once(
        client: Any) -> None:
    """A's end marked; two nodes (the outbox's and a beat's sweep) move it at once: B
    starts once, C still waits, and A is no longer marked."""
    await turns(client, A, B, C, status="succeeded")
    await client.sadd(T.turns_ended, A)
    await asyncio.gather(sessions_of(client).moved([A]), sessions_of(client).moved([A]))
    assert await started(client) == [B.encode()]
    assert await client.hget(T.session(W), "cur") == B.encode()
    assert await client.lrange(T.session_line(W), 0, -1) == [C.encode()]
    assert await client.smembers(T.turns_ended) == set()


async def test_a_waiting_turn_cancelled_as_the_line_advances_never_runs(
        client: Any) -> None:
    """A ended and B, first in its line, was cancelled: A's move ran before B's leave
    (B into the stream, holding the place); B's move then rests the session, and no
    claim can take B (its record is cancelled: claim() drops the entry)."""
    await turns(client, A, B, status="succeeded")
    await client.hset(T.task(B), "status", "cancelled")
    await client.sadd(T.turns_ended, A, B)
    sessions = sessions_of(client)
    await sessions.moved([A])
    await sessions.moved([B])
    assert await client.hget(T.session(W), "cur") == b""
    assert await client.exists(T.session_line(W)) == 0
    assert await client.smembers(T.turns_ended) == set()
    assert 0 < await client.pttl(T.session(W)) <= 60_000  # (resting: session_ttl)


async def test_a_session_ended_between_the_end_and_its_move_starts_nothing(
        client: Any) -> None:
    """sessions.end reads a marked current turn as ended and ends the session; the
    move then made finds no session and starts nothing, nor makes its hash again."""
    await turns(client, A, status="succeeded")
    await client.zadd(T.sessions("t1", "w"), {"s": float("inf")})
    await client.sadd(T.turns_ended, A)
    sessions = sessions_of(client)
    assert (await end_turns(sessions, W)) is not None
    await sessions.moved([A])
    assert await client.exists(T.session(W), T.session_line(W)) == 0
    assert await started(client) == []
    assert await client.smembers(T.turns_ended) == set()


async def test_a_marker_whose_task_record_is_gone_is_unmarked(client: Any) -> None:
    """An ended turn's record expired (keep_tasks_for) or deleted before its session
    moved, or a Redis writer's task id: the sweep must unmark it, not fail on it at
    every beat for ever (each stays in every submit's read of the set, and takes one of
    a beat's SWEPT places from a real turn's move)."""
    said: list[str] = []
    await client.sadd(T.turns_ended, A)
    sessions = sessions_of(client, said)
    await sessions.sweep()
    await sessions.sweep()
    assert await client.smembers(T.turns_ended) == set(), said


async def test_a_line_behind_a_turn_whose_record_is_gone_waits_until_cancelled(
        client: Any) -> None:
    """The known limit (decision 1500): A's record gone before its move (no node for
    keep_tasks_for, or a Redis writer's), the session's names went with it, so its move
    moves nothing and B waits behind it; the way out is the operator's: B cancelled
    leaves the line (its own record names the session), and the session then ends (A
    runs nowhere)."""
    await turns(client, A, B, status="succeeded")
    await client.delete(T.task(A))
    await client.sadd(T.turns_ended, A)
    sessions = sessions_of(client)
    await sessions.sweep()
    assert await client.smembers(T.turns_ended) == set()
    assert await client.lrange(T.session_line(W), 0, -1) == [B.encode()]
    with pytest.raises(RpcError, match="unfinished"):
        await end_turns(sessions, W)
    cancel = client.register_script(CANCEL)
    assert await cancel(keys=[T.task(B), T.attempts(B), STREAM, T.outcomes, *T.listed],
                        args=[B, "1.0", '"cancelled"', 60, "mac", "queued", "cancelled"]
                        ) == b"cancelled"
    await sessions.moved([B])
    assert await client.lrange(T.session_line(W), 0, -1) == []
    assert await started(client) == []
    assert (await end_turns(sessions, W)) is not None
    assert not await client.exists(T.session(W))


async def test_a_marked_turn_that_still_runs_is_not_moved(client: Any) -> None:
    """A marker naming a turn that has not ended (a Redis writer's: no end of it was
    written) must not move its session: here the line's B would start beside A, which
    still runs (two turns of one session at once, in any tenant's session)."""
    await turns(client, A, B, status="running")
    await client.sadd(T.turns_ended, A)
    await sessions_of(client).sweep()
    assert await started(client) == []
    assert await client.hget(T.session(W), "cur") == A.encode()
    assert await client.lrange(T.session_line(W), 0, -1) == [B.encode()]


async def test_a_marked_turn_that_waits_in_its_line_is_not_stranded(client: Any) -> None:
    """A marker naming a queued turn of a line must not take it out of the line: it
    would stay queued, in no stream, for ever."""
    await turns(client, A, B, status="running")
    await client.sadd(T.turns_ended, B)
    await sessions_of(client).sweep()
    assert await client.lrange(T.session_line(W), 0, -1) == [B.encode()]
    assert await client.hget(T.task(B), "status") == b"queued"


async def test_a_submit_does_not_start_beside_a_running_turn_marked_ended(
        client: Any) -> None:
    """The submit's read takes a marked current turn as ended: a marker naming a turn
    that still runs must not make the next turn start beside it."""
    await turns(client, A, status="running")
    await client.sadd(T.turns_ended, A)
    assert await turn_args(Scripts(client), T, W) == ["wait", A.encode(), 0]


async def test_the_submits_read_is_loaded_again_after_redis_forgets_it(client: Any) -> None:
    """The read goes through Scripts like every script: after a SCRIPT FLUSH (a restarted
    Redis) it is loaded again and answers, not NOSCRIPT."""
    scripts = Scripts(client)
    await turns(client, A, status="running")
    assert await turn_args(scripts, T, W) == ["wait", A.encode(), 0]
    await client.script_flush()
    assert await turn_args(scripts, T, W) == ["wait", A.encode(), 0]


async def test_the_reads_test_the_current_turns_mark_alone(client: Any) -> None:
    """A submit's read, a session's and the sessions' views test the ended turns' set
    for the current turn alone, not fetched whole (every turn ended cluster-wide and not
    yet moved, read by every submit): a set of another type (a Redis writer's) refuses
    no new session's submit; another turn's mark is nothing to this session, its own
    makes its current turn ended."""
    await client.set(T.turns_ended, "x")
    assert await turn_args(Scripts(client), T, W) == ["start", "-", 0]
    await turns(client, A, status="succeeded")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await turn_args(Scripts(client), T, W)
    await client.delete(T.turns_ended)
    await client.sadd(T.turns_ended, B)
    await client.zadd(T.sessions("t1", "w"), {"s": float("inf")})
    sessions = sessions_of(client)
    assert await turn_args(Scripts(client), T, W) == ["wait", A.encode(), 0]
    assert [v.running for v in await sessions.session_views(None)] == [A]
    read = await sessions.session_turns(W)
    assert read is not None and read.view.running == A
    await client.sadd(T.turns_ended, A)
    assert await turn_args(Scripts(client), T, W) == ["start", A.encode(), 0]
    assert [v.running for v in await sessions.session_views(None)] == [None]
    read = await sessions.session_turns(W)
    assert read is not None and read.view.running is None


async def test_a_cancel_refused_by_the_ended_turns_set_strands_no_line(
        client: Any) -> None:
    """The ended turns' set of another type (a Redis writer's, then repaired): CANCEL
    of B, waiting behind A, fails before its first write (its end could not be marked,
    and its line would wait behind it for ever), the canceller told; once the set is
    repaired the cancel ends B, and A's end moves the line past it: C starts."""
    await turns(client, A, B, C, status="running")
    await client.set(T.turns_ended, "x")
    cancel = client.register_script(CANCEL)
    keys = [T.task(B), T.attempts(B), STREAM, T.outcomes, *T.listed]
    args = [B, "1.0", '"cancelled"', 60, "mac", "queued", "cancelled"]
    with pytest.raises(ResponseError, match="WRONGTYPE"):  # (the canceller is told so)
        await cancel(keys=keys, args=args)
    assert await client.hget(T.task(B), "status") == b"queued"  # (nothing written)
    assert await client.ttl(T.task(B)) == -1
    assert not await client.exists(T.outcomes)
    assert await client.lrange(T.session_line(W), 0, -1) == [B.encode(), C.encode()]
    await client.delete(T.turns_ended)
    assert await cancel(keys=keys, args=args) == b"cancelled"
    assert await client.smembers(T.turns_ended) == {B.encode()}
    sessions = sessions_of(client)
    await sessions.moved([B])  # (as node.cancel does)
    assert await client.lrange(T.session_line(W), 0, -1) == [C.encode()]
    await client.hset(T.task(A), "status", "succeeded")  # A's end, as FINISH writes it
    await client.sadd(T.turns_ended, A)
    await sessions.moved([A])
    assert await started(client) == [C.encode()]
    assert await client.hget(T.session(W), "cur") == C.encode()
    assert await client.smembers(T.turns_ended) == set()


async def test_a_dead_nodes_turn_taken_over_is_moved_by_the_beats_sweep(
        client: Any) -> None:
    """A ran on b/1, which died: the reaper's TAKEOVER ends it lost (no retry left) and
    only marks it; the beat's sweep, after the takeovers, advances the line: B starts
    once."""
    await turns(client, A, B, status="running")
    await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    entry = await client.xadd(STREAM, {"task": A})
    await client.xreadgroup(GROUP, "b/1", {STREAM: ">"})
    await client.hset(T.task(A), mapping={"entry": entry, "owner": "b/1",
                                          "retries_left": "0", "retry_lost": "0"})
    await client.rpush(T.attempts(A), b'{"replica":0,"pid":1,"started":2.0,"node":"b"}')
    got = await take_over(RedisPart(Scripts(client), T, Trust(None, "t", print)), STREAM,
                          entry, A, "b/1", orphan=False, reason="node b lost",
                          kept_for=60, specs={})
    assert got == b"lost"
    assert await client.smembers(T.turns_ended) == {A.encode()}
    assert await client.hget(T.session(W), "cur") == A.encode()  # (not moved by the end)
    await sessions_of(client).sweep()
    assert await started(client) == [B.encode()]
    assert await client.hget(T.session(W), "cur") == B.encode()
    assert await client.smembers(T.turns_ended) == set()


async def test_an_older_nodes_turn_behind_a_marked_turn_is_started_by_its_move(
        client: Any) -> None:
    """A rolling upgrade: a node of before decision 1500 reads no ended turns, so its
    submit (1380's read: a current turn holds its place) puts C in the line behind A,
    whose end a newer node marked; the newer node's move advances the line into C."""
    await turns(client, A, status="succeeded")
    await client.sadd(T.turns_ended, A)
    submit = client.register_script(SUBMIT)
    assert await submit(
        keys=[T.task(C), STREAM, T.priorities("t1", "w"), T.agents, T.live],
        args=[C, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", "s", 60, b"[]", "t1",
              "wait", A, 0, "", "", "", "t1", "mac"]) == 1
    assert await started(client) == []
    await sessions_of(client).moved([A])
    assert await started(client) == [C.encode()]
    assert await client.hget(T.session(W), "cur") == C.encode()


@pytest.mark.parametrize("first", [A, B])
async def test_two_nodes_moving_a_session_for_two_ended_turns_start_the_next_once(
        client: Any, first: str) -> None:
    """A (holding the place) ended and B (first in its line) was cancelled, each moved
    by another node at once, in either order: C, behind B, starts once and holds the
    place; nothing stays marked."""
    await turns(client, A, B, C, status="succeeded")
    await client.hset(T.task(B), "status", "cancelled")
    await client.sadd(T.turns_ended, A, B)
    second = B if first == A else A
    await asyncio.gather(sessions_of(client).moved([first]),
                         sessions_of(client).moved([second]))
    assert (await started(client)).count(C.encode()) == 1
    assert await client.hget(T.session(W), "cur") == C.encode()
    assert await client.exists(T.session_line(W)) == 0
    assert await client.smembers(T.turns_ended) == set()


async def test_one_node_moving_both_ended_turns_in_one_batch_starts_the_next_once(
        client: Any) -> None:
    """As above, both moved by one node's batch (an outbox's, a sweep's): the two moves
    are decided on one read each time, and the second, no longer as read, is decided
    again: C starts once."""
    await turns(client, A, B, C, status="succeeded")
    await client.hset(T.task(B), "status", "cancelled")
    await client.sadd(T.turns_ended, A, B)
    await sessions_of(client).moved([A, B])
    assert (await started(client)).count(C.encode()) == 1
    assert await client.hget(T.session(W), "cur") == C.encode()
    assert await client.exists(T.session_line(W)) == 0
    assert await client.smembers(T.turns_ended) == set()


async def test_sessions_end_refuses_while_a_turn_marked_ended_still_runs(
        client: Any) -> None:
    """sessions.end reads a marked current turn as ended: a marker no end wrote (a Redis
    writer's) must not let the session end under its running turn, as the submit's read
    no longer lets a turn start beside it."""
    await turns(client, A, status="running")
    await client.zadd(T.sessions("t1", "w"), {"s": float("inf")})
    await client.sadd(T.turns_ended, A)
    sessions = sessions_of(client)
    with pytest.raises(RpcError) as refused:
        await end_turns(sessions, W)
    assert (refused.value.code, refused.value.message) == (
        jsonrpc.CONFLICT, f"session s of agent w has 1 unfinished task: task {A} is "
        "running; cancel them or wait for them to end")
    assert await client.hget(T.session(W), "cur") == A.encode()
