"""Cluster tasks across real daemons on one host and a real redis-server: submitted on
any node, run on a node that runs the agent, readable from every node."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import redis as sync_redis

from corral import methods as m
from corral.cluster.keys import Keys

from ..daemon_harness import hello
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from ..test_methods import Raw, holds
from .harness import STEADY_TTL, Node, nodes, sleeper


def test_a_task_submitted_on_a_runs_on_b_and_every_node_reads_it(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": hello("greeter")}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: any(n["node"] == "b" and n["alive"]
                               for n in a.nodes()["nodes"]), what="b alive")
        r = a.run("greeter", '{"name": "cluster"}')
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["status"] == "succeeded"
        assert res["output"]["greeting"] == "hello, cluster"
        assert [x["node"] for x in res["attempts"]] == ["b"]
        for n in (a, b):
            info = msgspec.json.decode(n.cli("task", res["task_id"], "--json").stdout,
                                       type=m.TaskInfo)
            assert info.status == "succeeded" and info.output == res["output"]
            assert [x.node for x in info.attempts] == ["b"]


def test_nodes_and_a_cluster_task_answer_as_declared(tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": hello("greeter")}, ttl=STEADY_TTL) as ns:
        a = ns["a"]
        c = Raw(a.sock)
        try:
            wait_until(lambda: holds(m.NodesResult, c.call("nodes.list")).nodes,
                       what="a listed")
            got = holds(m.NodesResult, c.call("nodes.list")).nodes
            assert [(n.node, n.alive, n.incarnation, n.agents) for n in got] == [
                ("a", True, 1, ["greeter"])]
            ran = holds(m.TaskResult, c.call("tasks.run", {"agent": "greeter"}))
            assert ran.status == "succeeded"
            info = holds(m.TaskInfo, c.call("tasks.get", {"task_id": ran.task_id}))
            assert [x.node for x in info.attempts] == ["a"]
            stats = msgspec.json.decode(c.call("stats.get"))
            assert stats["cluster"]["node"] == "a" and stats["cluster"]["claimed"] == 1
            assert stats["cluster"]["published"] == 1
        finally:
            c.close()


def test_local_runs_here_and_refusals_say_why(tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": hello("greeter")}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 2, what="both nodes")
        r = b.run("greeter", "null", "--local")
        assert r.returncode == 0, r.stderr
        assert "node" not in json.loads(r.stdout)["attempts"][0]  # not a cluster task
        r = a.run("greeter", "null", "--local")
        assert r.returncode == 1 and "no such agent: greeter" in r.stderr, r.stderr
        r = a.run("nobody", "null")
        assert r.returncode == 1
        assert r.stderr.strip() == "corral: no live node of cluster test runs agent nobody"
        r = a.cli("task", "0190a5c0-0000-7000-8000-000000000000")
        assert r.returncode == 1 and "no such task" in r.stderr, r.stderr


def test_nodes_without_a_cluster_is_a_clear_error(tmp: Path) -> None:
    from ..daemon_harness import running_daemon
    (tmp / "solo").mkdir()
    with running_daemon(tmp / "solo", hello("greeter")) as d:
        r = d.cli("nodes")
        assert r.returncode == 1
        assert r.stderr.strip() == ("corral: this daemon is not a node of a cluster (its "
                                    "config has no [cluster] table)")


def test_redis_away_refuses_submissions_and_loses_nothing_accepted(
        tmp: Path, redis: RedisServer) -> None:
    # each acknowledged write on disk before its answer: with everysec a busy disk's slow
    # fsync lets Redis answer writes it has not yet written, which its kill -9 then loses
    # (ci c4: an accepted task "no such task" after the restart), not corral's to keep
    redis.appendfsync = "always"  # (its restart below too)
    admin = sync_redis.Redis.from_url(redis.url)
    try:
        admin.config_set("appendfsync", "always")
    finally:
        admin.close()
    # a TTL longer than the outage under a loaded machine's slow CLI calls: a node that
    # cannot renew for 2 x TTL fences itself and its tasks end lost (test_takeover.py)
    with nodes(tmp, redis, {"a": "", "b": sleeper("sleepy", concurrency=4)}, ttl=6.0,
               beat=0.5) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 2, what="both nodes")
        # accepted before Redis dies: one running, the others waiting in the stream
        ids = [a.call("tasks.submit", {"agent": "sleepy",
                                    "input": {"do": "sleep", "seconds": 0.3}})["task_id"]
               for _ in range(8)]
        redis.kill()
        r = a.run("sleepy", '{"do": "echo"}')
        assert r.returncode == 1
        assert r.stderr.startswith(f"corral: the cluster's Redis at {redis.url} is "
                                   "unreachable ("), r.stderr
        assert r.stderr.rstrip().endswith("): the task was not accepted"), r.stderr
        r = a.cli("nodes")
        assert r.returncode == 1 and "the nodes cannot be listed" in r.stderr
        # a cancel is refused as plainly, and the task runs on (it succeeds below)
        r = a.cli("cancel", ids[-1])
        assert r.returncode == 1
        assert r.stderr.startswith(f"corral: the cluster's Redis at {redis.url} is "
                                   "unreachable ("), r.stderr
        assert r.stderr.rstrip().endswith(f"): task {ids[-1]} was not cancelled"), r.stderr
        # local work goes on, and no node died of it
        assert b.run("sleepy", '{"do": "echo", "x": 1}', "--local").returncode == 0
        assert a.proc is not None and a.proc.poll() is None
        redis.start()  # from its AOF
        for task_id in ids:
            info = a.call("tasks.get", {"task_id": task_id, "wait": True})
            assert info["status"] == "succeeded", info
        r = a.run("sleepy", '{"do": "echo", "y": 2}')
        assert r.returncode == 0, r.stderr


def test_progress_reaches_the_record_read_anywhere(tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": sleeper("sleepy")}, ttl=STEADY_TTL) as ns:
        a = ns["a"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 2, what="both nodes")
        r = a.run("sleepy", '{"do": "progress", "steps": 3}')
        assert r.returncode == 0, r.stderr
        task_id = json.loads(r.stdout)["task_id"]
        info = a.call("tasks.get", {"task_id": task_id})
        assert info["progress"]["message"] == "step 3"
        assert (info["progress"]["progress"], info["progress"]["total"]) == (3, 3)


def test_higher_priority_runs_first_and_the_queue_is_bounded(tmp: Path,
                                                             redis: RedisServer) -> None:
    agent = sleeper("sleepy") + "max_queue = 6\n"
    # the count below holds while b stays a member: a loaded host that held b's loop past
    # the short TTL had b taken for dead and its running task's entry waiting again (one
    # more than the bound counted, in a fresh clone's run at load); no node lapses here
    with nodes(tmp, redis, {"a": agent.replace("[agents.sleepy]", "[agents.sleepy]\n"
                                               "replicas = 0"), "b": agent},
               ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 2, what="both nodes")

        def submit(priority: int, seconds: float = 0.05) -> str:
            return str(a.call("tasks.submit", {
                "agent": "sleepy", "priority": priority,
                "input": {"do": "sleep", "seconds": seconds}})["task_id"])

        # b's one slot, held until the queue's bound is seen (a slot of fixed seconds
        # ended under load before the submits and the CLI's start below were done, and
        # the run it was to refuse was taken): the rest wait in their streams
        busy = submit(0, 120.0)
        wait_until(lambda: b.call("stats.get")["tasks"]["total"]["running"] == 1,
                   what="b busy")
        low = [submit(0) for _ in range(3)]
        high = [submit(5) for _ in range(3)]
        # the bound is the agent's (its every priority's stream: decision 1832), by the
        # submitting node's max_queue, of what waits unread: 6 waiting (the running
        # task's entry, pending, not counted), so none more at any priority
        for priority in ("0", "5", "9"):
            r = a.run("sleepy", '{"do": "echo"}', "--priority", priority)
            assert r.returncode == 1
            assert r.stderr.strip() == ("corral: queue full: agent sleepy has 6 tasks "
                                        "waiting (max_queue 6)")
        assert a.call("tasks.cancel", {"task_id": busy})["status"] == "cancelled"
        started = {t: a.call("tasks.get", {"task_id": t, "wait": True})["started"]
                   for t in [busy, *low, *high]}
        assert max(started[t] for t in high) < min(started[t] for t in low)


def test_a_cluster_task_is_cancelled_from_any_node(tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": sleeper("sleepy")}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 2, what="both nodes")

        def submit(seconds: float) -> str:
            return str(a.call("tasks.submit", {"agent": "sleepy",
                                            "input": {"do": "sleep", "seconds": seconds}}
                              )["task_id"])

        running, queued = submit(30), submit(30)
        wait_until(lambda: b.call("stats.get")["tasks"]["total"]["running"] == 1,
                   what="b busy")
        got = a.call("tasks.cancel", {"task_id": queued})
        assert (got["status"], got["error"]["message"], got["attempts"]) == (
            "cancelled", "cancelled while queued", [])
        got = a.call("tasks.cancel", {"task_id": running})  # b cancels it at its beat
        assert got["status"] == "cancelled"
        assert [(x["node"], x["outcome"]) for x in got["attempts"]] == [("b", "cancelled")]
        r = a.cli("cancel", running)
        assert r.returncode == 1
        assert r.stderr.strip() == f"corral: task {running} already finished (cancelled)"
        # on the node running it: at once
        third = submit(30)
        wait_until(lambda: b.call("stats.get")["tasks"]["total"]["running"] == 1,
                   what="b busy again")
        got = b.call("tasks.cancel", {"task_id": third})
        assert got["status"] == "cancelled" and got["attempts"][0]["node"] == "b"
        assert a.call("tasks.get", {"task_id": third})["status"] == "cancelled"


def test_a_task_asked_to_cancel_is_not_handed_back_by_its_stopping_node(
        tmp: Path, redis: RedisServer) -> None:
    """A node that stops between a cancel asked on another node and its next beat (a
    long one here) cancels the task then, rather than handing it back to run again."""
    with nodes(tmp, redis, {"a": "", "b": sleeper("sleepy")}, ttl=15.0, beat=5.0) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 2, what="both nodes")
        tid = a.call("tasks.submit", {"agent": "sleepy",
                                   "input": {"do": "sleep", "seconds": 30}})["task_id"]
        wait_until(lambda: b.call("stats.get")["tasks"]["total"]["running"] == 1,
                   what="b runs it", timeout=30)
        r = sync_redis.Redis.from_url(redis.url)
        with ThreadPoolExecutor(1) as pool:
            try:
                # the command waits for the end, which b's next beat is far from
                cancel = pool.submit(a.call, "tasks.cancel", {"task_id": tid})
                wait_until(lambda: r.hget(Keys("test").task(tid), "cancel") == b"1",
                           what="the cancel asked")
            finally:
                r.close()
            assert b.stop() == 0
            got = cancel.result(timeout=30)
        assert (got["status"], [(x["node"], x["outcome"]) for x in got["attempts"]]) == (
            "cancelled", [("b", "cancelled")])
        assert a.call("tasks.get", {"task_id": tid})["status"] == "cancelled"


def test_an_unready_replica_takes_no_cluster_task(tmp: Path, redis: RedisServer) -> None:
    """Readiness gates the pull as it gates dispatch: a node whose replica has not passed
    its readiness check reads nothing for it."""
    marker = tmp / "ready"
    agent = sleeper("sleepy") + (
        f'[agents.sleepy.health.readiness]\ncommand = ["test", "-e", "{marker}"]\n'
        "interval = 0.1\nfailures = 1\n")
    b = Node(tmp / "b", "b", redis, agent, ttl=STEADY_TTL)
    try:
        with nodes(tmp, redis, {"a": ""}, ttl=STEADY_TTL) as ns:
            a = ns["a"]
            b.start(wait_ready=False)  # it says READY once its replica is ready
            wait_until(lambda: len(a.nodes()["nodes"]) == 2, what="both nodes")
            task_id = a.call("tasks.submit", {"agent": "sleepy",
                                           "input": {"do": "echo"}})["task_id"]
            deadline = time.monotonic() + 1.0  # several beats and checks: still waiting
            while time.monotonic() < deadline:
                info = a.call("tasks.get", {"task_id": task_id})
                assert (info["status"], info["attempts"]) == ("queued", [])
                time.sleep(0.1)
            marker.touch()
            done = a.call("tasks.get", {"task_id": task_id, "wait": True})
            assert done["status"] == "succeeded" and done["attempts"][0]["node"] == "b"
    finally:
        b.close()


def test_the_first_task_on_an_idle_cluster_starts_without_waiting_for_a_beat(
        tmp: Path, redis: RedisServer) -> None:
    """No task was ever submitted for the agent: the node that runs it waits on the
    default priority's stream all the same (it makes it), so the first task wakes it at
    once, not at its next beat (5 s here). The task goes in once b is seen (on the wire
    to Redis) blocked reading that stream: what it does then is what is tested."""
    from .proxy import Proxy

    proxy = Proxy(redis.port)
    waiting = proxy.watch(b"XREAD", b"BLOCK", b"5000", b"corral:{test}:q:default:greeter:0")
    b = Node(tmp / "b", "b", redis, hello("greeter"), beat=5.0, ttl=15.0)
    b.config.write_text(b.config.read_text().replace(redis.url, proxy.url))
    try:
        with nodes(tmp, redis, {"a": ""}, beat=5.0, ttl=15.0) as ns:
            a = ns["a"]
            b.start()
            assert waiting.wait(20), "b never blocked reading the default priority's stream"
            r = a.run("greeter", '{"name": "first"}')
            assert r.returncode == 0, r.stderr
            res = json.loads(r.stdout)
            info = msgspec.json.decode(a.cli("task", res["task_id"], "--json").stdout,
                                       type=m.TaskInfo)
    finally:
        b.close()
        proxy.close()
    assert info.status == "succeeded" and [x.node for x in info.attempts] == ["b"]
    waited = info.attempts[0].started - info.created
    assert waited < 2.5, waited
