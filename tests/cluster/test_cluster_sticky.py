"""Sticky sessions on a cluster (issue 56, decisions 760-763, corral/cluster/sessionscripts.py
`_stick`): a session's turns run on the node that ran its last turn while it lives (the
same worker process: its memory is the fast path), on another once it is kill -9'd
(never restarted) or frozen past its TTL, and there after; a sticky node too busy to
claim a turn gives it up within the bound (ORPHAN_BEATS beats) while it is still busy;
a forged `node` of a session, or a forged item of a node's list, steers no turn to a node
that does not run its tenant's agent, and each tenant's session shows its own holder.
Real daemons, real workers (tests/session_agent.py), a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from corral.cluster.keys import Keys
from corral.supervisor.tasks.sessions import SessionKey

from ..daemon_harness import PY
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import Node, nodes
from .test_cluster_session_identity import TENANTS, add, keyed

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


def submit(n: Node, turn: int, session: str = "s", **more: Any) -> str:
    task_id: str = n.call("tasks.submit", {"agent": "chat", "input": {"turn": turn, **more},
                                        "session": session})["task_id"]
    return task_id


def done(n: Node, task_id: str) -> Any:
    return n.call("tasks.get", {"task_id": task_id, "wait": True})


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
        [(node, _)] = {ran(rec) for rec in before}
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
        waited = second["attempts"][0]["started"] - second["created"]
        log(f"a turn given to a busy node ran elsewhere after {waited:.2f} s (bound "
            f"ORPHAN_BEATS x beat {CLUSTER['beat']} s)")
        with open(hold, "wb"):
            pass
        assert done(busy, blocker)["status"] == "succeeded"
        # the session is the other node's now
        assert ran(done(busy, submit(busy, 3)))[0] == other.name


def log(text: str) -> None:
    print(text)  # (pytest -s shows it)


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
