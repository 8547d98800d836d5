"""Crash-safe by default on a cluster (issue 73, DESIGN 26): two nodes, each driving a
workflow run whose map items run on both, and no `retries` written anywhere. Node a is
kill -9'd mid-map: node b takes a's run over within node_ttl and a beat (its own, well
inside node_ttl + 10 s) and finishes it, re-running the items that were running on a
(lost to a node's death: retried by retry_lost, their steps replayed), and b's own run,
some of whose items were running on a (held there until it dies), does not fail either.
Every item's work is done by its row's one task."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from ..test_workflows import _marks, agent_toml
from .harness import TTL, Node, nodes
from .test_cluster_specs import log

ITEMS = 12
EACH = ('{ op = "square", x = "$item", sleep = 1.0, mark = "{$input.tag}-{$index}", '
        'dir = "$input.dir" }')
MAP = f"""
[workflows.sq]
timeout = 600
[[workflows.sq.steps]]
name = "list"
agent = "wf"
input = {{ op = "items", n = {ITEMS} }}
[[workflows.sq.steps]]
name = "sq"
agent = "wf"
map = "$steps.list.output.items"
concurrency = 4
input = {EACH}
[[workflows.sq.steps]]
name = "sum"
agent = "wf"
join = "sq"
input = {{ op = "sum", xs = "$steps.sq.output" }}
"""


def _view(n: Node, run_id: str) -> dict[str, Any]:
    return dict(n.call("runs.get", {"run_id": run_id, "limit": 1000}))


def _items(n: Node, run_id: str) -> dict[int, dict[str, Any]]:
    return {s["item"]: s for s in _view(n, run_id)["steps"]
            if s["step"] == "sq" and s["item"] is not None}


def _running_on(n: Node, run_id: str, node: str) -> list[str]:
    """The run's item tasks whose running attempt is `node`'s."""
    out = []
    for s in _items(n, run_id).values():
        if s["status"] != "running" or not s["task_id"]:
            continue
        task = n.call("tasks.get", {"task_id": s["task_id"]})
        if task["status"] == "running" and task["attempts"][-1].get("node") == node:
            out.append(s["task_id"])
    return out


def test_a_nodes_kill9_mid_map_fails_no_run_with_no_retries_written(
        tmp: Path, redis: RedisServer) -> None:
    fleet = {}
    for name in ("a", "b"):
        (tmp / name).mkdir()
        toml = agent_toml(tmp / name, replicas=2).replace("retries = 3\n", "")
        assert "retries" not in toml
        if name == "a":  # b's items a takes are held there until a dies
            script = tmp / name / "wfagent.py"
            held = script.read_text().replace('    if inp.get("sleep"):', (
                '    if inp.get("mark", "").startswith("b-"):\n'
                '        time.sleep(3600)\n'
                '    if inp.get("sleep"):'))
            assert held != script.read_text()
            script.write_text(held)
        fleet[name] = toml + MAP
    marks = tmp / "marks"
    marks.mkdir()
    with nodes(tmp, redis, fleet) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2
                   and a.call("stats.get")["cluster"]["state"] == "member"
                   and b.call("stats.get")["cluster"]["state"] == "member",
                   what="two nodes alive")
        runs = {n.name: n.call("workflows.run", {"name": "sq", "input": {
            "dir": str(marks), "tag": n.name}})["run_id"] for n in (a, b)}
        # mid-map: items done, and items of b's own run running on a (held there: one
        # that ended between this look and the kill would have no lost attempt)
        on_a = wait_until(lambda: (
            sum(s["status"] == "succeeded" for s in _items(b, runs["a"]).values()) >= 1
            and _running_on(b, runs["b"], "a")), timeout=60,
            what="an item of b's run running on a")
        a.kill9()
        gone = time.monotonic()
        taken = wait_until(lambda: f"run {runs['a']} taken over from a/" in log(b),
                           timeout=TTL + 10, what="b to take a's run over")
        assert taken and time.monotonic() - gone <= TTL + 10
        for name, run_id in runs.items():
            view = dict(wait_until(
                lambda r=run_id: (v := _view(b, r))["status"] != "running" and v,
                timeout=120, what=f"run {run_id} to end"))
            assert view["status"] == "succeeded", (name, view)
            assert view["output"] == sum(i * i for i in range(ITEMS))
        # b's own item that a was running: lost with a, run again on b, no retry spent
        for task_id in on_a:
            task = b.call("tasks.get", {"task_id": task_id})
            assert task["status"] == "succeeded"
            assert [(x["node"], x["outcome"], x.get("error")) for x in task["attempts"]] == [
                ("a", "lost", "node a lost"), ("b", "succeeded", None)], task
        # every item of both runs done once, by its row's task
        marked = _marks(marks)
        for name, run_id in runs.items():
            for i, s in _items(b, run_id).items():
                assert marked[f"{name}-{i}"] == {s["task_id"]}, (name, i, json.dumps(s))
        assert len(marked) == 2 * ITEMS
