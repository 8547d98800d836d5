"""Spawn trees, on each home (DESIGN 17, 18, 25): a task spawns children (`ctx.spawn`)
and waits for them (`ctx.wait`); a retried parent is answered its spawns by their keys
and spawns none twice, after its worker's death and after its home's crash; a fan-out
past `max_children` and a wait for a task that is not a child are refused with their
words. The agents: tests/orchestrator_agent.py as parent and leaves (each leaf counts its
run in a file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import jsonrpc

from ..test_spawn import counted, fleet
from .home import Home, wait_until

pytestmark = pytest.mark.timeout(120)


def agents(directory: Path) -> str:
    del directory
    return fleet("max_spawn_depth = 2") + fleet().split("[agents.leaf]")[0].replace(
        "[agents.orch]", "[agents.small]").replace(
        'spawns = ["leaf", "orch"]', 'spawns = ["leaf"]\nmax_children = 2')


def test_a_task_spawns_children_and_waits_for_their_outputs(home: Home, tmp_path: Path
                                                            ) -> None:
    count = tmp_path / "count"
    done = home.run("orch", {"children": 5, "count": str(count)})
    assert done["status"] == "succeeded", done
    assert done["output"] == [0, 2, 4, 6, 8]
    assert counted(count) == [0, 1, 2, 3, 4]
    assert home.run("orch", {"children": 3, "map": True, "count": str(count)},
                    at=1)["output"] == [0, 2, 4]  # ctx.map: spawn and wait


def test_a_retried_parent_spawns_no_child_twice(home: Home, tmp_path: Path) -> None:
    count = tmp_path / "count"
    done = home.run("orch", {"children": 8, "count": str(count), "stop_after": 3,
                             "marker": str(tmp_path / "marker")})
    assert done["status"] == "succeeded", done
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"]
    assert done["output"] == [i * 2 for i in range(8)]
    # eight children in all, each run once: the retry's first three by their keys
    assert counted(count) == list(range(8))


def test_a_parent_in_flight_at_a_crash_spawns_no_child_twice(home: Home, tmp_path: Path
                                                             ) -> None:
    count, marker = tmp_path / "count", tmp_path / "marker"
    task_id = home.submit("orch", {"children": 6, "count": str(count), "stop_after": 3,
                                   "how": "hang", "marker": str(marker)})
    wait_until("the parent past spawn 3", marker.exists)
    home.crash(task_id)
    done = home.wait(task_id)
    assert done["status"] == "succeeded", done
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"]
    assert done["output"] == [i * 2 for i in range(6)]
    # each child spawned once; one at work when its home crashed may have run again
    assert sorted(set(counted(count))) == list(range(6))


def test_a_fan_out_past_max_children_is_refused_with_its_words(home: Home, tmp_path: Path
                                                               ) -> None:
    done = home.run("small", {"children": 3, "count": str(tmp_path / "c"), "catch": True})
    assert done["output"] == {"refused": f"task/spawn: fan-out exceeded: task "
                              f"{done['task_id']} has spawned 2 children (max_children 2 "
                              "of agent small)", "code": jsonrpc.REFUSED}
    # the two spawned run on, as a refused parent's children do
    wait_until("the two children's runs", lambda: counted(tmp_path / "c") == [0, 1])


def test_a_wait_for_a_task_that_is_not_a_child_is_refused(home: Home, tmp_path: Path
                                                          ) -> None:
    other = home.submit("leaf", {"leaf": True, "n": 1, "count": str(tmp_path / "c")})
    done = home.run("orch", {"wait_for": other, "catch": True}, at=1)
    assert done["output"] == {"refused": f"task/wait: task {other} is not a child of task "
                              f"{done['task_id']}", "code": jsonrpc.INVALID_PARAMS}


def test_a_spawn_beyond_the_parents_reach_or_depth_is_refused_with_its_words(
        home: Home) -> None:
    done = home.run("orch", {"children": 1, "agent": "other", "count": "x", "catch": True})
    assert done["output"] == {"refused": "task/spawn: agent orch may not spawn tasks of "
                              "agent other (its spawns list: ['leaf', 'orch'])",
                              "code": jsonrpc.REFUSED}
    done = home.run("orch", {"children": 1, "agent": "ghost", "count": "x", "catch": True},
                    at=1)
    assert done["output"] == {"refused": "no such agent: ghost", "code": jsonrpc.NOT_FOUND}
    # depth: orch -> orch (1) -> orch (2) -> a third level is refused
    deepest = home.run("orch", {"recurse": 3})["output"]
    assert deepest["status"] == "failed", deepest
    assert deepest["error"] == (f"RequestError: task/spawn: spawn depth exceeded: a child "
                                f"of task {deepest['task_id']} would be at depth 3 "
                                "(max_spawn_depth 2 of agent orch)")
    assert home.run("orch", {"recurse": 2}, at=1)["output"] == 2
