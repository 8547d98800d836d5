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
from corral.supervisor.tasks.sessions import SessionKey

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
                               print)
    await client.hset(T.session(W), mapping={"cur": cur, "created": 1.0, "tasks": 2})
    await client.rpush(T.session_line(W), "b")
    await client.zadd(T.sessions("t1", "w"), {"s": float("inf")})
    with pytest.raises(RpcError) as refused:
        await sessions.end(W)
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
    moved = await turn_args(client, T, W)
    assert moved == ["start", "-", 0]
    assert await submit(
        keys=[T.task(tid), T.stream("t1", "w", 0), T.priorities("t1", "w"), T.agents, T.live],
        args=[tid, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", "s", 60, b"[]", "t1", *moved,
              "", "", "t1", "mac"]) == 1
    assert await client.hget(T.session(W), "cur") == tid.encode()
