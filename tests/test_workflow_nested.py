"""Nested workflows (issue 40): a workflow as a step, checked for cycles on load with an
exact message, its run journaled in its parent's rows before it is made so a parent
resumed after a SIGKILL waits for the same child run, never a second; a cancelled
parent's child run cancelled with it."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import msgspec
import pytest

from corral.supervisor.workflows import WorkflowSpec, compile_workflow

from .test_workflows import _marks, _problem, run, settled, whole, workflow_daemon

INNER = """
[workflows.inner]
[[workflows.inner.steps]]
name = "double"
agent = "wf"
[workflows.inner.steps.input]
op = "echo"
x = "$input.x"
mark = "double"
dir = "$input.dir"
sleep = "$input.sleep"
[[workflows.inner.steps]]
name = "sum"
agent = "wf"
[workflows.inner.steps.input]
op = "sum"
xs = ["$steps.double.output.x", "$steps.double.output.x"]
mark = "sum"
dir = "$input.dir"
"""

OUTER = """
[workflows.outer]
[[workflows.outer.steps]]
name = "first"
agent = "wf"
input = { op = "echo", x = "$input.x", mark = "first", dir = "$input.dir" }
[[workflows.outer.steps]]
name = "child"
workflow = "inner"
input = { x = "$steps.first.output.x", dir = "$input.dir", sleep = "$input.sleep" }
[[workflows.outer.steps]]
name = "last"
agent = "wf"
input = { op = "echo", total = "$steps.child.output", mark = "last", dir = "$input.dir" }
"""


@pytest.mark.parametrize(("workflows", "message"), [
    ("[workflows.a]\n[[workflows.a.steps]]\nname = \"s\"\nworkflow = \"b\"\n"
     "[workflows.b]\n[[workflows.b.steps]]\nname = \"t\"\nworkflow = \"a\"\n",
     "workflow a: a cycle of workflows: a -> b -> a\n"  # each said, the file refused
     "FILE: workflow b: a cycle of workflows: b -> a -> b"),
    ("[workflows.a]\n[[workflows.a.steps]]\nname = \"s\"\nworkflow = \"a\"\n",
     "workflow a: a cycle of workflows: a -> a"),
    ("[workflows.a]\n[[workflows.a.steps]]\nname = \"s\"\nworkflow = \"nope\"\n",
     "workflow a, step s: no such workflow: nope"),
    ("[workflows.a]\n[[workflows.a.steps]]\nname = \"s\"\nworkflow = \"a\"\nagent = \"wf\"\n",
     "workflow a, step s: a step runs an agent or a workflow, or waits for a signal (one "
     "of agent =, workflow = and signal =)"),
    ("[workflows.a]\n[[workflows.a.steps]]\nname = \"s\"\n",
     "workflow a, step s: a step runs an agent or a workflow, or waits for a signal (one "
     "of agent =, workflow = and signal =)"),
])
def test_a_nested_workflow_is_checked_on_load(tmp_path: Path, workflows: str,
                                              message: str) -> None:
    assert _problem(tmp_path, workflows) == f"FILE: {message}"


def test_a_cycle_three_deep_is_named_whole() -> None:
    specs = {n: msgspec.convert({"steps": [{"name": "s", "workflow": c}]}, WorkflowSpec)
             for n, c in (("a", "b"), ("b", "c"), ("c", "a"))}
    with pytest.raises(ValueError, match=r"^workflow b: a cycle of workflows: "
                                         r"b -> c -> a -> b$"):
        compile_workflow("b", specs["b"], None, specs)


def test_a_nested_workflow_runs_as_a_step_and_shows_its_run(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with workflow_daemon(tmp_path, INNER + OUTER, replicas=2) as d:
        view = run(d, "outer", {"x": 21, "dir": str(marks), "sleep": 0})
        assert view["output"]["total"] == 42
        assert view["agents"] == ["wf"]
        child = whole(view)["child"]
        assert (child["task_id"], child["status"], child["output"]) == (None, "succeeded", 42)
        assert [(g["step"], g["after"], g["runs"]) for g in view["graph"]] == [
            ("first", [], "agent wf"), ("child", ["first"], "workflow inner"),
            ("last", ["child"], "agent wf")]
        inner = d.json("run-status", child["run_id"])
        assert (inner["workflow"], inner["status"], inner["output"]) == ("inner",
                                                                         "succeeded", 42)
        tree = d.cli("run-status", view["run_id"]).stdout
        lines = [line.split()[:3] for line in tree.splitlines()]
        # the nested run's steps drawn under its step
        assert lines[1:6] == [["├─", "first", "succeeded"], ["├─", "child", "succeeded"],
                              ["│", "├─", "double"], ["│", "└─", "sum"],
                              ["└─", "last", "succeeded"]], tree
        assert f"run {child['run_id']}" in tree
        plan = d.cli("workflows", "plan", "outer").stdout
        assert "2. child: workflow inner (a run of it), after first" in plan, plan


def test_a_parent_resumed_after_a_sigkill_waits_for_the_same_child_run(
        tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with workflow_daemon(tmp_path, INNER + OUTER, replicas=2) as d:
        run_id = d.json("workflows", "run", "outer", "--input", json.dumps(
            {"x": 5, "dir": str(marks), "sleep": 1.5}))["run_id"]
        while True:  # killed while the child run's first step runs
            view = d.json("run-status", run_id, "--wait", "0.1")
            child = whole(view).get("child")
            if child is not None and child["run_id"] is not None:
                break
        d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        d.proc.wait()  # type: ignore[union-attr]
        d.start()
        view = settled(d, run_id)
        assert view["status"] == "succeeded", view
        assert view["output"]["total"] == 10
        assert whole(view)["child"]["run_id"] == child["run_id"]
        inner_runs = d.json("runs", "--workflow", "inner")["runs"]
        assert [x["run_id"] for x in inner_runs] == [child["run_id"]]
        marked = _marks(marks)
        assert {k: len(v) for k, v in marked.items()} == {
            "first": 1, "double": 1, "sum": 1, "last": 1}


def test_a_cancelled_parent_cancels_its_child_run(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with workflow_daemon(tmp_path, INNER + OUTER, replicas=2) as d:
        run_id = d.json("workflows", "run", "outer", "--input", json.dumps(
            {"x": 5, "dir": str(marks), "sleep": 30}))["run_id"]
        while True:
            view = d.json("run-status", run_id, "--wait", "0.1")
            child = whole(view).get("child")
            if child is not None and child["run_id"] is not None:
                break
        r = d.cli("run-cancel", run_id)
        assert r.stdout.strip() == f"{run_id}: cancelled", r.stderr
        inner = settled(d, child["run_id"])
        assert (inner["status"], inner["error"]) == ("cancelled", "cancelled")
        assert whole(inner)["double"]["status"] == "cancelled"
        view = d.json("run-status", run_id)
        assert (view["status"], whole(view)["child"]["status"]) == ("cancelled", "cancelled")
        tree = d.cli("run-status", run_id).stdout.splitlines()
        assert tree[-1] == "└─ last  pending", tree  # never started
        assert tree[3].split()[:4] == ["│", "├─", "double", "cancelled"], tree


NESTED_CHAIN = """
[workflows.leaf]
[[workflows.leaf.steps]]
name = "a"
agent = "wf"
input = { op = "echo", mark = "{$input.tag}-{$input.k}-a", dir = "$input.dir", sleep = 0.1 }
[[workflows.leaf.steps]]
name = "b"
agent = "wf"
[workflows.leaf.steps.input]
op = "echo"
k = "$input.k"
mark = "{$input.tag}-{$input.k}-b"
dir = "$input.dir"
sleep = 0.1

[workflows.tree]
[[workflows.tree.steps]]
name = "start"
agent = "wf"
input = { op = "echo", mark = "{$input.tag}-start", dir = "$input.dir", sleep = 0.1 }
[[workflows.tree.steps]]
name = "kids"
workflow = "leaf"
map = "$input.items"
concurrency = 2
input = { k = "$item", tag = "$input.tag", dir = "$input.dir", after = "$steps.start.output" }
[[workflows.tree.steps]]
name = "end"
agent = "wf"
join = "kids"
input = { op = "echo", ks = "$steps.kids.output", mark = "{$input.tag}-end", dir = "$input.dir" }
"""


def test_random_sigkills_make_no_nested_run_twice(tmp_path: Path) -> None:
    """Runs that map over a nested workflow, the daemon SIGKILLed at random moments: every
    run succeeds, each item has one nested run, and each step of each one task."""
    import random
    import time

    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    marks = tmp_path / "marks"
    marks.mkdir()
    runs_n, kills, items = 4, 6, [0, 1, 2, 3]
    with workflow_daemon(tmp_path, textwrap.dedent(NESTED_CHAIN), replicas=3, retries=500) as d:
        run_ids = [d.json("workflows", "run", "tree", "--input", json.dumps(
            {"dir": str(marks), "tag": f"r{i}", "items": items}))["run_id"]
            for i in range(runs_n)]
        for _ in range(kills):
            time.sleep(rng.uniform(0.05, 0.5))
            d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            d.proc.wait()  # type: ignore[union-attr]
            d.start()
        views = [settled(d, r) for r in run_ids]
        assert [v["status"] for v in views] == ["succeeded"] * runs_n, (seed, [
            (v["run_id"], v["status"], v["error"]) for v in views])
        children = {s["run_id"] for v in views for s in v["steps"] if s["step"] == "kids"
                    and s["item"] is not None}
        assert len(children) == runs_n * len(items)
        leaf_runs = d.json("runs", "--workflow", "leaf", "--limit", "1000")["runs"]
        assert sorted(r["run_id"] for r in leaf_runs) == sorted(children), seed
        assert {r["status"] for r in leaf_runs} == {"succeeded"}
        marked = _marks(marks)
        assert len(marked) == runs_n * (2 + 2 * len(items))
        assert {k: len(v) for k, v in marked.items() if len(v) != 1} == {}, seed
        for i, v in enumerate(views):
            assert v["output"]["ks"] == [{"op": "echo", "k": k, "mark": f"r{i}-{k}-b",
                                          "dir": str(marks), "sleep": 0.1} for k in items]
