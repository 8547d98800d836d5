"""A cluster task's `delay` and `not_before` (issue 72): held out of its agent's streams in
the cluster's due set until its time, shown `queued` with its `not_before` meanwhile, then
moved into its stream by whichever live node's beat finds it due, exactly once; a bad
value is refused in the local path's words; a cancel ends it before it runs."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from corral.cluster.due import DUE
from corral.cluster.keys import Keys

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import Node, nodes, sleeper
from .test_failover import error_of

ECHO = {"do": "echo"}


def both_alive(a: Node) -> None:
    wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2,
               what="both nodes alive")


def ended(n: Node, task_id: str) -> Any:
    return n.call("tasks.get", {"task_id": task_id, "wait": True})


# long enough that the reads which follow the submit see it queued on a loaded machine
# (a fresh clone beside the other engineers' work read it already run at a shorter one)
DELAY = 4.0


def test_a_delayed_task_waits_queued_and_then_runs_on_one_of_two_nodes(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": sleeper("w"), "b": sleeper("w")}) as ns:
        a, b = ns["a"], ns["b"]
        both_alive(a)
        task_id = a.call("tasks.submit", {"agent": "w", "input": ECHO,
                                          "delay": DELAY})["task_id"]
        # on either node: queued, its start time said as a local delayed task's is
        seen = b.call("tasks.get", {"task_id": task_id})
        assert seen["status"] == "queued", seen
        assert abs(seen["not_before"] - (seen["created"] + DELAY)) < 0.01, seen
        assert seen["waiting"].startswith("delayed until "), seen
        assert seen["options"]["delay"] == DELAY and seen["attempts"] == []
        listed = {t["task_id"]: t for t in a.call("tasks.list", {})["tasks"]}
        assert listed[task_id]["status"] == "queued"
        done = ended(a, task_id)
        assert done["status"] == "succeeded", done
        (attempt,) = done["attempts"]
        assert attempt["node"] in ("a", "b")
        assert attempt["started"] >= done["created"] + DELAY - 0.01, done
        assert done.get("not_before") is None


def test_a_not_before_in_the_past_runs_at_once_and_bad_values_are_refused_as_locally(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": sleeper("w")}) as ns:
        a, b = ns["a"], ns["b"]
        both_alive(a)
        past = time.time() - 3600
        got = a.call("tasks.submit", {"agent": "w", "input": ECHO, "not_before": past,
                                      "wait": 60})
        assert got["status"] == "succeeded", got
        # not held for any time of its own (a minute: a loaded machine's start at most)
        info = b.call("tasks.get", {"task_id": got["task_id"]})
        assert info["attempts"][0]["started"] < info["created"] + 60, info
        assert info["options"]["not_before"] == past
        # refused as a local task is, in the same words, with nothing accepted
        for bad, said in (
                ({"delay": 5, "not_before": time.time() + 5},
                 "invalid params: give delay or not_before, not both"),
                ({"not_before": time.time() + 400 * 86400},
                 "invalid params: not_before is more than 366 days from now"),
                ({"delay": -1}, "Expected `float` >= 0.0 - at `$.delay`")):
            asked = {"agent": "w", "input": ECHO, **bad}
            assert error_of(a, "tasks.submit", asked) == error_of(
                b, "tasks.submit", {**asked, "local": True}), bad
            assert said in (error_of(a, "tasks.submit", asked) or ""), bad
        assert [t["task_id"] for t in a.call("tasks.list", {})["tasks"]] == [
            got["task_id"]]


def test_a_delayed_task_outlives_the_node_that_accepted_it(
        tmp: Path, redis: RedisServer) -> None:
    """a, which runs no agent w, takes the task and is killed -9 before its time: b's
    beat moves it when due and b runs it."""
    with nodes(tmp, redis, {"a": "", "b": sleeper("w")}) as ns:
        a, b = ns["a"], ns["b"]
        both_alive(a)
        task_id = a.call("tasks.submit", {"agent": "w", "input": ECHO,
                                          "delay": 2.0})["task_id"]
        a.kill9()
        done = ended(b, task_id)
        assert done["status"] == "succeeded", done
        (attempt,) = done["attempts"]
        assert attempt["node"] == "b"
        assert attempt["started"] >= done["created"] + 2.0 - 0.01


def test_a_delayed_task_cancelled_ends_cancelled_and_never_runs(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": sleeper("w"), "b": sleeper("w")}) as ns:
        a, b = ns["a"], ns["b"]
        both_alive(a)
        # a delay the calls below come well within on a loaded host too: a second had
        # passed there before the cancel came, and the task ran ("already finished")
        task_id = a.call("tasks.submit", {"agent": "w", "input": ECHO,
                                          "delay": 4.0})["task_id"]
        # a later one, due after it: once it has run, the first's time had come too
        later = a.call("tasks.submit", {"agent": "w", "input": ECHO,
                                        "delay": 4.5})["task_id"]
        cancelled = b.call("tasks.cancel", {"task_id": task_id})
        assert cancelled["status"] == "cancelled", cancelled
        assert cancelled["error"]["message"] == "cancelled while queued"
        assert ended(a, later)["status"] == "succeeded"
        after = a.call("tasks.get", {"task_id": task_id})
        assert (after["status"], after["attempts"]) == ("cancelled", []), after
        assert after.get("not_before") is None


async def test_two_nodes_moving_due_tasks_at_once_move_each_exactly_once(
        client: Any) -> None:
    """DUE, as every node's beat runs it, called many times at once: each due task gets
    one stream entry, a task not yet due none, a cancelled one none."""
    k = Keys("t")
    stream = k.stream("acme", "w", 0)
    ids = [f"0190a5c0-0000-7000-8000-0000000001{i:02d}" for i in range(20)]
    for i, tid in enumerate(ids):
        await client.hset(k.task(tid), mapping={
            "status": "cancelled" if i == 0 else "queued", "entry": "", "stream": stream,
            "not_before": "1"})
        await client.zadd(k.due, {tid: 1.0 if i < 19 else time.time() + 3600})
    due = client.register_script(DUE)
    answers = await asyncio.gather(*(due(keys=[k.due], args=[
        repr(time.time()), k.prefix, 7]) for _ in range(8)))
    entries = await client.xrange(stream)  # (one each: moved exactly once)
    assert sorted(f[b"task"].decode() for _e, f in entries) == sorted(ids[1:19])
    for tid, (entry_id, _f) in zip(sorted(ids[1:19]), sorted(
            entries, key=lambda e: e[1][b"task"]), strict=True):
        assert await client.hget(k.task(tid), "entry") == entry_id
        assert await client.hget(k.task(tid), "not_before") is None
    assert await client.hget(k.task(ids[0]), "entry") == b""
    assert await client.zrange(k.due, 0, -1) == [ids[19].encode()]
    # (the calls ran in whatever order their connections reached Redis: the one that ran
    # last, whichever it was, found only the task not yet due left)
    assert max(float(first) for first in answers) > time.time()


# -- a task's own retry policy (`retry`), kept with its record -----------------------------
BACKOFF = 0.3
POLICY = f"retry_backoff = {BACKOFF}\nretry_jitter = false\n"


def test_a_tasks_own_retry_policy_runs_it_again_after_its_backoff_counted_in_its_record(
        tmp: Path, redis: RedisServer) -> None:
    """The agents retry nothing of their own (retries = 0): the task's policy does, each
    attempt numbered across the cluster (ctx.attempt) and listed in the record."""
    with nodes(tmp, redis, {"a": sleeper("w") + POLICY, "b": sleeper("w") + POLICY}) as ns:
        a, b = ns["a"], ns["b"]
        both_alive(a)
        policy = {"retries": 2, "retry_on": ["failed"]}
        got = a.call("tasks.submit", {"agent": "w", "input": {"do": "until", "attempt": 3},
                                      "retry": policy, "wait": 60})
        assert (got["status"], got["output"]) == ("succeeded", {"attempt": 3}), got
        attempts = got["attempts"]
        assert [x["outcome"] for x in attempts] == ["failed", "failed", "succeeded"]
        assert all(x["node"] in ("a", "b") for x in attempts), attempts
        for i, (before, after) in enumerate(itertools.pairwise(attempts)):
            assert after["started"] - before["finished"] >= BACKOFF * 2 ** i - 0.002, (
                attempts)
        assert b.call("tasks.get", {"task_id": got["task_id"]})["options"]["retry"] == (
            policy)
        # its retries spent: failed, with every attempt and its error in the record
        got = b.call("tasks.submit", {"agent": "w", "input": {"do": "until", "attempt": 3},
                                      "retry": {"retries": 1, "retry_on": ["failed"]},
                                      "wait": 60})
        assert got["status"] == "failed", got
        assert [(x["outcome"], x["error"]) for x in got["attempts"]] == [
            ("failed", "attempt 1 failed on request"),
            ("failed", "attempt 2 failed on request")]
        # a policy that retries no failure: one attempt, as a local task's
        got = a.call("tasks.submit", {"agent": "w", "input": {"do": "until", "attempt": 2},
                                      "retry": {"retries": 3, "retry_on": ["timed_out"]},
                                      "wait": 60})
        assert [x["outcome"] for x in got["attempts"]] == ["failed"], got


def test_a_tasks_own_retry_lost_decides_its_takeover_when_its_node_dies(
        tmp: Path, redis: RedisServer) -> None:
    """retry_lost = 0 (at most once): its node killed -9 mid-attempt, the other node's
    reaper ends it lost rather than running it again (its agents' retry_lost is 2)."""
    with nodes(tmp, redis, {"a": sleeper("w"), "b": sleeper("w")}) as ns:
        a, b = ns["a"], ns["b"]
        both_alive(a)
        task_id = a.call("tasks.submit", {"agent": "w", "input": {
            "do": "sleep", "seconds": 60}, "retry": {"retry_lost": 0}})["task_id"]
        running = wait_until(lambda: (lambda t: t if t["status"] == "running" else None)(
            b.call("tasks.get", {"task_id": task_id})), what="the task claimed")
        victim = ns[running["attempts"][-1]["node"]]
        other = b if victim is a else a
        victim.kill9()
        done = ended(other, task_id)
        assert done["status"] == "lost", done
        assert done["error"]["message"].endswith(
            "(not run again: at most once, retry_lost = 0)"), done
        assert [x["outcome"] for x in done["attempts"]] == ["lost"]


def test_a_retry_waits_out_its_backoff_in_the_cluster_and_outlives_its_node(
        tmp: Path, redis: RedisServer) -> None:
    """A failed attempt with a retry left is queued again for any node, due after its
    backoff: the node that ran it killed -9 meanwhile, the other runs the retry when it
    is due, the record listing both attempts."""
    slow = "retry_backoff = 2.0\nretry_jitter = false\n"
    with nodes(tmp, redis, {"a": sleeper("w") + slow, "b": sleeper("w") + slow}) as ns:
        a = ns["a"]
        both_alive(a)
        task_id = a.call("tasks.submit", {
            "agent": "w", "input": {"do": "until", "attempt": 2},
            "retry": {"retries": 1, "retry_on": ["failed"]}})["task_id"]
        waiting = wait_until(lambda: (lambda t: t if t["status"] == "queued" and t[
            "attempts"] else None)(a.call("tasks.get", {"task_id": task_id})),
            what="the first attempt failed and its retry queued")
        (first,) = waiting["attempts"]
        assert first["outcome"] == "failed", waiting
        assert waiting["not_before"] == pytest.approx(first["finished"] + 2.0, abs=0.1)
        assert waiting["waiting"].startswith("delayed until "), waiting
        ran, other = ns[first["node"]], ns["b" if first["node"] == "a" else "a"]
        ran.kill9()
        done = ended(other, task_id)
        assert (done["status"], done["output"]) == ("succeeded", {"attempt": 2}), done
        assert [(x["node"], x["outcome"]) for x in done["attempts"]] == [
            (ran.name, "failed"), (other.name, "succeeded")]
        assert done["attempts"][1]["started"] >= waiting["not_before"] - 0.002
