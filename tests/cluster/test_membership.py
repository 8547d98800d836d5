"""Membership on a real redis-server: a node incarnation is alive exactly while its
liveness key exists; a key that expired (a node paused past its TTL) or 2 x TTL without
a renewal makes the node fence itself and join again as a new incarnation; Redis away
kills nothing, and the node joins again by itself once it answers."""

from __future__ import annotations

import asyncio
import os
import socket
import time

from corral.cluster.connection import connect
from corral.cluster.keys import Keys
from corral.cluster.membership import Membership, NodeFence, this_daemon
from corral.cluster.scripts import Scripts
from corral.cluster.trust import Trust
from corral.supervisor.config import ClusterSettings

from ..redis_harness import RedisServer
from ..test_gateway_stdio import wait_until_async

TTL, BEAT = 0.6, 0.15
# a test that steps its nodes by hand and waits on no lapse: on a loaded host a stall
# outlasted the short TTL between two steps (the key a step counts on had lapsed), and a
# join outlasted the beat a step waits for it (the node was still joining after the step)
STEADY_TTL, STEADY_BEAT = 20.0, 5.0


def member(redis: RedisServer, node: str, said: list[str], ttl: float = TTL,
           beat: float = BEAT) -> Membership:
    settings = ClusterSettings(redis=redis.url, name="t", node=node, node_ttl=ttl, beat=beat)
    client = connect(settings, node)
    return Membership(Scripts(client), Keys("t"), Trust(None, "t", print), settings, node,
                      lambda: (4, 1, {"greeter": "default"}), said.append)


async def joined_watching_fences(redis: RedisServer, ttl: float = TTL, beat: float = BEAT
                                 ) -> tuple[Membership, list[str], list[str]]:
    """Node a, joined, with what it said and the incarnations it fenced."""
    said: list[str] = []
    fenced: list[str] = []
    a = member(redis, "a", said, ttl, beat)
    a.stream.subscribe(lambda e: fenced.append(e.consumer), NodeFence)
    await a.join()
    return a, said, fenced


async def test_a_node_is_alive_while_it_beats_and_dead_a_ttl_after(
        redis: RedisServer) -> None:
    said: list[str] = []
    # b's lapse is waited on, on a TTL that a loaded host's stall between its join and the
    # first look does not outlast; a, which looks, on the steady one
    a = member(redis, "a", said, STEADY_TTL, STEADY_BEAT)
    b = member(redis, "b", said, 4 * TTL)
    await a.join()
    await b.join()
    assert (a.consumer, b.consumer) == ("a/1", "b/1")
    ttl_ms = await a.redis.pttl(a.keys.alive(a.consumer))
    assert 0 < ttl_ms <= STEADY_TTL * 1000
    views = {v.node: v for v in await a.nodes()}
    assert views["a"].alive and views["b"].alive
    assert (views["a"].capacity, views["a"].load, views["a"].agents) == (4, 1, ["greeter"])
    # b stops beating: dead one TTL later, still listed with its last beat
    beating = asyncio.ensure_future(a.run())
    try:
        deadline = time.monotonic() + 5
        while True:
            views = {v.node: v for v in await a.nodes()}
            if not views["b"].alive:
                break
            assert time.monotonic() < deadline, "b never died"
            await asyncio.sleep(0.05)
        assert views["a"].alive, "a renews every beat"
        assert views["b"].incarnation == 1 and views["b"].last_beat < time.time() - b.ttl / 2
    finally:
        beating.cancel()
        await a.redis.aclose()
        await b.redis.aclose()


async def test_an_expired_key_fences_the_node_and_it_joins_as_a_new_incarnation(
        redis: RedisServer) -> None:
    a, said, fenced = await joined_watching_fences(redis, STEADY_TTL, STEADY_BEAT)
    # what a node paused past its TTL finds when it wakes: its key is gone
    await a.redis.delete(a.keys.alive(a.consumer))
    await a.step()
    assert fenced == ["a/1"]
    assert a.state == "member" and a.consumer == "a/2" and a.fences == 1
    assert any("a/1 fenced itself: its liveness key expired" in s for s in said), said
    views = await a.nodes()
    assert [(v.node, v.incarnation, v.alive) for v in views] == [("a", 2, True)]
    await a.redis.aclose()


async def test_redis_away_fences_after_two_ttl_and_the_node_rejoins_by_itself(
        redis: RedisServer) -> None:
    a, said, fenced = await joined_watching_fences(redis)
    beating = asyncio.ensure_future(a.run())
    try:
        redis.kill()
        await wait_until_async(lambda: a.error is not None, 10)
        assert a.state == "member"  # not before 2 x TTL
        await wait_until_async(lambda: a.state == "fenced", 2 * TTL + 2)
        assert fenced == ["a/1"]
        assert any("no renewal for 1.2 s (2 x node_ttl)" in s for s in said), said
        redis.start()  # the same port and AOF: the incarnation counter survived
        # (the join, a task of its own, says member before the beat that awaited it
        # clears the error: both waited for, a loaded run read the two between, ci30)
        await wait_until_async(lambda: a.state == "member" and a.error is None, 10)
        assert a.consumer == "a/2"
        assert "cluster: Redis answers again" in said
    finally:
        beating.cancel()
        await a.redis.aclose()


async def test_two_daemons_as_one_node_one_yields(redis: RedisServer) -> None:
    """Decision 163, where the start's check could not be made (Redis away): a daemon
    does not join as a node another daemon is; and of two that joined as one, the first
    to find the other at its beat leaves at once (its key deleted) and waits."""
    said_a: list[str] = []
    said_b: list[str] = []
    a = member(redis, "n", said_a, STEADY_TTL, STEADY_BEAT)
    b = member(redis, "n", said_b, STEADY_TTL, STEADY_BEAT)
    b.daemon = "another process"
    await a.join()
    await b.step()
    assert (b.state, b.incarnation) == ("duplicate", 0)
    assert said_b[-1].startswith(
        f"cluster: this daemon does not join: node n is already a member of cluster t: "
        f"incarnation 1, pid {os.getpid()} on host {socket.gethostname()}, last beat ")
    await b.step()
    assert said_b.count(said_b[-1]) == 1  # said once per holder
    # both members (b joined while a's key had lapsed, a then beat again from a pause)
    alive_a = a.keys.alive(a.consumer)
    value = await a.redis.get(alive_a)
    await a.redis.delete(alive_a)
    await b.step()
    assert (b.state, b.consumer) == ("member", "n/2")
    await a.redis.set(alive_a, value, px=int(STEADY_TTL * 1000))
    fenced: list[str] = []
    a.stream.subscribe(lambda e: fenced.append(e.consumer), NodeFence)
    await a.step()
    assert (a.state, fenced) == ("duplicate", ["n/1"])
    assert not await a.redis.exists(alive_a)  # its tasks are the cluster's at once
    assert await b.renew()
    assert [(v.node, v.incarnation, v.alive) for v in await b.nodes()] == [("n", 2, True)]
    # b gone: a joins again, as a new incarnation
    await b.leave()
    await a.step()
    assert (a.state, a.consumer) == ("member", "n/3")
    assert said_a[-2] == "cluster: node n: no other daemon is it any more"
    for m in (a, b):
        await m.redis.aclose()


async def test_a_join_whose_answer_comes_late_is_one_incarnation(
        redis: RedisServer) -> None:
    """Redis ran the join's INCR and its answer came three beats late (a loaded host):
    the node waits for that join at its next beats, rather than cutting it off at one and
    taking another number, so it is incarnation 1, and the only one alive (decision 856:
    a node went from incarnation 2 to 4 so, with no fence said)."""
    from .proxy import Proxy

    proxy = Proxy(redis.port)
    said: list[str] = []
    settings = ClusterSettings(redis=proxy.url, name="t", node="a", node_ttl=TTL,
                               beat=BEAT)
    client = connect(settings, "a")
    a = Membership(Scripts(client), Keys("t"), Trust(None, "t", print), settings, "a",
                   lambda: (4, 1, {"greeter": "default"}), said.append)
    try:
        proxy.hold(3 * BEAT, b"INCR", b"inc:a")
        await a.step()  # its beat's wait for the join ends before the answer comes
        assert not a.member
        deadline = time.monotonic() + 5
        while not a.member:  # its beats, as run() makes them
            assert time.monotonic() < deadline, said
            await asyncio.sleep(BEAT)
            await a.step()
        await a.step()
        assert (a.consumer, a.fences) == ("a/1", 0)
        assert await a.redis.get(a.keys.incarnations("a")) == b"1"
        assert [k async for k in a.redis.scan_iter(a.keys.alive("*"))] == [
            a.keys.alive("a/1").encode()]
        assert "cluster: joined as a/1" in said
    finally:
        await a.leave()
        await a.redis.aclose()
        proxy.close()


async def test_a_renewal_answered_late_within_the_ttl_keeps_the_node(
        redis: RedisServer) -> None:
    """Redis renewed the key and its answer came two beats late (a loaded host): the node
    waits for it. Cut at a beat, as it was, the call's connection was dropped, the next
    renewal paid a new one, and under a busy loop per core a live node's key lapsed and
    its tasks ran twice (issue 72)."""
    from .proxy import Proxy

    proxy = Proxy(redis.port)
    said: list[str] = []
    settings = ClusterSettings(redis=proxy.url, name="t", node="a", node_ttl=8 * BEAT,
                               beat=BEAT)
    client = connect(settings, "a")
    a = Membership(Scripts(client), Keys("t"), Trust(None, "t", print), settings, "a",
                   lambda: (4, 1, {"greeter": "default"}), said.append)
    try:
        await a.join()
        renewed = a.renewed
        proxy.hold(2 * BEAT, b"EVALSHA", a.keys.alive("a/1").encode())
        await a.step()
        assert (a.state, a.consumer, a.error, a.fences) == ("member", "a/1", None, 0), said
        assert a.renewed - renewed >= 2 * BEAT  # (its answer was held: the one awaited)
        assert said == ["cluster: joined as a/1"]
    finally:
        await a.leave()
        await a.redis.aclose()
        proxy.close()


def test_a_forked_process_beats_as_another_daemon() -> None:
    """A daemon forked from a process that had imported membership (a test's fork server
    is one) has an id of its own in its beats, not the one it was forked from."""
    parent = this_daemon()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, this_daemon().encode())
        os._exit(0)
    os.close(w)
    try:
        child = os.read(r, 64).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert len(child) == 32 and child != parent
    assert this_daemon() == parent


async def test_a_beat_that_does_not_parse_is_passed_over_and_said_once(
        redis: RedisServer) -> None:
    """A Redis writer's beat in the nodes' hash (no JSON; a max_queue that is no number)
    is no node's: the nodes are listed without it, said once for its name, and one under
    this node's own name holds up no start (tests/test_attack_s17.py has the daemon's)."""
    said: list[str] = []
    a = member(redis, "a", said, STEADY_TTL, STEADY_BEAT)
    try:
        await a.redis.hset(a.keys.nodes, mapping={
            "ghost": b"{not json", "a": b'{"node":"a","incarnation":1,"capacity":1,'
            b'"load":0,"agents":[],"last_beat":0,"queues":{"w":"many"}}'})
        assert await a.holder() is None
        await a.check_unique()
        await a.join()
        for _ in range(2):
            assert [v.node for v in await a.nodes()] == ["a"]
        assert said == [
            "cluster: the beat of node 'a' in Redis does not parse (Expected `int`, got "
            "`str` - at `$.queues[...]`): no node's",
            "cluster: joined as a/1",
            "cluster: the beat of node 'ghost' in Redis does not parse (JSON is malformed: "
            "object keys must be strings (byte 1)): no node's"], said
    finally:
        await a.redis.aclose()


async def test_a_beat_that_does_not_parse_naming_a_live_incarnation_is_waited_out(
        redis: RedisServer) -> None:
    """JOIN's script finds a beat under this node's name whose daemon is not this one and
    whose incarnation is alive: another daemon's, though it does not parse (a Redis
    writer's). The node waits it out as it waits out another daemon, and joins once the
    key is gone; before, the beat's decode raised out of the join."""
    said: list[str] = []
    a = member(redis, "a", said, STEADY_TTL, STEADY_BEAT)
    try:
        await a.redis.hset(a.keys.nodes, "a", b'{"daemon":"other","incarnation":7}')
        await a.redis.set(a.keys.alive("a/7"), b"x", px=60_000)
        await a.join()
        waiting = ("node a's beat in Redis does not parse and names a live incarnation: "
                   "waiting for its key to lapse")
        assert (a.state, a.duplicate) == ("duplicate", waiting)
        await a.redis.delete(a.keys.alive("a/7"))
        await a.join()
        assert (a.state, a.consumer, a.duplicate) == ("member", "a/2", None)
        assert said == [
            "cluster: the beat of node 'a' in Redis does not parse (Object missing required "
            "field `node`): no node's", f"cluster: this daemon does not join: {waiting}",
            "cluster: node a: no other daemon is it any more", "cluster: joined as a/2"], said
    finally:
        await a.redis.aclose()
