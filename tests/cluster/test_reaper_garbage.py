"""An attacker's pass over the cluster's reaper (issue 86's pass, an open item of the last):
what a writer of the cluster's Redis leaves where the reaper reads — a priority that is no
number, a consumer's name of no incarnation, a task record's fields that do not parse —
is read as nothing, or as the defaults, and stops no takeover of another node's tasks.
Before, each raised out of the beat, every beat: no dead node's task was ever queued
again, on any node. A real Redis, the real scripts."""

from __future__ import annotations

import time
from typing import Any

import pytest

from corral.cluster.keys import GROUP, Keys
from corral.cluster.membership import Membership
from corral.cluster.reaper import Reaper
from corral.cluster.scripts import Scripts
from corral.supervisor.config import ClusterSettings

from .test_scripts import TID
from .test_submit_claim import submit_claim

pytestmark = pytest.mark.timeout(60)
K = Keys("t")


def reaper_of(s: Scripts, said: list[str]) -> Reaper:
    """A member's reaper, connected long enough that a missing liveness key is a death."""
    membership = Membership(s, K, None,  # type: ignore[arg-type]
                            ClusterSettings(redis="", name="t", node="r"), "r",
                            lambda: (1, 0, {}), said.append)
    membership.state = "member"
    membership.connected_since = time.monotonic() - 3600
    return Reaper(s, K, None, membership, said.append, 60, {})  # type: ignore[arg-type]


async def dead_nodes_task(s: Scripts, client: Any, i: int, consumer: str) -> str:
    """Task `i` claimed by `consumer`, an incarnation that then died."""
    await client.set(K.alive(consumer), b"{}")
    await submit_claim(s, i, prio=5, consumer=consumer)
    await client.delete(K.alive(consumer))
    return TID.format(i)


async def test_garbage_in_redis_stops_no_takeover_of_a_dead_nodes_task(client: Any) -> None:
    s = Scripts(client)
    claimed = K.claimed("acme", "w")
    good = await dead_nodes_task(s, client, 1, "z/1")
    # a record whose retries, retry_lost and attempts are no numbers and no JSON (its
    # retries no UTF-8 either), held by a dead incarnation named before the good one
    bad = await dead_nodes_task(s, client, 2, "m/1")
    await client.hset(K.task(bad), mapping={"retries_left": b"many\xff", "retry_lost": "x",
                                            "agent": b"\xff"})
    await client.rpush(K.attempts(bad), b"{not json")
    # a record whose retries are more digits than int() takes (ValueError)
    huge = await dead_nodes_task(s, client, 4, "p/1")
    await client.hset(K.task(huge), "retries_left", b"9" * 5000)
    # a record that is no hash, its entry held by a dead incarnation
    worse = await dead_nodes_task(s, client, 3, "n/2")
    await client.delete(K.task(worse))
    await client.set(K.task(worse), b"no hash")
    # a consumer of no incarnation's name (no "/N") holding an entry, read first
    await client.xadd(claimed, {"task": "nothing"})
    await client.xreadgroup(GROUP, "a-rogue", {claimed: ">"})
    # a priority that is no number among its agent's, one whose stream there is not (or
    # is not a stream)
    await client.zadd(K.priorities("acme", "w"), {"soon": 0})
    await client.zadd(K.priorities("acme", "w"), {"7": 0, "8": 0})
    await client.set(K.stream("acme", "w", 8), b"no stream")
    said: list[str] = []
    reaper = reaper_of(s, said)
    streams = await reaper.streams()
    assert set(streams) == {*(K.stream("acme", "w", p) for p in (5, 7, 8)), claimed}
    await reaper.reap(streams)
    assert await client.hget(K.task(good), "status") == b"queued"
    # the garbled record decided on its defaults: no retries, its agent's retry_lost
    assert await client.hget(K.task(bad), "status") == b"queued"
    assert (await client.hmget(K.task(huge), "status", "retries_left")) == [b"queued", b"0"]
    assert reaper.requeued + reaper.lost == 3
    assert f"cluster: task {good} of z/1 queued again (node z lost)" in said
    assert any(line.startswith(f"cluster: task {worse} of n/2 not taken over: ")
               for line in said), said
