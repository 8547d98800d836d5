"""The cluster's sessions.end keeps what the rule decided (corral/supervisor/tasks/turns.py)
only while the session is as it was read: END, given a current turn or a line's length
that has moved since (or a session gone), changes nothing and says so; as read, it ends
the session."""

from __future__ import annotations

from typing import Any

from corral.cluster import sessionscripts
from corral.cluster.keys import Keys
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
