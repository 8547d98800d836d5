"""The cluster's sessions.end and a turn's submit keep what the rule decided
(corral/supervisor/tasks/turns.py) only while the session is as it was read: END, given a
current turn or a line's length that has moved since (or a session gone), changes nothing
and says so; as read, it ends the session. Each reads a hash without a current turn as
the node's read does, so neither is decided again for ever."""

from __future__ import annotations

from typing import Any

import pytest

from corral import jsonrpc
from corral.cluster import clustersessions, sessionscripts
from corral.cluster.clustersessions import ClusterSessions, turn_args
from corral.cluster.keys import Keys
from corral.cluster.scripts import Scripts
from corral.cluster.trust import Trust
from corral.jsonrpc import RpcError
from corral.supervisor.tasks.sessions import SessionKey, end_turns

T = Keys("t")
W = SessionKey("t1", "w", "s")


async def test_end_keeps_the_decision_only_while_the_session_is_as_read(client: Any) -> None:
    end = client.register_script(sessionscripts.END)
    keys = [T.session(W), T.session_line(W), T.session_tasks(W), T.sessions("t1", "w"),
            T.session_bytes("t1", "w")]
    await client.hset(T.session(W), mapping={"cur": "a", "created": 1.0, "tasks": 2})
    await client.rpush(T.session_line(W), "b")
    await client.rpush(T.session_tasks(W), "a", "b")
    await client.zadd(T.sessions("t1", "w"), {"s": float("inf")})
    # decided on a read before `a` took the place, and before `b` joined the line
    assert await end(keys=keys, args=["s", T.task(""), "", 1]) == 0
    assert await end(keys=keys, args=["s", T.task(""), "a", 0]) == 0
    assert await client.hget(T.session(W), "cur") == b"a"
    assert await client.lrange(T.session_line(W), 0, -1) == [b"b"]
    assert await client.zscore(T.sessions("t1", "w"), "s") == float("inf")
    # as read: ended, whatever its turns (whether they let it end is the rule's, decided before)
    assert await end(keys=keys, args=["s", T.task(""), "a", 1]) == 1
    assert await client.exists(*keys[:3]) == 0
    assert await client.zscore(T.sessions("t1", "w"), "s") is None
    assert await end(keys=keys, args=["s", T.task(""), "a", 1]) == 0  # gone since
    # a hash without a current turn (a Redis writer's) is read as the view reads it, so
    # the node's read and END agree and it ends, not read and refused for ever
    await client.hset(T.session(W), mapping={"created": 1.0, "tasks": 1})
    assert await end(keys=keys, args=["s", T.task(""), "", 0]) == 1
    assert await client.exists(T.session(W)) == 0


@pytest.mark.parametrize("cur", ["gone", ""])
async def test_end_refuses_a_session_whose_line_waits_behind_no_running_turn(
        client: Any, cur: str) -> None:
    """A line behind a current turn whose record is gone (or none, a Redis writer's) is
    unfinished as the node's is: sessions.end refuses, counting the waiting turn, and keeps
    the line, whose turn would otherwise wait, queued, in no session for ever."""
    sessions = ClusterSessions(Scripts(client), T, Trust(None, "t", print), Any, None, Any,
                               print, Any)
    await client.hset(T.session(W), mapping={"cur": cur, "created": 1.0, "tasks": 2})
    await client.rpush(T.session_line(W), "b")
    await client.zadd(T.sessions("t1", "w"), {"s": float("inf")})
    with pytest.raises(RpcError) as refused:
        await end_turns(sessions, W)
    assert (refused.value.code, refused.value.message) == (
        jsonrpc.CONFLICT, "session s of agent w has 1 unfinished task; cancel them or wait "
        "for them to end")
    assert await client.lrange(T.session_line(W), 0, -1) == [b"b"]
    assert await client.hget(T.session(W), "cur") == cur.encode()


async def test_submit_keeps_its_move_on_a_session_hash_without_a_current_turn(
        client: Any) -> None:
    """A Redis writer's hash without `cur`: read as no session, as SUBMIT reads it, so
    the turn starts rather than being read and decided again for ever."""
    submit = client.register_script(clustersessions.SUBMIT)
    await client.hset(T.session(W), mapping={"created": 1.0, "tasks": 3})
    tid = "0190a5c0-0000-7000-8000-000000000001"
    moved = await turn_args(Scripts(client), T, W)
    assert moved == ["start", "-", 0]
    assert await submit(
        keys=[T.task(tid), T.stream("t1", "w", 0), T.priorities("t1", "w"), T.agents, T.live],
        args=[tid, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", "s", 60, b"[]", "t1", *moved,
              "", "", "", "t1", "mac"]) == 1
    assert await client.hget(T.session(W), "cur") == tid.encode()


class Racing(Scripts):
    """Scripts whose second call runs `between` before it: a write of another node's
    landing between a node's read (the first) and its move (each real, on the test's
    Redis)."""

    def __init__(self, client: Any, between: Any) -> None:
        super().__init__(client)
        self.between = between
        self.answers: list[Any] = []

    async def acknowledged(self, calls: list[Any]) -> list[Any]:
        if len(self.answers) == 1:
            await self.between()
        got = await super().acknowledged(calls)
        self.answers += got
        return got


A, B = (f"0190a5c0-0000-7000-8000-00000000000{i}" for i in (1, 2))


async def test_an_ended_turns_move_on_a_session_moved_since_is_decided_again(
        client: Any) -> None:
    """Decision 1500: turn A's end marked it ended; its node read the session (A holding
    its place, no line) and decided it rests; B joined the line before MOVE ran: MOVE
    answers MOVED and changes nothing, and the node reads again and advances the line."""
    for tid, status in ((A, "succeeded"), (B, "queued")):
        await client.hset(T.task(tid), mapping={
            "agent": "w", "session": "s", "stenant": "t1", "status": status, "entry": "0-0",
            "stream": T.stream("t1", "w", 0)})
    await client.hset(T.session(W), mapping={"cur": A, "created": 1.0, "tasks": 2, "ttl": 60})
    await client.sadd(T.turns_ended, A)
    racing = Racing(client, lambda: client.rpush(T.session_line(W), B))
    await ClusterSessions(racing, T, Trust(None, "t", print), Any, None, Any, print, Any
                          ).moved([A])
    # read (nothing read before), decided to rest on it, read again, advanced
    assert racing.answers == [[sessionscripts.MOVED, A.encode(), 0, None],
                              [sessionscripts.MOVED, A.encode(), 1, None], 1]
    assert await client.hget(T.session(W), "cur") == B.encode()
    assert await client.exists(T.session_line(W)) == 0
    [(entry, fields)] = await client.xrange(T.stream("t1", "w", 0))
    assert (fields, await client.hget(T.task(B), "entry")) == ({b"task": B.encode()}, entry)
    assert await client.smembers(T.turns_ended) == set()
    assert await client.pttl(T.session(W)) == -1  # (busy: no expiry, as a rest would set)


async def test_garbage_among_the_ended_turns_stops_no_beat(client: Any) -> None:
    """A Redis writer's members of the ended turns that are no task's id (one not UTF-8)
    are removed by the sweep; the set as a key of another type is said, the beat's later
    steps going on; a turn marked whose session is gone is unmarked, nothing moved."""
    said: list[str] = []
    sessions = ClusterSessions(Scripts(client), T, Trust(None, "t", print), Any, None, Any,
                               said.append, Any)
    await client.sadd(T.turns_ended, b"\xff\xfe", b"not a task", A, B)
    await client.hset(T.task(A), mapping={"agent": "w", "session": "s", "stenant": "t1"})
    await client.set(T.task(B), "x")  # (its record no hash: said, the others moved)
    await sessions.sweep()
    assert await client.smembers(T.turns_ended) == {B.encode()}
    assert await client.exists(T.session(W)) == 0
    await client.delete(T.turns_ended)
    await client.set(T.turns_ended, "x")
    await sessions.sweep()
    wrong = "WRONGTYPE Operation against a key holding the wrong kind of value"
    assert said[0].startswith(  # (then the script's hash and line, Redis's words)
        f"cluster: the session of task {B}, which ended, was not moved: {wrong} script: ")
    assert said[1:] == [f"cluster: the ended turns not read: {wrong}"]


async def test_a_turn_submitted_after_an_end_not_yet_moved_starts_unless_a_line_waits(
        client: Any) -> None:
    """Decision 1500: A ended, its session's move yet to be made: a turn submitted then
    starts (A holds the place no more), and A's move then finds nothing to do; with a
    line behind A, it waits at the line's end, which A's move advances."""
    submit = client.register_script(clustersessions.SUBMIT)
    await client.hset(T.task(A), mapping={"agent": "w", "session": "s", "stenant": "t1",
                                          "status": "succeeded"})  # (as its end wrote it)
    await client.hset(T.session(W), mapping={"cur": A, "created": 1.0, "tasks": 1, "ttl": 60})
    await client.sadd(T.turns_ended, A)

    async def turn(tid: str) -> list[Any]:
        moved = await turn_args(Scripts(client), T, W)
        assert await submit(
            keys=[T.task(tid), T.stream("t1", "w", 0), T.priorities("t1", "w"), T.agents,
                  T.live],
            args=[tid, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", "s", 60, b"[]", "t1",
                  *moved, "", "", "", "t1", "mac"]) == 1
        return moved

    assert await turn(B) == ["start", A.encode(), 0]
    assert await client.hget(T.session(W), "cur") == B.encode()
    sessions = ClusterSessions(Scripts(client), T, Trust(None, "t", print), Any, None, Any,
                               print, Any)
    await sessions.moved([A])
    assert (await client.hget(T.session(W), "cur"), await client.smembers(T.turns_ended)
            ) == (B.encode(), set())
    assert await client.pttl(T.session(W)) == -1  # (B runs: no rest was made)
    # B ended too, and C waits in its line: D waits behind C
    c, d = (f"0190a5c0-0000-7000-8000-00000000000{i}" for i in (3, 4))
    await client.sadd(T.turns_ended, B)
    await client.rpush(T.session_line(W), c)
    assert await turn(d) == ["wait", B.encode(), 1]
    assert await client.lrange(T.session_line(W), 0, -1) == [c.encode(), d.encode()]


async def test_a_view_between_a_turns_end_and_its_move_says_no_turn_runs_and_no_expiry_yet(
        client: Any) -> None:
    """Decision 1500's window: A ended (marked), its session not moved yet. Every read of
    the session (the listing, a session's read that sessions.end decides on) says no turn
    runs, none is unfinished, and no expiry yet: its `cur` is still A, and it idles only
    once moved. A's move rests it; the views then say it expires its ttl after that move,
    the instant the store's own expiry (its score, its keys' TTL) is set to."""
    await client.hset(T.task(A), mapping={"agent": "w", "session": "s", "stenant": "t1",
                                          "status": "succeeded"})  # (as its end wrote it)
    await client.hset(T.session(W), mapping={"cur": A, "created": 1.0, "last": 2.0,
                                             "tasks": 1, "ttl": 60})
    await client.zadd(T.sessions("t1", "w"), {"s": float("inf")})
    await client.sadd(T.turns_ended, A)
    sessions = ClusterSessions(Scripts(client), T, Trust(None, "t", print), Any, None, Any,
                               print, Any)

    async def seen() -> tuple[Any, ...]:
        read = await sessions.session_turns(W)
        assert read is not None
        assert await sessions.session_views("w") == [read.view]
        return read.view.running, read.view.expires, read.view.last_used, read.unfinished

    assert await seen() == (None, None, 2.0, 0)
    await sessions.moved([A])
    last = float(await client.hget(T.session(W), "last"))
    assert last > 2.0
    assert await seen() == (None, last + 60, last, 0)
    assert await client.zscore(T.sessions("t1", "w"), "s") == last + 60
    assert 59_000 < await client.pttl(T.session(W)) <= 60_000
