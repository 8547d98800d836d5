"""Workflow runs on a cluster (issue 56 item 1, decision 610): a run is kept in Redis and
its steps are cluster tasks, so the node driving it is not the one it lives on. Three
nodes; the one driving a run of 20 steps with a 50-item map is kill -9'd mid-map and
never restarted, or frozen (SIGSTOP) past its TTL and thawed: another node takes the run
within the TTL and a beat and finishes it, every step's work done by one task, its
row's (each mark a file named for the step and the task: a task the cluster retried may
leave one more, never under another id); the frozen node's late writes are refused.
`run-status` and `corral runs` show the run from every node."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from ..test_workflows import _marks, agent_toml
from .harness import BEAT, TTL, Node, nodes
from .test_cluster_specs import log

ITEMS = 50
NAMES = [f"s{i:02d}" for i in range(1, 21)]  # s10 is the map, s11 its join


def _step(name: str, i: int) -> str:
    head = f'[[workflows.long.steps]]\nname = "{name}"\nagent = "wf"\n'
    mark = f'mark = "{name}", dir = "$input.dir"'
    if name == "s01":
        return head + f"input = {{ op = \"items\", n = {ITEMS}, {mark} }}\n"
    if name == "s10":
        return head + ('map = "$steps.s01.output.items"\nconcurrency = 4\n'
                       'input = { op = "square", x = "$item", mark = "s10-{$index}", '
                       'dir = "$input.dir", sleep = 0.3, after = "$steps.s09.output.mark" }\n')
    if name == "s11":
        return head + f'join = "s10"\ninput = {{ op = "sum", xs = "$steps.s10.output", {mark} }}\n'
    prev = NAMES[i - 1]
    # (what each step is sent of the one before: its mark, or the whole of a non-pass's)
    prev = {"s02": "s01.output.items", "s12": "s11.output"}.get(name, f"{prev}.output.mark")
    extra = ', total = "$steps.s11.output"' if name == "s20" else ""
    return head + (f'input = {{ op = "pass", after = "$steps.{prev}", {mark}'
                   f'{extra} }}\n')


LONG = "[workflows.long]\ntimeout = 600\n" + "".join(_step(n, i) for i, n in enumerate(NAMES))


def _view(n: Node, run_id: str) -> dict[str, Any]:
    return dict(n.call("runs.get", {"run_id": run_id, "limit": 1000}))


def _items_done(n: Node, run_id: str) -> int:
    return sum(1 for s in _view(n, run_id)["steps"]
               if s["step"] == "s10" and s["item"] is not None and s["status"] == "succeeded")


def _ended(ns: list[Node], run_id: str) -> dict[str, Any]:
    """The run once it ended, as the first of `ns` sees it (each read from Redis)."""
    return dict(wait_until(lambda: (v := _view(ns[0], run_id))["status"] != "running" and v,
                           timeout=120, what=f"run {run_id} to end"))


def _logged(n: Node, said: str) -> float:
    """The time of the first line of `n`'s log that says `said` (its stamp, UTC)."""
    line = next(line for line in log(n).splitlines() if said in line)
    return datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()


def _check_marks(n: Node, run_id: str, marks: Path) -> None:
    """Every step's work done (a mark) by one task, its row's; no more marks than the
    attempts the cluster gave that task."""
    rows = {(s["step"], s["item"]): s["task_id"] for s in _view(n, run_id)["steps"]}
    marked = _marks(marks)
    assert set(marked) == {*(nm for nm in NAMES if nm != "s10"),
                           *(f"s10-{i}" for i in range(ITEMS))}
    for key, task_ids in marked.items():
        step, item = (("s10", int(key[4:])) if key.startswith("s10-") else (key, None))
        assert task_ids == {rows[(step, item)]}, (key, task_ids)
        (task_id,) = task_ids
        effects = sum(1 for f in marks.iterdir() if f.name.startswith(f"{key}.{task_id}."))
        attempts = len(n.call("tasks.get", {"task_id": task_id})["attempts"])
        assert 1 <= effects <= attempts, (key, effects, attempts)


def _started(tmp: Path, redis: RedisServer) -> Any:
    fleet = {}
    for name in ("a", "b", "c"):
        (tmp / name).mkdir()
        fleet[name] = agent_toml(tmp / name, replicas=2) + LONG
    return nodes(tmp, redis, fleet)


@pytest.mark.parametrize("fault", ["kill9", "sigstop"])
def test_a_run_whose_node_dies_mid_map_finishes_on_another(
        tmp: Path, redis: RedisServer, fault: str) -> None:
    with _started(tmp, redis) as ns:
        a, b, c = ns["a"], ns["b"], ns["c"]
        # a node is READY before it has joined: a run started on a node not yet a member
        # is leased to no incarnation, and the next node to look takes it over at once
        # ("taken over from no node", seen beside busy loops), so a never drives it
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 3
                   and a.call("stats.get")["cluster"]["state"] == "member",
                   what="three nodes alive")
        marks = tmp / "marks"
        marks.mkdir()
        run_id = a.call("workflows.run", {"name": "long", "input": {
            "dir": str(marks)}})["run_id"]
        wait_until(lambda: _items_done(a, run_id) >= 10, timeout=60, what="10 items done")
        assert _view(b, run_id)["status"] == "running"  # read from Redis on b
        pid = a.proc.pid  # type: ignore[union-attr]
        # a/1, or a later incarnation where a loaded host kept a off a core past its TTL
        # (it fenced itself, its run taken over then, and joined again: decision 858)
        dead = "a/"
        if fault == "kill9":
            a.kill9()
        else:
            os.kill(pid, signal.SIGSTOP)
        gone = time.time()
        try:
            taker = wait_until(lambda: next((n for n in (b, c)
                                             if f"taken over from {dead}" in log(n)), None),
                               timeout=30, what="a live node to take the run")
        except AssertionError as exc:
            said = [line for n in (a, b, c) for line in log(n).splitlines()
                    if "fenced" in line or "taken over" in line or "joined" in line]
            raise AssertionError(f"{exc} from {dead}; the nodes said: {said}") from None
        # when the taker took it, by its own log's clock: the test's looks at the logs,
        # a loaded host's turn away from this process, are no part of the takeover
        took = _logged(taker, f"taken over from {dead}") - gone
        # within the TTL, a beat (the nodes' own config), and what a beat of the test's
        # CPU-shared host may add
        assert took <= TTL + BEAT + 2.0, took
        if fault == "sigstop":
            os.kill(pid, signal.SIGCONT)  # a thaws, driving its run as if nothing happened
            try:
                wait_until(lambda: f"no longer this node's (its lease as {dead}" in log(a),
                           timeout=60, what="a's late write refused")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; a's log ends: {log(a)[-3000:]}") from None
            assert a.call("stats.get")["cluster"]["calls"]["late_writes_refused"] >= 1
        view = _ended([b, c], run_id)
        assert view["status"] == "succeeded", view
        assert view["output"]["total"] == sum(i * i for i in range(ITEMS))
        assert taker.call("stats.get")["cluster"]["calls"]["taken"] == 1
        _check_marks(taker, run_id, marks)
        other = c if taker is b else b
        assert _view(other, run_id)["status"] == "succeeded"  # from any node
        assert [r["run_id"] for r in other.call("runs.list", {})["runs"]] == [run_id]
        if fault == "sigstop":
            # the thawed node's copy is not the run: the run is what its taker finished
            assert _view(a, run_id)["status"] == "succeeded"
