"""Sticky sessions on a cluster (issue 56, decisions 760-764, corral/cluster/sessionscripts.py
`_stick`): a session's turns run on the node that ran its last turn while it lives (the
same worker process: its memory is the fast path), on another once it is kill -9'd
(never restarted) or frozen past its TTL, or removes the agent or is drained, and there
after; a sticky node too busy to
claim a turn gives it up within the bound (ORPHAN_BEATS beats) while it is still busy;
a forged `node` of a session, or a forged item of a node's list, steers no turn to a node
that does not run its tenant's agent, and each tenant's session shows its own holder.
Real daemons, real workers (tests/session_agent.py), a real redis-server; and the scripts
alone: who is given a turn and who is not (dead, draining, not sticky, another agent or
tenant, a beat that does not parse, a backlog), and forged items of a list dropped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from corral.cluster import clustersessions, records
from corral.cluster.clustersessions import ClusterSessions, turn_args
from corral.cluster.keys import Keys
from corral.cluster.reaper import ORPHAN_BEATS
from corral.cluster.scripts import RedisPart, Scripts, cancel
from corral.cluster.trust import Trust
from corral.supervisor.tasks.sessions import SessionKey

from ..daemon_harness import PY
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import Node, nodes, sleeper
from .test_cluster_delays import BACKOFF
from .test_cluster_session_identity import TENANTS, add, keyed
from .test_cluster_sessions import done, submit
from .test_cluster_specs import log
from .test_takeover import said_of_leases

pytestmark = pytest.mark.timeout(150)
HERE = Path(__file__).parent.parent
K = Keys("test")
S = SessionKey("default", "chat", "s")
# a beat long enough that a loaded host's node claims the turn given to it well within
# the bound (ORPHAN_BEATS beats), short enough that a dead node is found soon
CLUSTER: dict[str, Any] = {"ttl": 1.5, "beat": 0.5}


def chat(slots: int = 2) -> str:
    return textwrap.dedent(f"""
        [agents.chat]
        command = ["{PY}", "{HERE}/session_agent.py"]
        env = {{ PYTHONPATH = "{HERE.parent}" }}
        retries = 1
        max_concurrent_tasks = {slots}
        stop_timeout = 5.0
    """)


def ran(rec: dict[str, Any]) -> tuple[str, int]:
    """The node of the turn's one attempt, and its worker's pid."""
    assert rec["status"] == "succeeded", rec
    assert len(rec["attempts"]) == 1, rec["attempts"]
    return rec["attempts"][0]["node"], rec["output"]["pid"]


def alive(ns: dict[str, Node], k: int) -> None:
    wait_until(lambda: sum(n["alive"] for n in next(iter(ns.values())).nodes()["nodes"])
               == k, what=f"{k} nodes alive")


def holder(r: Any, key: SessionKey = S) -> str:
    return bytes(r.hget(K.session(key), "node")).decode()


def test_consecutive_turns_run_on_the_node_of_the_last_while_it_lives(
        tmp: Path, redis: RedisServer) -> None:
    """Ten turns submitted on three nodes in turn, five one after another (each to an
    idle session) and five at once (each moved in by its predecessor's end): all ten on
    the node that claimed the first, in one worker process, each given the state the
    last one left; `corral task ID` and the session's holder say so."""
    r = redis_py.Redis(port=redis.port)
    with nodes(tmp, redis, {n: chat() for n in "abc"}, **CLUSTER) as ns:
        alive(ns, 3)
        order = [ns[n] for n in "abc"]
        first = [done(order[0], submit(order[i % 3], i)) for i in range(1, 6)]
        ids = [submit(order[i % 3], i) for i in range(6, 11)]
        rest = [done(order[0], t) for t in ids]
        where = {ran(rec) for rec in first + rest}
        assert len(where) == 1, where  # one node, one worker
        [(node, _pid)] = where
        for i, rec in enumerate(first + rest, 1):
            assert rec["output"]["turns"] == list(range(1, i + 1))
        shown = order[2].cli("task", ids[-1], "--json")
        assert shown.returncode == 0, shown.stderr
        assert [a["node"] for a in json.loads(shown.stdout)["attempts"]] == [node]
        assert holder(r).split("/")[0] == node
        view = order[1].call("sessions.get", {"agent": "chat", "session": "s"})
        assert view["session"]["holder"] == holder(r)
    r.close()


@pytest.mark.parametrize("fault", ["kill9", "sigstop"])
def test_a_sticky_node_that_dies_or_freezes_gives_the_session_to_another(
        tmp: Path, redis: RedisServer, fault: str) -> None:
    """Three nodes; the session's node is kill -9'd (never restarted) or frozen
    (SIGSTOP) and its next turn submitted at once, while its liveness key still lives
    (given to it: pending with it in the group): once the key has expired the reaper
    queues the turn again, another node runs it from the last state, once, and the turns
    after it stay on that node."""
    r = redis_py.Redis(port=redis.port)
    with nodes(tmp, redis, {n: chat() for n in "abc"}, **CLUSTER) as ns:
        alive(ns, 3)
        before = [done(ns["a"], submit(ns["abc"[i % 3]], i)) for i in range(1, 4)]
        # the session's node is the last turn's: the turns before the fault are its set-up
        # (that they stay on one node is the first test's), and a node of a loaded host
        # that lapsed meanwhile gave the session to another, as it should (a fresh clone's
        # run at load ~10: the three turns on two nodes); what the fault does is asked below
        node = ran(before[-1])[0]
        assert holder(r).split("/")[0] == node, (
            [ran(rec) for rec in before], said_of_leases(ns.values()))
        stricken = ns[node]
        live = [n for n in ns.values() if n is not stricken]
        pid = stricken.proc.pid  # type: ignore[union-attr]
        if fault == "kill9":
            stricken.kill9()
        else:
            os.kill(pid, signal.SIGSTOP)
        try:
            after = [done(live[0], submit(live[i % 2], i)) for i in range(4, 8)]
            where = {ran(rec) for rec in after}
            assert len(where) == 1, where
            [(moved, _)] = where
            assert moved in {n.name for n in live}
            for i, rec in enumerate(before + after, 1):
                assert rec["output"]["turns"] == list(range(1, i + 1))
            assert holder(r).split("/")[0] == moved
        finally:
            if fault == "sigstop":
                os.kill(pid, signal.SIGCONT)
    r.close()


@pytest.mark.parametrize("how", ["remove", "drain"])
def test_a_holder_that_no_longer_runs_the_agent_or_drains_holds_nothing(
        tmp: Path, redis: RedisServer, how: str) -> None:
    """The session's node removes its agent (the other node still runs it: the session
    is kept) or is drained (`corral drain`): the next turns run on the other node, from
    the last state, and stay there."""
    with nodes(tmp, redis, {n: chat() for n in "ab"}, **CLUSTER) as ns:
        alive(ns, 2)
        before = [done(ns["a"], submit(ns["a"], i)) for i in (1, 2)]
        [(node, _)] = {ran(rec) for rec in before}
        holder_node, other = ns[node], ns["b" if node == "a" else "a"]
        if how == "remove":
            assert holder_node.call("agents.remove", {"names": ["chat"]}) == {
                "removed": ["chat"]}
        else:
            r = other.cli("drain", node)
            assert r.returncode == 0, r.stderr
            wait_until(lambda: holder_node.call("stats.get")["cluster"]["state"] == "left",
                       what="drained node left")
        after = [done(other, submit(ns["abc"[i % 2]], i)) for i in (3, 4, 5)]
        assert {ran(rec)[0] for rec in after} == {other.name}
        assert after[-1]["output"]["turns"] == [1, 2, 3, 4, 5]


def test_a_busy_sticky_node_gives_the_turn_up_within_the_bound(
        tmp: Path, redis: RedisServer) -> None:
    """Two nodes of one slot each; the session's node is busy (a local task of another
    session holds its slot): the session's next turn, given to it, is taken back by its
    orphan pass and runs on the other node while the sticky one is still busy, within
    ORPHAN_BEATS beats and the pass's own beat (and the time the claim takes)."""
    hold = tmp / "hold"
    os.mkfifo(hold)
    with nodes(tmp, redis, {n: chat(slots=1) for n in "ab"}, **CLUSTER) as ns:
        alive(ns, 2)
        [(node, _)] = {ran(done(ns["a"], submit(ns["a"], 1)))}
        busy, other = ns[node], ns["b" if node == "a" else "a"]
        blocker = busy.call("tasks.submit", {"agent": "chat", "session": "x", "local": True,
                                             "input": {"turn": 0, "hold": str(hold)}}
                            )["task_id"]
        wait_until(lambda: busy.call("tasks.get", {"task_id": blocker})["status"]
                   == "running", what="the sticky node's one slot held")
        second = done(other, submit(other, 2))
        assert ran(second)[0] == other.name
        assert second["output"]["turns"] == [1, 2]
        # the sticky node was still busy all along
        assert busy.call("tasks.get", {"task_id": blocker})["status"] == "running"
        # given back by the busy node's own orphan pass, which says so
        assert (f"cluster: task {second['task_id']} given to node {node} waited "
                f"{ORPHAN_BEATS} beats unclaimed: it waits for any node") in log(busy)
        with open(hold, "wb"):
            pass
        assert done(busy, blocker)["status"] == "succeeded"
        # the session is the other node's now
        assert ran(done(busy, submit(busy, 3)))[0] == other.name


def test_a_turn_given_to_its_holder_keeps_its_own_retry_policy(
        tmp: Path, redis: RedisServer) -> None:
    """The agents retry nothing of their own (retries = 0); a session's next turn,
    submitted on the other node with a policy that retries a failure once, is given to
    the holder and claimed from its list: it runs with its own options, as a turn any
    node reads does (test_cluster_delays.py), its failed first attempt run again after
    its backoff."""
    agent = sleeper("chat") + f"retry_backoff = {BACKOFF}\nretry_jitter = false\n"
    with nodes(tmp, redis, {"a": agent, "b": agent}, **CLUSTER) as ns:
        alive(ns, 2)
        first = ns["a"].call("tasks.submit", {"agent": "chat", "session": "s", "wait": 60,
                                              "input": {"do": "sleep", "seconds": 0}})
        assert first["status"] == "succeeded", first
        [held] = {x["node"] for x in first["attempts"]}
        policy = {"retries": 1, "retry_on": ["failed"]}
        got = ns["b" if held == "a" else "a"].call("tasks.submit", {
            "agent": "chat", "session": "s", "input": {"do": "until", "attempt": 2},
            "retry": policy, "wait": 60})
        assert (got["status"], got["output"]) == ("succeeded", {"attempt": 2}), got
        attempts = got["attempts"]
        assert [(x["outcome"], x["error"]) for x in attempts] == [
            ("failed", "attempt 1 failed on request"), ("succeeded", None)], attempts
        assert attempts[0]["node"] == held  # given to the holder: its list's claim
        assert attempts[1]["started"] - attempts[0]["finished"] >= BACKOFF - 0.002
        shown = ns[held].call("tasks.get", {"task_id": got["task_id"]})
        assert shown["options"]["retry"] == policy


def test_a_node_with_sticky_sessions_false_says_so_in_its_beat(
        tmp: Path, redis: RedisServer) -> None:
    """`[cluster] sticky_sessions = false`: the node's beat (its liveness key's value,
    which the scripts that give a turn read) says `sticky: false`; the other node's says
    true (what the scripts alone do with each: below)."""
    r = redis_py.Redis(port=redis.port)
    with nodes(tmp, redis, {"a": chat(), "b": chat()}, **CLUSTER) as ns:
        alive(ns, 2)
        ns["b"].close()
        ns["b"] = Node(tmp / "b2", "b", redis, chat(), **{
            **CLUSTER, "extra": "sticky_sessions = false\n"})
        ns["b"].start()
        alive(ns, 2)
        beats = {}
        for key in r.scan_iter(match=K.alive("*")):
            beat = json.loads(r.get(key) or b"{}")
            beats[beat["node"]] = beat["sticky"]
        assert beats == {"a": True, "b": False}
    r.close()


def test_stickiness_is_its_tenants_and_a_forged_row_steers_no_turn(
        tmp: Path, redis: RedisServer) -> None:
    """acme's `chat` on node a, globex's on node b, each with a session s1: each one's
    holder is its own node (a tenant's caller lists its own sessions only: their
    holders with them). A Redis writer who sets
    globex's session's `node` to a (which runs acme's chat, not globex's) steers nothing:
    globex's next turn is not given to a and runs on b; an item forged into a's list of
    acme's turns, naming globex's task (another tenant's stream) or an entry not given to
    a, is dropped and touches nothing."""
    r = redis_py.Redis(port=redis.port)
    acme, globex = (SessionKey(t, "chat", "s1") for t in ("acme", "globex"))
    with nodes(tmp, redis, {"a": TENANTS, "b": TENANTS}, extra=keyed(tmp),
               **CLUSTER) as ns:
        a, b = ns["a"], ns["b"]
        alive(ns, 2)
        add(a, "acme")
        add(b, "globex")

        def turn(n: Node, value: int) -> Any:
            return done(n, n.call("tasks.submit", {"agent": "chat", "input": {"turn": value},
                                                   "session": "s1"})["task_id"])

        assert ran(turn(a, 1))[0] == "a" and ran(turn(b, 1))[0] == "b"
        a_inc, b_inc = holder(r, acme), holder(r, globex)
        assert (a_inc.split("/")[0], b_inc.split("/")[0]) == ("a", "b")
        # forged: globex's session names acme's node
        r.hset(K.session(globex), "node", a_inc)
        forged_list = K.sticky("acme", "chat", a_inc)
        second = turn(b, 2)
        assert ran(second)[0] == "b" and second["output"]["turns"] == [1, 2]
        assert r.exists(K.sticky("globex", "chat", a_inc)) == 0  # nothing given to a
        assert holder(r, globex) == b_inc  # its claim set it back
        # forged items in a's list: globex's task, and an entry a was never given
        r.rpush(forged_list, f"0-1 {second['task_id']}", "0-1 no-such-task")
        third = turn(a, 2)
        assert ran(third)[0] == "a" and third["output"]["turns"] == [1, 2]
        assert r.exists(forged_list) == 0  # taken, dropped
        assert done(b, second["task_id"])["status"] == "succeeded"  # untouched
        assert ran(turn(b, 3))[0] == "b"
        listed = b.call("sessions.list", {"agent": "chat"})["sessions"]
        assert sorted((v["tenant"], v["session"], v["holder"]) for v in listed) == [
            ("acme", "s1", a_inc), ("globex", "s1", b_inc)]
    r.close()


# -- the scripts alone ----------------------------------------------------------------------
T = Keys("t")
W = SessionKey("t1", "w", "s")  # tenant t1's agent w's session s
STREAM = T.stream("t1", "w", 0)
GIVEN = T.sticky("t1", "w", "n/1")  # node n's (incarnation 1) list of given turns
BEAT = {"agents": ["w"], "tenants": {"w": "t1"}, "draining": False, "sticky": True}


def _tid(i: int) -> str:
    return f"0190a5c0-0000-7000-8000-{i:012d}"


async def _submit(client: Any, tid: str, session: str | None = "s", options: str = ""
                  ) -> Any:
    keys = [T.task(tid), STREAM, T.priorities("t1", "w"), T.agents, T.live]
    head = [tid, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", ""]
    tail = ["", options, "", "t1", "mac"]
    if session is None:
        return await Scripts(client).submit(keys=keys, args=head + tail)
    return await client.register_script(clustersessions.SUBMIT)(
        keys=keys, args=[*head, session, 60, b"[]", "t1", *await turn_args(
            Scripts(client), T, SessionKey("t1", "w", session)), *tail])


async def _read_claim(client: Any, consumer: str = "n/1", want: int = 1) -> Any:
    return await Scripts(client).read_claim(
        keys=[T.fence, STREAM],
        args=[consumer, consumer.split("/")[0], "2.0",
              records.claimed_attempt(consumer.split("/")[0], 2.0), 0, "30.0", want,
              T.prefix, 1, "t1", T.sticky("t1", "w", consumer)])


async def _finish(client: Any, tid: str, token: int) -> Any:
    """The turn's end, and its node's move of its session (decision 1500)."""
    got = await Scripts(client).finish(
        keys=[T.task(tid), T.attempts(tid), STREAM, T.outcomes, *T.listed],
        args=[token, tid, "succeeded", b"{}", b"", "3.0",
              await client.hget(T.task(tid), "entry"), 0, 60, 0, "0", ""])
    await ClusterSessions(Scripts(client), T, Trust(None, "t", print), Any, None, Any,
                          print, Any).moved([tid])
    return got


async def _held_once(client: Any) -> str:
    """Session s's first turn claimed by n/1 and finished: the session's holder."""
    first = _tid(1)
    assert await _submit(client, first) == 1
    read, [claim], _, _ = await _read_claim(client)
    assert (read, claim[2]) == (1, first.encode())
    assert await _finish(client, first, claim[3]) == 1
    return bytes(await client.hget(T.session(W), "node")).decode()


async def test_a_turn_is_given_to_its_holder_and_claimed_first_from_its_list(
        client: Any) -> None:
    """The holder alive and running the tenant's agent: the next turn, submitted to the
    idle session, is pending with it in the group (read for it) and named in its list;
    another node's read finds nothing, the holder's claims it from the list, its reply a
    read's to the last value (its own retry policy); a turn moved in by an end is given
    the same way."""
    assert await _held_once(client) == "n/1"
    await client.set(T.alive("n/1"), json.dumps(BEAT))
    await client.set(T.alive("m/1"), json.dumps(BEAT))
    second, third = _tid(2), _tid(3)
    policy = b'{"retry":{"retries":1}}'
    assert await _submit(client, second, options=policy.decode()) == 1
    entry = await client.hget(T.task(second), "entry")
    assert await client.lrange(GIVEN, 0, -1) == [entry + b" " + second.encode()]
    [pending] = await client.xpending_range(STREAM, "corral", "-", "+", 10)
    assert (pending["message_id"], pending["consumer"]) == (entry, b"n/1")
    assert await _submit(client, third) == 1  # behind it, in the session's line
    assert (await _read_claim(client, "m/1"))[:2] == [0, []]  # not another's
    read, [claim], _, _ = await _read_claim(client)
    assert (read, claim[1], claim[2]) == (1, entry, second.encode())
    assert (len(claim), claim[-1]) == (15, policy)  # (a read's: place, entry, id, 12)
    assert await client.exists(GIVEN) == 0
    assert await _finish(client, second, claim[3]) == 1  # the end gives it the third
    moved = await client.hget(T.task(third), "entry")
    assert await client.lrange(GIVEN, 0, -1) == [moved + b" " + third.encode()]
    read, [claim], _, _ = await _read_claim(client)
    assert claim[2] == third.encode()
    assert await client.hget(T.task(third), "owner") == b"n/1"


@pytest.mark.parametrize("beat", [
    "dead", "draining", "not sticky", "another agent", "another tenant", "not json",
    "agents not a list"])
async def test_a_turn_is_not_given_to_a_holder_that_cannot_take_it(
        client: Any, beat: str) -> None:
    """The holder dead (no liveness key), draining, saying sticky_sessions = false, not
    running the agent, running another tenant's agent of the name, or its beat a Redis
    writer's that does not parse: the turn waits unread in the stream, for any node, and
    the submit is answered as ever."""
    await _held_once(client)
    said: Any = dict(BEAT)
    if beat == "draining":
        said["draining"] = True
    elif beat == "not sticky":
        said["sticky"] = False
    elif beat == "another agent":
        said["agents"] = ["v"]
    elif beat == "another tenant":
        said["tenants"] = {"w": "t2"}
    elif beat == "agents not a list":
        said["agents"] = 7
    if beat == "dead":
        await client.delete(T.alive("n/1"))
    else:
        await client.set(T.alive("n/1"), b"{not json" if beat == "not json"
                         else json.dumps(said).encode())
    second = _tid(2)
    assert await _submit(client, second) == 1
    assert await client.exists(GIVEN) == 0
    assert (await client.xpending(STREAM, "corral"))["pending"] == 0
    await client.set(T.alive("m/1"), b"{}")
    _, [claim], _, _ = await _read_claim(client, "m/1")
    assert claim[2] == second.encode()


async def test_a_turn_moved_in_though_it_ended_is_let_go_by_its_holders_read(
        client: Any) -> None:
    """Decision 1500: the third turn cancelled in the line (its move not yet made) as the
    second ends, and the second's move made first: the third is moved into the stream and
    given to the holder though it has ended. The holder's read lets its entry go (no
    entry left pending with it for ever), and the third's own move rests the session."""
    assert await _held_once(client) == "n/1"
    await client.set(T.alive("n/1"), json.dumps(BEAT))
    second, third = _tid(2), _tid(3)
    assert await _submit(client, second) == 1
    assert await _submit(client, third) == 1  # in the line
    _, [claim], _, _ = await _read_claim(client)
    assert claim[2] == second.encode()
    scripts = Scripts(client)
    assert await cancel(RedisPart(scripts, T, Trust(None, "t", print)), third, 60
                        ) == b"cancelled"
    assert await scripts.finish(
        keys=[T.task(second), T.attempts(second), STREAM, T.outcomes, *T.listed],
        args=[claim[3], second, "succeeded", b"{}", b"", "3.0", claim[1], 0, 60, 0, "0",
              ""]) == 1
    sessions = ClusterSessions(scripts, T, Trust(None, "t", print), Any, None, Any, print, Any)
    await sessions.moved([second])
    moved = await client.hget(T.task(third), "entry")
    assert await client.lrange(GIVEN, 0, -1) == [moved + b" " + third.encode()]
    assert (await _read_claim(client))[:2] == [0, []]
    assert (await client.xpending(STREAM, "corral"))["pending"] == 0
    assert await client.xrange(STREAM, moved, moved) == []
    await sessions.moved([third])
    assert await client.hget(T.session(W), "cur") == b""
    assert await client.smembers(T.turns_ended) == set()


async def test_a_turn_behind_a_backlog_is_not_given(client: Any) -> None:
    """Another task of the agent waits unread: the session's turn is not given (it would
    jump it); the first read takes the older task first."""
    await _held_once(client)
    await client.set(T.alive("n/1"), json.dumps(BEAT))
    older, second = _tid(7), _tid(2)
    assert await _submit(client, older, session=None) == 1
    assert await _submit(client, second) == 1
    assert await client.exists(GIVEN) == 0
    _, claims, _, _ = await _read_claim(client, want=2)
    assert [c[2] for c in claims] == [older.encode(), second.encode()]


async def test_forged_items_in_a_holders_list_are_dropped_touching_nothing(
        client: Any) -> None:
    """Items a Redis writer put in the holder's list — not an item's form, a task that
    does not exist, a queued task of another stream, a queued task of its own stream
    whose entry was never given to it — are taken out and dropped: nothing is claimed,
    acknowledged or deleted, and the turns they name wait as they were."""
    await _held_once(client)
    other = T.stream("t2", "w", 0)
    elsewhere, own = _tid(8), _tid(9)
    assert await Scripts(client).submit(
        keys=[T.task(elsewhere), other, T.priorities("t2", "w"), T.agents, T.live],
        args=[elsewhere, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", "", "", "", "t2",
              "mac"]) == 1
    assert await _submit(client, own, session=None) == 1
    e_other = await client.hget(T.task(elsewhere), "entry")
    e_own = await client.hget(T.task(own), "entry")
    await client.rpush(GIVEN, b"garbage", b"1-0 " + _tid(5).encode(),
                       e_other + b" " + elsewhere.encode(), e_own + b" " + own.encode())
    read, claims, _, _ = await _read_claim(client, want=0)
    assert (read, claims) == (0, [])  # want 0: the list is not even looked at
    assert await client.llen(GIVEN) == 4
    fence = int(await client.get(T.fence))
    read, claims, _, _ = await _read_claim(client)
    # the list emptied, nothing of it claimed; the read claims the own task from the
    # stream itself, once: its entry pending with the claimer, as any read's
    assert await client.exists(GIVEN) == 0
    assert [(c[1], c[2]) for c in claims] == [(e_own, own.encode())]
    assert int(await client.get(T.fence)) == fence + 1
    [pending] = await client.xpending_range(STREAM, "corral", "-", "+", 10)
    assert (pending["message_id"], pending["consumer"]) == (e_own, b"n/1")
    assert await client.hget(T.task(elsewhere), "status") == b"queued"
    assert await client.xrange(other) == [(e_other, {b"task": elsewhere.encode()})]


async def test_a_sticky_claim_counts_its_entrys_idle_time_from_the_claim(
        client: Any) -> None:
    """A turn given at the last one's end and claimed later: its entry's idle time is
    the claim's, as a read's claim has it (counted from its delivery, the orphan pass
    would take a turn just claimed by a live node for one read and lost)."""
    assert await _held_once(client) == "n/1"
    await client.set(T.alive("n/1"), json.dumps(BEAT))
    second = _tid(2)
    assert await _submit(client, second) == 1
    entry = await client.hget(T.task(second), "entry")

    async def idle() -> int:
        [p] = await client.xpending_range(STREAM, "corral", entry, entry, 1)
        return int(p["time_since_delivered"])

    while await idle() < 200:  # given, not yet claimed: its idle time grows
        await asyncio.sleep(0.05)
    read, [claim], _, _ = await _read_claim(client)
    assert (read, claim[2]) == (1, second.encode())
    assert await idle() < 200


async def test_a_forged_item_naming_a_running_turn_leaves_its_entry(client: Any) -> None:
    """An item a Redis writer made of a running turn's entry (pending with the holder,
    as a running task's is): dropped, the entry left in the stream and pending (the
    reaper's, should the node die), the record as it was."""
    assert await _held_once(client) == "n/1"
    await client.set(T.alive("n/1"), json.dumps(BEAT))
    second = _tid(2)
    assert await _submit(client, second) == 1
    entry = await client.hget(T.task(second), "entry")
    _, [claim], _, _ = await _read_claim(client)
    assert claim[2] == second.encode()
    await client.rpush(GIVEN, entry + b" " + second.encode())
    assert (await _read_claim(client))[:2] == [0, []]
    assert await client.exists(GIVEN) == 0
    assert await client.xrange(STREAM, entry, entry) == [(entry, {b"task": second.encode()})]
    [pending] = await client.xpending_range(STREAM, "corral", entry, entry, 1)
    assert pending["consumer"] == b"n/1"
    assert (await client.hget(T.task(second), "status"),
            int(await client.hget(T.task(second), "fence"))) == (b"running", claim[3])
