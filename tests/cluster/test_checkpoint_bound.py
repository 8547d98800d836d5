"""A checkpoint's max_session_bytes on a cluster (decision 2231): decided above the store
by `sessions.over` on what SIZES read, and kept by CHECKPOINT only while that read holds.
The scripts run against a real redis-server; the bound's words on both homes are
tests/contract/test_sessions.py's, the rule's one place tests/test_twins.py's."""

from __future__ import annotations

from typing import Any

import msgspec

from corral.cluster.keys import Keys
from corral.cluster.sessionscripts import CHECKPOINT, SIZES
from corral.supervisor.tasks.sessions import SessionKey

K = Keys("t")
TASK = "0190a5c0-0000-7000-8000-000000000001"
LIVE, SIZED = K.sessions("acme", "w"), K.session_bytes("acme", "w")
K_S1 = SessionKey("acme", "w", "s1")


async def session_of_two(client: Any) -> None:
    """Task TASK (claimed, fence 5) runs a turn of session s1 of tenant acme's agent w,
    s1's state 10 bytes; s2, live beside it, 20."""
    await client.hset(K.task(TASK), mapping={"fence": "5", "status": "running",
                                             "agent": "w", "session": "s1",
                                             "stenant": "acme"})
    await client.zadd(LIVE, {"s1": float("inf"), "s2": float("inf")})
    await client.hset(SIZED, mapping={"s1": 10, "s2": 20})


async def checkpoint(client: Any, state: bytes, seen: list[Any]) -> Any:
    return await client.register_script(CHECKPOINT)(
        keys=[K.task(TASK)], args=["5", b"mac " + state, len(state),
                                   msgspec.json.encode(seen), "acme"])


async def sizes(client: Any) -> list[int]:
    got: list[int] = await client.register_script(SIZES)(keys=[SIZED, LIVE, SIZED],
                                                         args=["s1"])
    return got


async def test_a_checkpoint_is_kept_while_the_bytes_it_was_decided_on_hold(
        client: Any) -> None:
    """SIZES reads s1's bytes and its agent's together; CHECKPOINT keeps a state decided
    on that read, and on a read one session's growth made stale answers -1 (read and
    decide again) and keeps nothing; a count that fell since keeps it (the decision
    holds a fortiori); s1's own bytes changed answers -1."""
    await session_of_two(client)
    assert await sizes(client) == [10, 30]
    assert await checkpoint(client, b"x" * 15, [10, [["w", 30]]]) == 1
    assert await client.hget(SIZED, "s1") == b"15"
    assert await client.hget(K.session(K_S1), "state") == b"mac " + b"x" * 15

    await client.hset(SIZED, "s2", 25)  # s2 grew after s1's read
    assert await checkpoint(client, b"y" * 16, [15, [["w", 35]]]) == [-1]
    assert (await client.hget(SIZED, "s1"), await client.hget(K.session(K_S1), "state")) \
        == (b"15", b"mac " + b"x" * 15)

    await client.hset(SIZED, "s2", 5)  # s2 shrank after it
    assert await checkpoint(client, b"y" * 16, [15, [["w", 40]]]) == 1
    assert await client.hget(SIZED, "s1") == b"16"

    assert await checkpoint(client, b"z" * 17, [15, [["w", 21]]]) == [-1]  # s1 moved on
    assert await client.hget(SIZED, "s1") == b"16"


async def test_an_expired_session_is_out_of_the_bytes_read_and_kept_on(client: Any) -> None:
    """An expired session's bytes are out of SIZES' read and of CHECKPOINT's count alike
    (each prunes it first), so a checkpoint decided without them is kept."""
    await session_of_two(client)
    await client.zadd(LIVE, {"s2": 1.0})  # s2 expired long ago
    assert await sizes(client) == [10, 10]
    assert await client.hget(SIZED, "s2") is None
    assert await checkpoint(client, b"x" * 30, [10, [["w", 10]]]) == 1


async def test_no_bound_reads_nothing_and_keeps_the_state(client: Any) -> None:
    """No bound counts the agent's bytes ([] as read): the state is kept whatever the
    others' bytes, and a claim taken over (another fence) keeps nothing."""
    await session_of_two(client)
    assert await checkpoint(client, b"x" * 99, [0, []]) == 1
    assert await client.hget(SIZED, "s1") == b"99"
    await client.hset(K.task(TASK), "fence", "6")
    assert await checkpoint(client, b"y", [0, []]) == 0
    assert await client.hget(SIZED, "s1") == b"99"
