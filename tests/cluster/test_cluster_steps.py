"""A cluster task's steps in Redis (corral/cluster/steps.py, docs/durable.md): a node
SIGKILLed after call k of a 10-call task, its task taken over by another node, whose
retry is answered from the steps and makes only the calls left (the MCP servers, one per
node, count into one file: exactly 10 calls), given the task's checkpoint; the same
with `ctx.step`; a retry there that diverges is marked and goes on live. The STEP
script alone: a write without the claim's fence token is refused, and the steps go when
the task ends. A step whose MAC does not verify is not believed: its call is made again;
one the fence or Redis refuses fails its call with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis as redis_py

from corral.cluster import records
from corral.cluster.connection import connect
from corral.cluster.keys import Keys
from corral.cluster.scripts import Scripts
from corral.supervisor.config import ClusterSettings

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from ..test_durable import fleet, lines
from .claimscript import claim_script
from .harness import STEADY_TTL, Node, nodes
from .test_cluster_specs import log

pytestmark = pytest.mark.timeout(90)


def running_task(ns: dict[str, Node], task_id: str) -> Node:
    """The node whose attempt of the task is running."""
    rec = next(iter(ns.values())).call("tasks.get", {"task_id": task_id})
    return ns[rec["attempts"][-1]["node"]]


@pytest.mark.parametrize(("k", "checkpoint", "named"), [
    (1, False, False), (5, True, False), (9, False, False), (5, False, True)])
def test_a_node_killed_after_call_k_leaves_the_retry_nothing_to_call_twice(
        tmp: Path, redis: RedisServer, k: int, checkpoint: bool, named: bool) -> None:
    """`named`: each call a `ctx.step` around a counted function instead."""
    marker, counter = tmp / "marker", tmp / "counter"
    agents = fleet(tmp)
    with nodes(tmp, redis, {"a": agents, "b": agents}) as ns:
        wait_until(lambda: sum(n["alive"] for n in ns["a"].nodes()["nodes"]) == 2,
                   what="both nodes alive")
        task_id = ns["a"].call("tasks.submit", {"agent": "durable", "input": {
            "calls": 10, "stop_after": k, "how": "hang", "marker": str(marker),
            "checkpoint": checkpoint, "named": named, "counter": str(counter)}})["task_id"]
        wait_until(marker.exists, 30, f"the worker past call {k}")
        killed = running_task(ns, task_id)
        killed.kill9()
        other = ns["b" if killed.name == "a" else "a"]
        done = other.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        said = "counted" if named else "bumped"
        assert done["output"]["results"] == [f"{said} {i}" for i in range(1, 11)]
        assert lines(counter if named else tmp / "server-count") == [
            str(i) for i in range(1, 11)]
        attempts = done["attempts"]
        first, last = attempts[0], attempts[-1]
        assert (first["node"], first["outcome"]) == (killed.name, "lost")
        assert last["outcome"] == "succeeded" and "diverged" not in last
        # a loaded host may let the survivor's own lease lapse too (CI a1, at load 37: three
        # attempts): each attempt between is then lost and replays, none diverges, and the
        # counts above still say no call was made twice
        assert all(a["outcome"] == "lost" and "diverged" not in a for a in attempts[1:-1])
        assert last["replayed"] >= k
        # and the retry on the other node was given the task's last checkpoint
        assert done["output"]["resumed"] is checkpoint
        assert done["output"]["task_state"] == ({"done": k} if checkpoint else None)
        if len(attempts) == 2:
            assert last["node"] == other.name and last["replayed"] == k
            assert other.call("stats.get")["tasks"]["steps"]["replayed"] == k
        r = redis_py.Redis(port=redis.port)
        try:  # the steps went with the task's end
            assert r.exists(Keys("test").steps(task_id)) == 0
        finally:
            r.close()


def test_a_retry_on_another_node_that_diverges_is_marked_and_goes_live(
        tmp: Path, redis: RedisServer) -> None:
    marker = tmp / "marker"
    agents = fleet(tmp)
    # the steady TTL: the killed node's lapse is found within it all the same, and a live
    # node's lapse under the short one (a loaded host's) made an attempt more
    with nodes(tmp, redis, {"a": agents, "b": agents}, ttl=STEADY_TTL) as ns:
        wait_until(lambda: sum(n["alive"] for n in ns["a"].nodes()["nodes"]) == 2,
                   what="both nodes alive")
        task_id = ns["a"].call("tasks.submit", {"agent": "durable", "input": {
            "calls": 8, "stop_after": 6, "how": "hang", "marker": str(marker),
            "diverge_at": 4}})["task_id"]
        wait_until(marker.exists, 30, "the worker past call 6")
        killed = running_task(ns, task_id)
        killed.kill9()
        other = ns["b" if killed.name == "a" else "a"]
        done = other.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        # 1-3 from the steps; from 4 other arguments: live, the journal's 4-6 deleted
        assert lines(tmp / "server-count") == ["1", "2", "3", "4", "5", "6",
                                               "400", "500", "600", "700", "800"]
        assert len(done["attempts"]) == 2, done["attempts"]
        second = done["attempts"][1]
        assert (second.get("replayed"), second.get("diverged")) == (3, 4), done["attempts"]
        assert other.call("stats.get")["tasks"]["steps"]["diverged"] == 1


K = Keys("t")
TID = "0190a5c0-0000-7000-8000-000000000001"


async def test_only_the_claim_writes_steps_and_they_go_with_the_task(client: Any) -> None:
    s = Scripts(client)
    assert await s.submit(keys=[K.task(TID), K.stream("acme", "w", 0),
                                K.priorities("acme", "w"), K.agents,
                                K.live],
                          args=[TID, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", "",
                                "", "", "acme", "mac"]) == 1
    entry = await client.hget(K.task(TID), "entry")
    token, *_ = await claim_script(s)(
        keys=[K.task(TID), K.attempts(TID), K.fence, K.stream("acme", "w", 0)],
        args=["n/1", "n", "2.0", entry, records.claimed_attempt("n", 2.0), 2, "30.0", "acme"])

    async def step(fence: int, drop: str, *fields: str) -> Any:
        return await s.step(keys=[K.task(TID), K.steps(TID)], args=[fence, drop, *fields])

    assert await step(token, "", "1", "a", "2", "b", "3", "c", "0:n", "d") == 1
    assert await step(token + 1, "", "4", "x") == 0  # not this claim's token: refused
    assert await step(token, "2", "2", "B") == 1  # diverged at 2: 2 and 3 go, 2 again
    assert await client.hgetall(K.steps(TID)) == {b"1": b"a", b"2": b"B", b"0:n": b"d"}
    assert await s.finish(keys=[K.task(TID), K.attempts(TID), K.stream("acme", "w", 0), K.outcomes,
                                *K.listed],
                          args=[token, TID, "succeeded", b"{}", b"", "3.0", entry, 0, 60, 0,
                                "0", ""]) == 1
    assert await client.exists(K.steps(TID)) == 0
    assert await step(token, "", "5", "y") == 0  # ended: nothing more
    assert await client.exists(K.steps(TID)) == 0


def test_a_forged_step_is_refused_and_its_call_made_again(tmp: Path,
                                                          redis: RedisServer) -> None:
    """With a cluster key, a step written into Redis without it (another tool's result
    put in the first attempt's place) is not replayed: counted, said, made live."""
    import os

    key = tmp / "cluster.key"
    key.write_bytes(os.urandom(32).hex().encode())
    key.chmod(0o600)
    marker = tmp / "marker"
    agents = fleet(tmp)
    keyed = f'key_file = "{key}"\n'
    with nodes(tmp, redis, {"a": agents, "b": agents}, extra=keyed) as ns:
        wait_until(lambda: sum(n["alive"] for n in ns["a"].nodes()["nodes"]) == 2,
                   what="both nodes alive")
        task_id = ns["a"].call("tasks.submit", {"agent": "durable", "input": {
            "calls": 4, "stop_after": 2, "how": "hang", "marker": str(marker)}})["task_id"]
        wait_until(marker.exists, 30, "the worker past call 2")
        r = redis_py.Redis(port=redis.port)
        try:
            k = Keys("test")
            mac, _, payload = r.hget(k.steps(task_id), "2").partition(b" ")
            forged = payload.replace(b"bumped 2", b"bumped 9")
            r.hset(k.steps(task_id), "2", mac + b" " + forged)
        finally:
            r.close()
        killed = running_task(ns, task_id)
        killed.kill9()
        other = ns["b" if killed.name == "a" else "a"]
        done = other.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert done["output"]["results"] == [f"bumped {i}" for i in range(1, 5)]
        # call 1 from the steps; 2 (forged) made again, and 3, 4
        assert lines(tmp / "server-count") == ["1", "2", "2", "3", "4"]
        assert done["attempts"][1]["replayed"] == 1
        trust = other.call("stats.get")["cluster"]["trust"]
        assert trust["refused"]["steps"] == 1
        assert f"cluster: refused step 2 of task {task_id} from Redis" in log(other)


async def test_a_step_the_fence_or_redis_refuses_fails_its_call_with_the_reason(
        client: Any, redis: RedisServer) -> None:
    """A worker is never given a result its retry would not be (decision 255)."""
    from corral import jsonrpc
    from corral.cluster.queue import ClusterTask
    from corral.cluster.steps import ClusterSteps
    from corral.cluster.trust import Trust
    from corral.jsonrpc import RpcError
    from corral.supervisor.tasks.stepjournal import Step

    s = Scripts(client)
    await s.submit(keys=[K.task(TID), K.stream("acme", "w", 0),
                         K.priorities("acme", "w"), K.agents, K.live],
                   args=[TID, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", "", "", "", "acme",
                         "mac"])
    entry = await client.hget(K.task(TID), "entry")
    token, *_ = await claim_script(s)(
        keys=[K.task(TID), K.attempts(TID), K.fence, K.stream("acme", "w", 0)],
        args=["n/1", "n", "2.0", entry, records.claimed_attempt("n", 2.0), 2, "30.0", "acme"])

    def task(fence: int) -> ClusterTask:
        return ClusterTask(TID, "w", msgspec.Raw(b"{}"), 0, 30.0, 1, 1.0, token=fence,
                           base=0, entry=entry.decode(), stream=K.stream("acme", "w", 0),
                           consumer="n/1")

    held = {TID: task(token)}
    steps = ClusterSteps(s, K, Trust(None, "t", print), held.get)
    steps.put(Step(TID, 1, "a__b", 1, b"\x01", b'{"ok":1}'))
    await steps.committed(TID)
    assert [(x.seq, x.name, x.args, x.body) for x in await steps.history(TID)] == [
        (1, "a__b", b"\x01", b'{"ok":1}')]
    held[TID] = task(token + 7)  # a claim this node no longer holds
    steps.put(Step(TID, 2, "a__b", 1, b"\x02", b'{"ok":2}'))
    with pytest.raises(RpcError) as refused:
        await steps.committed(TID)
    assert (refused.value.code, refused.value.message) == (
        jsonrpc.CONFLICT,
        f"step not kept: task {TID} is no longer this node's claim (fence {token + 7})")
    assert [x.seq for x in await steps.history(TID)] == [1]

    away = connect(ClusterSettings(redis="redis://127.0.0.1:1", name="t", node="n"), "n")
    try:
        gone = ClusterSteps(Scripts(away), K, Trust(None, "t", print), held.get)
        gone.put(Step(TID, 3, "a__b", 1, b"\x03", b'{"ok":3}'))
        with pytest.raises(RpcError) as unreached:
            await gone.committed(TID)
        assert unreached.value.code == jsonrpc.UNAVAILABLE
        assert unreached.value.message.startswith(
            "step not kept: the cluster's Redis did not take it (")
        assert await gone.history(TID) == []  # unread: the retry's calls go live
    finally:
        await away.aclose()
