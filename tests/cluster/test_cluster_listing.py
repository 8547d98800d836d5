"""`corral tasks` and a task's progress across real daemons on one host and a real
redis-server: every node lists the cluster's tasks wherever they were submitted and run,
and a client waiting on one node hears the progress of its task running on another."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import msgspec
import redis as redis_py

from ..daemon_harness import hello
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, Node, nodes, sleeper


def listed(n: Node, *args: str) -> Any:
    r = n.cli("tasks", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def ids(page: Any) -> list[str]:
    return [t["task_id"] for t in page["tasks"]]


def test_every_node_lists_the_clusters_tasks(tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": sleeper("sleepy") + hello("greeter"),
                            "c": ""}, ttl=STEADY_TTL) as ns:
        a, b, c = ns["a"], ns["b"], ns["c"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 3, what="three nodes")

        def submit(n: Node, task: dict[str, Any]) -> str:
            return str(n.call("tasks.submit", {"agent": "sleepy",
                                            "input": task})["task_id"])

        done = []
        for n in (c, a):
            done.append(submit(n, {"do": "echo"}))
            assert n.call("tasks.get", {"task_id": done[-1], "wait": True})[
                "status"] == "succeeded"
        running = submit(a, {"do": "sleep", "seconds": 30})
        wait_until(lambda: b.call("stats.get")["tasks"]["total"]["running"] == 1,
                   what="b busy")
        queued = submit(c, {"do": "sleep", "seconds": 30})
        here = json.loads(b.run("greeter", "null", "--local").stdout)["task_id"]
        everything = [*done, running, queued]
        for n in (a, b, c):
            page = listed(n)
            assert ids(page) == everything and "next" not in page  # newest last
            assert [(t["status"], t.get("node"), t["attempts"]) for t in page["tasks"]] == [
                ("succeeded", "b", 1), ("succeeded", "b", 1), ("running", "b", 1),
                ("queued", None, 0)]
        # the filters a node has work on the cluster's tasks
        assert ids(listed(c, "--status", "running")) == [running]
        assert ids(listed(c, "--status", "queued")) == [queued]
        assert ids(listed(c, "--status", "succeeded", "--agent", "sleepy")) == done
        assert ids(listed(c, "--agent", "nobody")) == []
        assert ids(listed(c, "--since", "1h")) == everything
        page = listed(a, "--limit", "3")
        assert (ids(page), page["next"]) == (everything[1:], done[1])
        page = listed(a, "--limit", "3", "--before", page["next"])
        assert ids(page) == done[:1] and "next" not in page
        # --local: this node's own tasks, as without [cluster]
        assert ids(listed(b, "--local")) == [here]
        assert ids(listed(a, "--local")) == []
        # the table says which node
        r = a.cli("tasks")
        assert r.returncode == 0, r.stderr
        head, *rows = r.stdout.splitlines()
        assert head.split() == ["TASK", "AGENT", "STATUS", "NODE", "PRIORITY", "ATTEMPTS",
                                "CREATED"]
        assert [row.split()[:4] for row in rows] == [
            [done[0], "sleepy", "succeeded", "b"], [done[1], "sleepy", "succeeded", "b"],
            [running, "sleepy", "running", "b"], [queued, "sleepy", "queued", "-"]]
        # over HTTP's route the same method answers (the query's `local` too)
        assert a.call("tasks.list", {"local": True})["tasks"] == []


def test_listing_fails_plainly(tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": sleeper("sleepy")}, ttl=6.0, beat=0.5) as ns:
        a = ns["a"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 1, what="a listed")
        unknown = "0190a5c0-0000-7000-8000-000000000000"
        r = a.cli("tasks", "--before", unknown)
        assert r.returncode == 1
        assert r.stderr.strip() == (f"corral: no such task: {unknown} (the cursor `before` "
                                    "names no task kept: pruned, or never accepted; list "
                                    "again from the newest)")
        r = a.cli("task", unknown)
        assert r.returncode == 1
        assert r.stderr.strip() == f"corral: no such task: {unknown}"
        local = json.loads(a.run("sleepy", '{"do": "echo"}', "--local").stdout)["task_id"]
        redis.kill()
        # refused, not answered with this node's tasks as if they were the cluster's
        r = a.cli("tasks")
        assert r.returncode == 1
        assert r.stderr.startswith(f"corral: the cluster's Redis at {redis.url} is "
                                   "unreachable ("), r.stderr
        assert r.stderr.rstrip().endswith(
            "): the cluster's tasks cannot be listed (`corral tasks --local` lists this "
            "node's own)"), r.stderr
        assert ids(listed(a, "--local")) == [local]


class Client:
    """The control socket by hand, notifications and all: what a `corral run` reads."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)  # every read bounded
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")

    def send(self, method: str, params: dict[str, Any]) -> None:
        self.sock.sendall(msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": method,
                                               "params": params}) + b"\n")

    def next(self) -> Any:
        return msgspec.json.decode(self.file.readline())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_progress_of_a_task_running_elsewhere_reaches_its_client(
        tmp: Path, redis: RedisServer) -> None:
    hold = tmp / "go-on"
    with nodes(tmp, redis, {"a": "", "b": sleeper("sleepy")}, ttl=STEADY_TTL) as ns:
        a = ns["a"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 2, what="both nodes")
        c = Client(a.sock)
        try:
            c.send("tasks.run", {"agent": "sleepy", "input": {
                "do": "progress", "steps": 2, "hold": str(hold)}})
            accepted = c.next()
            assert accepted["method"] == "task.accepted"
            task_id = accepted["params"]["task_id"]
            # the first step comes while the task still runs on b (it waits for `hold`)
            first = c.next()
            assert first == {"jsonrpc": "2.0", "method": "task.progress", "params": {
                "task_id": task_id, "progress": 1, "total": 2, "message": "step 1"}}
            assert a.call("tasks.get", {"task_id": task_id})["status"] == "running"
            hold.touch()
            second = c.next()
            assert second["method"] == "task.progress"
            assert second["params"]["message"] == "step 2"
            answer = c.next()
            assert answer["id"] == 1 and answer["result"]["status"] == "succeeded"
            assert [x["node"] for x in answer["result"]["attempts"]] == ["b"]
        finally:
            c.close()
        # the CLI shows it as for a local task
        r = a.cli("run", "sleepy", "--input", '{"do": "progress", "steps": 3}')
        assert r.returncode == 0, r.stderr
        assert r.stderr.splitlines()[-1] == "progress: 3/3 step 3"
        # a detached task's progress stays in its record: nobody follows it
        detached = a.call("tasks.submit", {"agent": "sleepy",
                                        "input": {"do": "progress", "steps": 2}})["task_id"]
        assert a.call("tasks.get", {"task_id": detached, "wait": True})["progress"][
            "message"] == "step 2"
        direct = redis_py.Redis.from_url(redis.url)
        try:
            carried = {f[b"task"].decode() for _, f in direct.xrange("corral:{test}:outcomes")
                       if b"progress" in f}
        finally:
            direct.close()
        assert task_id in carried and detached not in carried
