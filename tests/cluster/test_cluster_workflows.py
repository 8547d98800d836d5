"""Workflow runs on a cluster node (issue 40, decisions 269 and 307): a run is its node's;
a node SIGKILLed mid-run (with its workers) resumes the run when it restarts, each step
one task, while the other node keeps serving its own run."""

from __future__ import annotations

import json
from pathlib import Path

from ..redis_harness import RedisServer
from ..test_workflows import SLOW, _marks, agent_toml
from .harness import nodes


def _ended(n: object, run_id: str) -> dict[str, object]:
    while True:  # each call held by the daemon until the run ends or 20 s pass
        view: dict[str, object] = n.call("runs.get", {  # type: ignore[attr-defined]
            "run_id": run_id, "wait": 20})
        if view["status"] != "running":
            return view


def test_a_killed_node_resumes_its_run_at_restart_with_one_task_a_step(
        tmp: Path, redis: RedisServer) -> None:
    fleet = {}
    for name in ("a", "b"):
        (tmp / name).mkdir()
        fleet[name] = agent_toml(tmp / name, replicas=2) + SLOW
    with nodes(tmp, redis, fleet) as ns:
        a, b = ns["a"], ns["b"]
        marks = {name: tmp / f"marks-{name}" for name in ns}
        for m in marks.values():
            m.mkdir()
        runs = {name: n.call("workflows.run", {"name": "slow", "input": {
            "dir": str(marks[name])}})["run_id"] for name, n in ns.items()}
        while True:  # a is killed while its map is under way
            view = a.call("runs.get", {"run_id": runs["a"], "wait": 0.1})
            if sum(1 for s in view["steps"] if s["step"] == "each" and s["item"] is not None
                   and s["status"] == "succeeded") >= 2:
                break
        a.kill9()
        # b's run is b's: it ends, whatever became of a
        assert _ended(b, runs["b"])["status"] == "succeeded"
        a.start()
        view = _ended(a, runs["a"])
        assert view["status"] == "succeeded", view
        assert view["output"] == sum(i * i for i in range(6))
        for name, n in ns.items():
            rows = {(s["step"], s["item"]): s["task_id"]
                    for s in n.call("runs.get", {"run_id": runs[name]})["steps"]}
            marked = _marks(marks[name])
            assert set(marked) == {"first", "last", *(f"each{i}" for i in range(6))}
            for key, task_ids in marked.items():
                step, item = (("each", int(key[4:])) if key.startswith("each")
                              else (key, None))
                assert task_ids == {rows[(step, item)]}, (name, key)
        # neither node lists the other's run
        assert [r["run_id"] for r in a.call("runs.list", {})["runs"]] == [runs["a"]]
        assert [r["run_id"] for r in b.call("runs.list", {})["runs"]] == [runs["b"]]
        assert json.dumps(view).count(runs["b"]) == 0
