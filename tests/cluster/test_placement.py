"""Cluster agents (`corral add --cluster`): the spec in Redis, its replicas placed on live
nodes under a placement epoch (compare-and-set), run exactly where placed, re-placed on a
survivor when their node dies, with the state their slot last checkpointed (kept in
Redis, fenced by the placement)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from corral.cluster.keys import Keys
from corral.cluster.membership import NodeView
from corral.cluster.placement import plan
from corral.cluster.scripts import Scripts

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY, running_daemon
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import TTL, Node, nodes, run, sleeper

pytestmark = pytest.mark.timeout(60)

K = Keys("t")
KEEPER = {"command": [PY, f"{EXAMPLES}/misbehave.py"], "env": {"PYTHONPATH": str(ROOT)},
          "retries": 1, "stop_timeout": 5.0}


async def test_two_nodes_placing_from_one_epoch_one_wins(client: Any) -> None:
    s = Scripts(client)
    keys = [K.placement, K.cluster_agents]
    assert await s.place(keys=keys, args=["w", 0, b'["a/1"]']) == -1  # no such agent
    assert await s.add_agents(keys=[K.cluster_agents, K.agent_macs, K.history("w")],
                              args=["w", b"{}", b"{}", "mac"]) == b""
    assert await s.add_agents(keys=[K.cluster_agents, K.agent_macs, K.history("v"),
                                    K.history("w")],
                              args=["v", b"{}", b"{}", "mac", "w", b"{}", b"{}", "mac"]
                              ) == b"w"
    assert not await client.hexists(K.cluster_agents, "v")  # all or none
    assert not await client.hexists(K.agent_macs, "v")
    assert not await client.exists(K.history("v"))
    # both read epoch 0 and place: one wins, the other is told the epoch moved on
    assert await s.place(keys=keys, args=["w", 0, b'["a/1"]']) == 1
    assert await s.place(keys=keys, args=["w", 0, b'["b/1"]']) == 0
    assert await client.hget(K.placement, "w") == b'{"epoch":1,"slots":["a/1"]}'
    assert await s.place(keys=keys, args=["w", 1, b"[]"]) == 2
    assert await client.hget(K.placement, "w") == b'{"epoch":2,"slots":[]}'


async def test_only_the_slots_incarnation_writes_its_checkpoint(client: Any) -> None:
    s = Scripts(client)
    await s.add_agents(keys=[K.cluster_agents, K.agent_macs, K.history("w")],
                       args=["w", b"{}", b"{}", "mac"])
    await s.place(keys=[K.placement, K.cluster_agents], args=["w", 0, b'["a/1","b/2"]'])
    ck = [K.placement, K.state("w")]
    assert await s.checkpoint(keys=ck, args=["w", 1, "b/2", b"[1.0,{}]"]) == 1
    # a/1 lost slot 1 (or never had it), b's earlier incarnation too, slot 2 is no slot
    assert await s.checkpoint(keys=ck, args=["w", 1, "a/1", b"[2.0,{}]"]) == 0
    assert await s.checkpoint(keys=ck, args=["w", 1, "b/1", b"[2.0,{}]"]) == 0
    assert await s.checkpoint(keys=ck, args=["w", 2, "b/2", b"[2.0,{}]"]) == 0
    assert await s.checkpoint(keys=ck, args=["x", 0, "a/1", b"[2.0,{}]"]) == 0
    assert await client.hgetall(K.state("w")) == {b"1": b"[1.0,{}]"}


def view(node: str, inc: int = 1, *, alive: bool = True, load: int = 0,
         agents: tuple[str, ...] = (), placed: tuple[str, ...] = (),
         draining: bool = False) -> NodeView:
    return NodeView(node, alive, inc, load, list(agents), 0.0, 0, 0, list(placed), draining)


def test_plan_keeps_live_slots_and_fills_by_room() -> None:
    a, b, c = view("a"), view("b", load=3), view("c", alive=False)
    room = {"a/1": 1, "b/1": 5}
    # c is dead: its slot goes to the node with the most room; a keeps its own
    assert plan("w", ["a/1", "c/1"], 2, [a, b, c], True, room) == ["a/1", "b/1"]
    assert room == {"a/1": 1, "b/1": 4}
    # spread first: a second replica goes where the agent is not, room allowing
    assert plan("w", [None, None], 2, [a, view("b")], True, {"a/1": 9, "b/1": 1}) == [
        "a/1", "b/1"]
    # not settled (Redis just came back): a missing key is not yet a dead node
    assert plan("w", ["c/1"], 1, [a, b, c], False, {"a/1": 1}) == ["c/1"]
    # an old incarnation of a live node is dead; a draining node keeps nothing
    assert plan("w", ["a/0", "b/1"], 2, [a, view("b", draining=True)], True,
                {"a/1": 2, "b/1": 9}) == ["a/1", "a/1"]
    # no room anywhere: the slot waits; fewer replicas wanted: the list shrinks
    assert plan("w", [None], 1, [a], True, {"a/1": 0}) == [None]
    assert plan("w", ["a/1", "b/1"], 1, [a, b], True, {}) == ["a/1"]
    # a node with an agent of that name of its own is not given the cluster's
    assert plan("w", [], 1, [view("a", agents=("w",)), b], True, {"a/1": 9, "b/1": 1}
                ) == ["b/1"]


def placed_on(ns: list[Node], agent: str) -> list[str]:
    return [n.name for n in ns
            if agent in n.call("stats.get")["cluster"]["agents"]["placed"]]


def test_a_cluster_agent_moves_with_its_state_when_its_node_dies(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": "", "c": ""}) as ns:
        everyone = list(ns.values())
        a = ns["a"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 3,
                   what="three nodes alive")
        assert a.call("agents.add", {"agents": {"keeper": KEEPER}, "cluster": True}) == {
            "added": ["keeper"]}
        wait_until(lambda: len(placed_on(everyone, "keeper")) == 1, what="placed")
        first = run(a, "keeper", {"do": "checkpoint", "state": {"seen": 7}})
        assert first["status"] == "succeeded", first
        [host] = [n for n in everyone if n.name == first["attempts"][0]["node"]]
        assert placed_on(everyone, "keeper") == [host.name]  # run exactly where placed
        wait_until(lambda: host.call("stats.get")["cluster"]["agents"]["checkpoints"] >= 1,
                   what="the checkpoint kept in Redis")
        survivors = [n for n in everyone if n is not host]
        watcher = survivors[0]
        killed_at = time.monotonic()
        host.kill9()
        # accepted while the agent is being re-placed: it waits in its stream
        moved = run(watcher, "keeper", {"do": "state"}, timeout=30)
        took = time.monotonic() - killed_at
        assert moved["status"] == "succeeded", moved
        assert moved["output"] == {"state": {"seen": 7}}
        assert moved["attempts"][0]["node"] != host.name
        assert took < TTL + 10, took
        # one replica, on one survivor, ever: check each a few times
        for _ in range(3):
            assert placed_on(survivors, "keeper") == [moved["attempts"][0]["node"]]
        print(f"re-placed and ran within {took:.2f} s of the kill (TTL {TTL} s)")

        assert watcher.call("agents.remove", {"names": ["keeper"]}) == {
            "removed": ["keeper"]}
        wait_until(lambda: placed_on(survivors, "keeper") == [], what="stopped everywhere")
        # (a node lets go of its placement before its agent's replica has stopped: the
        # status lists the agent until then)
        wait_until(lambda: all("keeper" not in {x["name"] for x in n.json("status")["agents"]}
                               for n in survivors), what="gone from every survivor's status")


def test_cluster_agent_refusals(tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": sleeper("sleepy")}) as ns:
        a = ns["a"]
        command = ["--command", shlex.join([PY, f"{EXAMPLES}/misbehave.py"]), "--env",
                   f"PYTHONPATH={ROOT}"]
        r = a.cli("add", "--cluster", "--name", "sleepy", *command)
        assert r.returncode != 0
        assert "agent sleepy already exists on this node" in r.stderr
        r = a.cli("add", "--cluster", "--name", "x", "--command", "/no/such/thing")
        assert r.returncode != 0 and "agents.x.command" in r.stderr, r.stderr
        assert "--no-check" in r.stderr
        r = a.cli("add", "--cluster", "--name", "keeper", *command)
        assert (r.returncode, r.stdout) == (0, "added: keeper\n"), r.stderr
        r = a.cli("add", "--cluster", "--name", "keeper", *command)
        assert r.returncode != 0 and "cluster agent keeper already exists" in r.stderr
        wait_until(lambda: placed_on([a], "keeper") == ["a"], what="keeper placed on a")
        # the node's own agent of the cluster's name stays its own
        assert set(a.call("stats.get")["cluster"]["agents"]["placed"]) == {"keeper"}
    (tmp / "solo").mkdir()
    with running_daemon(tmp / "solo", "") as solo:
        r = solo.cli("add", "--cluster", "--name", "keeper", *command)
        assert r.returncode != 0
        assert "this daemon is not a node of a cluster" in r.stderr, r.stderr


def test_drain_finishes_what_runs_hands_over_the_cluster_agent_and_leaves(
        tmp: Path, redis: RedisServer) -> None:
    worker = sleeper("sleepy", concurrency=2)
    with nodes(tmp, redis, {"a": worker, "b": worker, "c": worker}) as ns:
        everyone = list(ns.values())
        a = ns["a"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 3,
                   what="three nodes alive")
        a.call("agents.add", {"agents": {"keeper": KEEPER}, "cluster": True})
        wait_until(lambda: len(placed_on(everyone, "keeper")) == 1, what="placed")
        [x] = [n for n in everyone if n.name == placed_on(everyone, "keeper")[0]]
        others = [n for n in everyone if n is not x]
        ids = [x.call("tasks.submit", {"agent": "sleepy",
                                    "input": {"do": "sleep", "seconds": 1.5}})["task_id"]
               for _ in range(6)]
        wait_until(lambda: x.call("stats.get")["tasks"]["total"]["running"] >= 1,
                   what="tasks running on the node to drain")
        st = others[0].json("status", "--cluster")
        assert sorted(v["node"] for v in st["nodes"]) == ["a", "b", "c"]
        assert "agents" in st
        # a node lists the cluster agents it runs at its next beat after it started them
        # (placement said where first): the listing is waited for, not raced
        wait_until(lambda: "keeper*" in others[0].cli("status", "--cluster").stdout,
                   what="keeper listed on its node")
        text = others[0].cli("status", "--cluster").stdout
        assert "keeper*" in text and "NODE" in text, text
        # the incarnation it drains is the one it is now (a node fenced on a loaded host
        # comes back as the next: the drain names that one)
        [now] = [n["incarnation"] for n in a.nodes()["nodes"]
                 if n["node"] == x.name and n["alive"]]
        r = others[0].cli("drain", x.name)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"node {x.name} (incarnation {now}) drains"), r.stdout
        # what it ran, it finished: no task ran twice, none was lost
        done = [others[1].call("tasks.get", {"task_id": t, "wait": True}) for t in ids]
        assert [(d["status"], len(d["attempts"])) for d in done] == [("succeeded", 1)] * 6
        assert x.name in {d["attempts"][0]["node"] for d in done}
        # its cluster agent went to another node; then it left the cluster
        wait_until(lambda: placed_on(others, "keeper") != [], what="keeper handed over")
        wait_until(lambda: x.call("stats.get")["cluster"]["state"] == "left",
                   what="drained node left")
        assert placed_on(everyone, "keeper") == placed_on(others, "keeper")
        assert len(placed_on(others, "keeper")) == 1
        views = {v["node"]: v for v in others[0].nodes()["nodes"]}
        assert not views[x.name]["alive"]
        # new tasks go to the others only; local work on it goes on
        after = run(others[0], "sleepy", {"do": "sleep", "seconds": 0.1})
        assert after["attempts"][0]["node"] != x.name
        assert x.call("tasks.run", {"agent": "sleepy", "local": True,
                                    "input": {"do": "sleep", "seconds": 0.01}}
                      )["status"] == "succeeded"
        # a node that left still takes cluster submissions (Redis holds them) and reads
        # their outcomes: they run on the others (docs/cluster.md)
        sent = x.call("tasks.submit", {"agent": "sleepy",
                                    "input": {"do": "sleep", "seconds": 0.01}})["task_id"]
        got = x.call("tasks.get", {"task_id": sent, "wait": True})
        assert got["status"] == "succeeded" and got["attempts"][0]["node"] != x.name
        # refusals: an unknown node, a node not alive
        r = others[0].cli("drain", "nosuch")
        assert r.returncode != 0 and "no node nosuch in cluster test" in r.stderr, r.stderr
        r = others[0].cli("drain", x.name)
        assert r.returncode != 0 and f"node {x.name} is not alive" in r.stderr, r.stderr


def test_a_slot_a_change_of_the_table_brings_here_starts_with_its_state(
        tmp: Path, redis: RedisServer) -> None:
    """`corral scale` changes the table; the node that places the new slot in the same
    beat brings its agent to the new table, and the replica it starts for that slot gets
    the state the slot last checkpointed, as a re-placed slot does."""
    with nodes(tmp, redis, {"a": ""}) as ns:
        a = ns["a"]
        a.call("agents.add", {"agents": {"keeper": KEEPER}, "cluster": True})
        wait_until(lambda: placed_on([a], "keeper") == ["a"], what="placed")
        # slot 1 checkpointed (its replica ran before a scale down)
        r = sync_redis.Redis.from_url(redis.url)
        try:
            r.hset(Keys("test").state("keeper"), "1", b'[1.0,{"seen":9}]')
        finally:
            r.close()
        assert a.cli("scale", "keeper", "2").returncode == 0
        wait_until(lambda: [x["state"] for x in a.status_json()["agents"]] == ["ready"] * 2,
                   what="two replicas ready")
        # one replica held by a task, the state asked of the other, until that is replica
        # 1 (the least loaded takes a task: both are idle between rounds)
        for i in range(5):
            hold = tmp / f"hold{i}"
            held = a.call("tasks.submit", {"agent": "keeper", "local": True,
                                        "input": {"do": "await", "path": str(hold)}}
                          )["task_id"]
            wait_until(lambda t=held: a.call("tasks.get", {"task_id": t})["status"] == (
                "running"), what="a replica held")
            got = a.call("tasks.run", {"agent": "keeper", "local": True,
                                       "input": {"do": "state"}})
            hold.touch()
            assert a.call("tasks.get", {"task_id": held, "wait": True})["status"] == (
                "succeeded")
            if got["attempts"][0]["replica"] == 1:
                break
        assert (got["attempts"][0]["replica"], got["output"]["state"]) == (1, {"seen": 9})
