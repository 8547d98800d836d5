"""`task/spawn` on a cluster (issue 56; docs/workflows.md#spawn, decision 740): a cluster
task's children are cluster tasks, run on any node, their rows kept in Redis with them
under the parent's claim, so that the parent's attempt on another node after its node
was kill -9'd spawns nothing twice; the bounds (`spawns`, `max_spawn_depth`,
`max_children`) refuse as on one node, with the same words.

Real daemons on a real redis-server; SDK workers (tests/orchestrator_agent.py) as
orchestrator and leaves, the leaves counting their runs in files."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.cluster.clusterspawns import SPAWN
from corral.cluster.keys import Keys
from corral.cluster.scripts import Scripts

from ..conftest import ROOT
from ..daemon_harness import PY
from ..redis_harness import RedisServer
from ..test_daemon_cli import WAIT, wait_until
from ..test_spawn import HERE, counted, fleet, reach_walk
from .harness import STEADY_TTL, Node, cluster_table, nodes
from .test_cluster_specs import log
from .test_cluster_trust import attacker, trust
from .test_scripts import LAST, TID, submit
from .test_takeover import said_of_leases

pytestmark = pytest.mark.timeout(180)


def _ended(n: Node, task_id: str) -> dict[str, Any]:
    return dict(n.call("tasks.get", {"task_id": task_id, "wait": True}))


def _run(n: Node, task_input: dict[str, Any], **params: Any) -> dict[str, Any]:
    task_id = n.call("tasks.submit", {"agent": "orch", "input": task_input,
                                      **params})["task_id"]
    return _ended(n, task_id)


def test_a_cluster_task_spawns_cluster_tasks_a_local_one_local_ones(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": fleet(), "b": fleet()}) as ns:
        a, b = ns["a"], ns["b"]
        count = tmp / "count"
        done = _run(a, {"children": 6, "count": str(count)})
        assert done["status"] == "succeeded", done
        assert done["output"] == [0, 2, 4, 6, 8, 10]
        assert counted(count) == list(range(6))
        # the children are the cluster's: listed, and their records read, on any node
        leaves = b.call("tasks.list", {"agent": "leaf"})["tasks"]
        assert len(leaves) == 6
        assert {x["status"] for x in leaves} == {"succeeded"}
        assert _run(b, {"children": 3, "map": True, "count": str(count)})["output"] == [
            0, 2, 4]  # ctx.map: spawn and wait
        local = tmp / "local"
        done = _run(a, {"children": 3, "count": str(local)}, local=True)
        assert done["output"] == [0, 2, 4]
        assert counted(local) == [0, 1, 2]
        assert len(b.call("tasks.list", {"agent": "leaf"})["tasks"]) == 9  # a's own


def test_a_map_wider_than_the_redis_pool_spawns_and_waits(tmp: Path, redis: RedisServer
                                                          ) -> None:
    """150 spawns sent at once (ctx.map) and waited for: more than the node's Redis
    client has connections (100), which a spawn or a wait must not all ask for at once."""
    wide = fleet("max_tool_calls_per_task = 150")  # (each spawn is one of its calls)
    # (the nodes' TTL a steady one: the test waits on no node's lapse, and at load a
    # node's loop held past the short TTL over 150 spawns failed the map: fresh clone h1)
    with nodes(tmp, redis, {"a": wide, "b": wide}, ttl=STEADY_TTL) as ns:
        count = tmp / "count"
        done = _run(ns["a"], {"children": 150, "map": True, "count": str(count)})
        assert done["status"] == "succeeded", (done.get("error"), done)
        assert done["output"] == [i * 2 for i in range(150)]
        assert counted(count) == list(range(150))


def test_a_cluster_tasks_spawns_are_bounded_as_on_one_node(
        tmp: Path, redis: RedisServer) -> None:
    toml = fleet("max_children = 2\nmax_spawn_depth = 2")
    with nodes(tmp, redis, {"a": toml, "b": toml}) as ns:
        a = ns["a"]
        got = _run(a, {"children": 1, "agent": "other", "count": "x", "catch": True})
        assert got["output"] == {"refused": "task/spawn: agent orch may not spawn tasks of "
                                 "agent other (its spawns list: ['leaf', 'orch'])",
                                 "code": jsonrpc.REFUSED}
        got = _run(a, {"children": 1, "agent": "ghost", "count": "x", "catch": True})
        assert got["output"] == {"refused": "no such agent: ghost", "code": jsonrpc.NOT_FOUND}
        got = _run(a, {"children": 3, "count": str(tmp / "c"), "catch": True})
        assert got["output"] == {"refused": f"task/spawn: fan-out exceeded: task "
                                 f"{got['task_id']} has spawned 2 children (max_children 2 "
                                 "of agent orch)", "code": jsonrpc.REFUSED}
        # (the two spawned run on, as a failed parent's children do)
        wait_until(lambda: counted(tmp / "c") == [0, 1], what="the two children's runs")
        # depth: orch -> orch (1) -> orch (2) -> a third level is refused
        deepest = _run(a, {"recurse": 3})["output"]
        assert deepest["status"] == "failed", deepest
        assert deepest["error"] == (f"RequestError: task/spawn: spawn depth exceeded: a child "
                                    f"of task {deepest['task_id']} would be at depth 3 "
                                    "(max_spawn_depth 2 of agent orch)")
        assert _run(a, {"recurse": 2})["output"] == 2
        other = a.call("tasks.submit", {"agent": "leaf", "input": {
            "leaf": True, "n": 1, "count": str(tmp / "c2")}})["task_id"]
        got = _run(a, {"wait_for": other, "catch": True})
        assert got["output"] == {"refused": f"task/wait: task {other} is not a child of task "
                                 f"{got['task_id']}", "code": jsonrpc.INVALID_PARAMS}


def _agent(name: str, tenant: str, extra: str = "") -> str:
    return (f'[agents.{name}]\ncommand = ["{PY}", "{HERE}/orchestrator_agent.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\ntenant = "{tenant}"\n{extra}\n')


def test_a_child_is_a_task_of_the_parents_tenants_agent_wherever_it_runs(
        tmp: Path, redis: RedisServer) -> None:
    """a's `leaf` is tenant b's, b's is tenant a's: a's orchestrator (tenant a) spawns
    b's; an agent a live node runs only as another tenant's is no agent to it."""
    tenants = "[tenants.a]\n[tenants.b]\n"
    with nodes(tmp, redis, {
            "a": tenants + _agent("orch", "a", 'spawns = ["*"]\nmax_concurrent_tasks = 2')
            + _agent("leaf", "b"),
            "b": tenants + _agent("leaf", "a") + _agent("only-b", "b")}) as ns:
        a, count = ns["a"], tmp / "count"
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2,
                   what="both nodes alive")
        assert _run(a, {"children": 2, "count": str(count)})["output"] == [0, 2]
        assert {t["node"] for t in a.call("tasks.list", {"agent": "leaf"})["tasks"]} == {"b"}
        got = _run(a, {"children": 1, "agent": "only-b", "count": "x", "catch": True})
        assert got["output"] == {"refused": "no such agent: only-b", "code": jsonrpc.NOT_FOUND}


@pytest.mark.deadline(120)
async def test_a_cluster_tree_is_held_to_its_roots_tokens_reach(
        tmp: Path, redis: RedisServer) -> None:
    """The reach rides in each task's record: a child's spawn, run on a node that never
    saw the token, is held to it, and a grandchild's too."""
    (tmp / "d").mkdir()
    await reach_walk(tmp / "d", cluster_table(redis, "solo"))


def _running(n: Node, task_input: dict[str, Any]) -> str:
    task_id = n.call("tasks.submit", {"agent": "orch", "input": task_input})["task_id"]
    wait_until(lambda: n.call("tasks.get", {"task_id": task_id})["status"] == "running",
               what="the orchestrator running")
    return str(task_id)


UNSIGNED = ("in Redis is not signed with this node's cluster key (a Redis writer without "
            "the key made or changed it): refused")


def test_a_forged_row_or_place_spawns_nothing(tmp: Path, redis: RedisServer) -> None:
    """A Redis writer without the cluster key: a place in a tree (a depth, a reach) or a
    spawn's row (a child of its choosing) that does not verify refuses the spawn, or the
    wait that reads the row, said and counted; nothing is spawned for it. A place deleted
    is refused as one changed: every task's record has one, signed."""
    k, r = Keys("test"), attacker(redis)
    with nodes(tmp, redis, {"a": fleet()}) as ns:
        a = ns["a"]
        count = tmp / "count"
        for forged in ("place", "gone", "row"):
            gate = tmp / f"gate-{forged}"
            task_id = _running(a, {"children": 1, "count": str(count), "catch": True,
                                   "gate": str(gate)})
            if forged in ("place", "gone"):
                # changed, or deleted (which read as a root's, free of a token's reach)
                assert r.hget(k.task(task_id), "lineage") is not None
                if forged == "place":
                    r.hset(k.task(task_id), "lineage", '0 [0,null,null,""]')
                else:
                    r.hdel(k.task(task_id), "lineage")
                said = f"task/spawn: the place of task {task_id} in its spawn tree {UNSIGNED}"
            else:
                r.hset(k.spawns(task_id), "1", f"0 {TID.format(9)}")
                said = f"task/spawn: the row of spawn 1 of task {task_id} {UNSIGNED}"
            gate.touch()
            got = _ended(a, task_id)
            assert got["output"] == {"refused": said, "code": jsonrpc.REFUSED}
        assert a.call("tasks.list", {"agent": "leaf"})["tasks"] == []
        assert not count.exists()
        # a row changed after its spawn: the wait that reads it is refused
        gate = tmp / "gate-wait"
        task_id = _running(a, {"children": 1, "count": str(count), "catch": True,
                               "wait_gate": str(gate)})
        wait_until(lambda: r.hexists(k.spawns(task_id), "1"), what="the spawn's row")
        child = r.hget(k.spawns(task_id), "1").split()[-1].decode()
        r.hset(k.spawns(task_id), "1", f"0 {child}")
        gate.touch()
        assert _ended(a, task_id)["output"] == {
            "refused": f"task/wait: the row of spawn 1 of task {task_id} {UNSIGNED}",
            "code": jsonrpc.REFUSED}
        assert trust(a)["refused"]["spawns"] == 4


def test_a_spawn_under_a_claim_no_longer_the_nodes_is_refused(
        tmp: Path, redis: RedisServer) -> None:
    """The parent's record moved to another claim's token (as a takeover moves it, here by
    a Redis writer's hand): the node's spawn under its old token writes nothing."""
    k, r = Keys("test"), attacker(redis)
    with nodes(tmp, redis, {"a": fleet()}) as ns:
        a, gate, note = ns["a"], tmp / "gate", tmp / "note"
        task_id = _running(a, {"children": 1, "count": str(tmp / "count"), "catch": True,
                               "gate": str(gate), "note": str(note)})
        token = int(r.hget(k.task(task_id), "fence"))
        r.hset(k.task(task_id), "fence", token + 100)
        gate.touch()
        wait_until(lambda: note.exists() and note.read_text(), what="the refusal")
        assert note.read_text() == (f"{jsonrpc.CONFLICT} task/spawn: task {task_id} is no "
                                    f"longer this node's claim (fence {token})")
        assert not r.exists(k.spawns(task_id))
        assert a.call("tasks.list", {"agent": "leaf"})["tasks"] == []


def test_a_spawn_redis_does_not_answer_is_refused_so(tmp: Path, redis: RedisServer
                                                     ) -> None:
    # Redis away, the node fences itself two TTLs after its last renewal and the task
    # leaves its replica: a spawn that reaches the node after that is refused as an
    # attempt no longer running there, not as Redis's silence (a loaded host's worker,
    # slow to see the gate, came after the short TTL's lapse). With the TTL the test's
    # own patience, the refusal it waits for comes before any lapse can
    with nodes(tmp, redis, {"a": fleet()}, ttl=WAIT) as ns:
        a, gate, note = ns["a"], tmp / "gate", tmp / "note"
        _running(a, {"children": 1, "count": str(tmp / "count"), "catch": True,
                     "gate": str(gate), "note": str(note)})
        redis.kill()
        gate.touch()
        wait_until(lambda: note.exists() and note.read_text(), what="the refusal")
        said = note.read_text()
        assert said.startswith(f"{jsonrpc.UNAVAILABLE} task/spawn: the cluster's Redis did "
                               "not answer ("), said
        assert not (tmp / "count").exists()


def test_a_childs_cluster_queue_full_refuses_the_spawn(tmp: Path, redis: RedisServer
                                                       ) -> None:
    # one leaf slot: a child claimed and held runs, the next waits unread (what max_queue
    # counts), the one after is refused; the second spawn may come before the node read
    # the first, and is then the one refused
    toml = fleet().replace("max_concurrent_tasks = 8",
                           "max_concurrent_tasks = 1\nmax_queue = 1")
    with nodes(tmp, redis, {"a": toml}) as ns:
        a, hold = ns["a"], tmp / "hold"
        got = _run(a, {"children": 3, "count": str(tmp / "count"), "hold": str(hold),
                       "catch": True})
        assert got["output"] == {"refused": "queue full: agent leaf has 1 task waiting "
                                 "(max_queue 1)", "code": jsonrpc.REFUSED}
        hold.touch()
        leaves = a.call("tasks.list", {"agent": "leaf"})["tasks"]
        assert len(leaves) in (1, 2), leaves
        wait_until(lambda: all(a.call("tasks.get", {"task_id": t["task_id"]})["status"]
                               == "succeeded" for t in leaves), what="the children's runs")
        assert counted(tmp / "count") == list(range(len(leaves)))


async def test_the_spawn_script_writes_only_under_the_parents_claim(client: Any) -> None:
    """SPAWN (clusterspawns.py) alone: a parent not running under the caller's token
    writes nothing; a key with a row answers it; max_children counts the rows."""
    s = Scripts(client)
    spawn = client.register_script(SPAWN)
    k = Keys("t")
    parent = TID.format(1)
    assert await submit(s, 1) == 1
    await client.hset(k.task(parent), mapping={"status": "running", "fence": "7"})

    async def child(i: int, token: int, key: str, fan: int = 10) -> Any:
        tid = TID.format(i)
        return await spawn(
            keys=[k.task(tid), k.stream("acme", "w", 0), k.priorities("acme", "w"), k.agents,
                  k.live, k.task(parent), k.spawns(parent)],
            args=[tid, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", token, key, fan,
                  f"mac {tid}", *LAST])

    assert await child(2, 6, "1") == [b"fence"]
    assert not await client.exists(k.task(TID.format(2)), k.spawns(parent))
    assert await child(2, 7, "1") == 1
    assert await client.hget(k.task(TID.format(2)), "status") == b"queued"
    assert await child(3, 7, "1") == [b"had", f"mac {TID.format(2)}".encode()]
    assert not await client.exists(k.task(TID.format(3)))
    assert await child(3, 7, "2", fan=1) == [b"fan", 1]
    assert await child(3, 7, "2", fan=2) == 1
    await client.hset(k.task(parent), "status", "succeeded")
    assert await child(4, 7, "3") == [b"fence"]


CHILDREN = 30
STOP_AFTER = 12


def _three(tmp: Path, redis: RedisServer) -> Any:
    # the leaves retried when their node dies (a dead node's task is lost without)
    toml = fleet().replace("max_concurrent_tasks = 8", "max_concurrent_tasks = 4\nretries = 2")
    # the steady TTL: the lapse waited on is the faulted node's, found within it all the
    # same; under the short one a loaded host's live node lapsed too (a fresh clone's
    # attempts read lost, lost, succeeded) or held the first attempt past its marker's wait
    return nodes(tmp, redis, {name: toml for name in ("a", "b", "c")}, ttl=STEADY_TTL)


def _marks(marks: Path) -> dict[int, dict[str, int]]:
    """n -> {task id: the leaf's runs under it}."""
    out: dict[int, dict[str, int]] = {}
    for f in marks.iterdir():
        n, task_id, _attempt = f.name.split(".")
        runs = out.setdefault(int(n), {})
        runs[task_id] = runs.get(task_id, 0) + 1
    return out


@pytest.mark.parametrize("fault", ["kill9", "sigstop"])
def test_a_spawn_tree_whose_node_dies_finishes_on_another_spawning_none_twice(
        tmp: Path, redis: RedisServer, fault: str) -> None:
    """kill9: the node is never restarted; sigstop: it is frozen past its TTL, and thawed
    once the tree has finished elsewhere (its own attempt's worker still hangs there, and
    is cancelled as the node finds itself fenced)."""
    with _three(tmp, redis) as ns:
        marks, marker = tmp / "marks", tmp / "marker"
        marks.mkdir()
        count = tmp / "count"
        first = ns["a"]
        # (each leaf naps: some are at work on the driving node when it dies)
        task_id = first.call("tasks.submit", {"agent": "orch", "input": {
            "children": CHILDREN, "count": str(count), "marks": str(marks), "nap": 0.2,
            "stop_after": STOP_AFTER, "how": "hang", "marker": str(marker)}})["task_id"]
        # its first attempt spawned STOP_AFTER children and hangs: its node dies (the
        # marker comes within a second or two at load; a wait past that says where the
        # task stood, how far it spawned and what the nodes said of their leases)
        try:
            wait_until(marker.exists, timeout=60, what="the orchestrator's marker")
        except AssertionError as late:
            raise AssertionError(late.args[0], first.call(
                "tasks.get", {"task_id": task_id}), sorted(p.name for p in marks.iterdir()),
                said_of_leases(ns.values())) from None
        driving = first.call("tasks.get", {"task_id": task_id})["attempts"][-1]["node"]
        pid = ns[driving].proc.pid  # type: ignore[union-attr]
        if fault == "kill9":
            ns[driving].kill9()
        else:
            os.kill(pid, signal.SIGSTOP)
        gone = time.monotonic()
        live = [n for name, n in ns.items() if name != driving]
        done = _ended(live[0], task_id)
        took = time.monotonic() - gone
        if fault == "sigstop":
            os.kill(pid, signal.SIGCONT)
            wait_until(lambda: "fenced itself" in log(ns[driving]), what="the thawed node "
                       "fenced")
        assert done["status"] == "succeeded", done
        assert done["output"] == [i * 2 for i in range(CHILDREN)]
        attempts = done["attempts"]
        assert attempts[0]["node"] == driving
        assert attempts[-1]["node"] != driving
        assert [x["outcome"] for x in attempts] == ["lost", "succeeded"]
        # each child spawned once, under one id however many attempts of its parent
        # asked for it; its work done once, or once more by a retry of the same task
        runs = _marks(marks)
        assert sorted(runs) == list(range(CHILDREN))
        retried = 0
        for n, by_task in runs.items():
            (child,) = by_task
            tries = len(live[1].call("tasks.get", {"task_id": child})["attempts"])
            assert 1 <= by_task[child] <= tries, (n, by_task, tries)
            retried += tries > 1
        assert sorted(set(counted(count))) == list(range(CHILDREN))
        assert len(live[1].call("tasks.list", {"agent": "leaf", "limit": 100})["tasks"]) \
            == CHILDREN
        # its rows went with its end; its children's places stay with their records
        assert not attacker(redis).exists(Keys("test").spawns(task_id))
        print(f"\n{fault}: a tree of {CHILDREN} finished {took:.2f} s after the fault, "
              f"{retried} children retried")
        assert took < STEADY_TTL + 60, took
