"""Crash-safe by default (issue 73, DESIGN 26): a task lost to infrastructure — its worker
killed by a signal it did not raise, hung and killed, the daemon restarted under it — runs
again with no `retries` written (`retry_lost`, 2 unless said), and its steps replay; a
handler's own failure, a worker's own exit and a cap kill keep their outcome; an agent or
a task may ask for at most once (`retry_lost = 0`), and its lost task says so."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest

from corral.supervisor import Limits, State, Supervisor
from corral.supervisor.configload import parse_agents
from corral.supervisor.lifecycle import Cause
from corral.supervisor.losses import Loss, of_exit, of_take_down
from corral.supervisor.tasks import Task, TaskStatus
from corral.taskoptions import RetryOptions, TaskOptions

from .conftest import ROOT, agent
from .daemon_harness import PY, Daemon, counting_fleet, in_process
from .test_daemon_cli import wait_until
from .test_retry import attempt_ended
from .test_spawn import counted
from .test_spawn import fleet as spawn_fleet
from .test_teams import _marks as team_marks
from .test_teams import _steps as team_steps
from .test_teams import agents_toml as team_agents

# attempt 1 runs until it is stopped (the test kills its worker); attempt 2 answers
HELD = {"do": "until", "attempt": 2, "how": "sleep"}
KILLED = "worker exited: killed by SIGKILL"
ONCE = "not run again: at most once, retry_lost = 0"


def mb(name: str, **kw: Any) -> Any:
    return agent(name, "misbehave.py", **kw)


async def kill_running(sup: Supervisor, name: str, task: Task, sig: int) -> int:
    """Once the task's latest attempt runs on the agent's replica, `sig` to its worker;
    the worker's pid."""
    r = await sup.wait_state(name, State.BUSY)
    pid = r.pid
    assert pid is not None and task.attempts and task.attempts[-1].pid == pid
    os.kill(pid, sig)
    return pid


async def test_a_killed_workers_task_runs_again_with_no_retries_written(
        sup: Supervisor) -> None:
    sup.add(mb("w"))  # no retries, no retry_on: the defaults
    await sup.wait_state("w", State.READY)
    task = sup.tasks.submit("w", HELD)
    first = await kill_running(sup, "w", task, signal.SIGKILL)
    await asyncio.wait_for(task.done, 30)
    assert (task.status, task.output, task.error) == ("succeeded", {"attempt": 2}, None)
    assert [(a.outcome, a.error) for a in task.attempts] == [
        ("lost", KILLED), ("succeeded", None)]
    assert task.attempts[0].pid == first != task.attempts[1].pid  # on the restarted worker
    assert task.retries_left == 0  # none spent: there were none
    assert sup.tasks.stats()["agents"]["w"]["retried"] == 1


async def test_a_lost_tasks_retry_replays_its_tool_calls_with_no_retries_written(
        tmp_path: Path) -> None:
    """Its steps are journaled for the retry retry_lost may give it: the MCP server sees
    each call once."""
    toml = counting_fleet(tmp_path, "durable", "durable_agent.py", "").replace(
        "retries = 1\n", "")
    assert "retries" not in toml
    async with in_process(tmp_path, toml) as d:
        res = await d.sup.tasks.run("durable", {
            "calls": 6, "stop_after": 3, "how": "die", "marker": str(tmp_path / "marker")},
            TaskOptions(timeout=60))
        assert res.status == "succeeded", res
        assert res.output["results"] == [f"bumped {i}" for i in range(1, 7)]
        assert (tmp_path / "server-count").read_text().split() == [
            str(i) for i in range(1, 7)]
        first, second = res.attempts
        assert (first.outcome, first.error) == ("lost", KILLED)
        assert (second.outcome, second.replayed) == ("succeeded", 3)


async def test_a_handler_that_raises_fails_once(sup: Supervisor) -> None:
    sup.add(mb("w"))
    await sup.wait_state("w", State.READY)
    task = sup.tasks.submit("w", {"do": "fail"})
    await asyncio.wait_for(task.done, 30)
    assert task.status == TaskStatus.FAILED
    assert task.error is not None and task.error.message == "failed on request"
    assert [(a.outcome, a.error) for a in task.attempts] == [("failed", "failed on request")]
    assert sup.tasks.stats()["agents"]["w"]["retried"] == 0


async def test_a_worker_that_exits_of_its_own_accord_loses_its_task_once(
        sup: Supervisor) -> None:
    """An exit status is the worker's own doing (a bug): not retried by default."""
    sup.add(mb("w"))
    await sup.wait_state("w", State.READY)
    task = sup.tasks.submit("w", {"do": "crash"})
    await asyncio.wait_for(task.done, 30)
    why = "worker exited: exited with status 3: crashing on request"
    assert task.status == TaskStatus.LOST
    assert task.error is not None and task.error.message == why
    assert [(a.outcome, a.error) for a in task.attempts] == [("lost", why)]


async def test_a_hung_worker_is_killed_and_its_task_runs_again(sup: Supervisor) -> None:
    sup.add(mb("w"))
    await sup.wait_state("w", State.READY)
    task = sup.tasks.submit("w", HELD)
    await kill_running(sup, "w", task, signal.SIGSTOP)  # silent: hung past 2 s
    await asyncio.wait_for(task.done, 30)
    assert (task.status, task.output) == ("succeeded", {"attempt": 2})
    assert [(a.outcome, a.error) for a in task.attempts] == [
        ("lost", "worker exited: hung: no heartbeat for 2 s"), ("succeeded", None)]


async def test_a_memory_cap_kill_ends_lost_naming_the_cap(sup: Supervisor) -> None:
    sup.add(mb("hog", limits=Limits(memory_mb=200)))
    await sup.wait_state("hog", State.READY)
    task = sup.tasks.submit("hog", {"do": "leak"})
    await asyncio.wait_for(task.done, 30)
    why = "worker exited: memory limit (RLIMIT_AS 200 MiB)"
    assert task.status == TaskStatus.LOST
    assert task.error is not None and task.error.message == why
    assert [(a.outcome, a.error) for a in task.attempts] == [("lost", why)]  # not again


async def test_at_most_once_a_lost_task_is_never_retried_and_says_so(
        sup: Supervisor) -> None:
    # the agent's: even with retries for lost attempts
    sup.add(mb("once", retry_lost=0, retries=3))
    # or the task's own, of an agent that would retry it
    sup.add(mb("w"))
    await sup.wait_state("once", State.READY)
    await sup.wait_state("w", State.READY)
    tasks = [(sup.tasks.submit("once", HELD), "once"),
             (sup.tasks.submit("w", HELD, TaskOptions(retry=RetryOptions(retry_lost=0))),
              "w")]
    for task, name in tasks:
        await kill_running(sup, name, task, signal.SIGKILL)
        await asyncio.wait_for(task.done, 30)
        assert task.status == TaskStatus.LOST
        assert task.error is not None and task.error.message == f"{KILLED} ({ONCE})"
        assert [(a.outcome, a.error) for a in task.attempts] == [("lost", KILLED)]
    assert tasks[0][0].retries_left == 3


async def test_retry_lost_is_a_bound_then_retries_and_retry_on_apply(
        sup: Supervisor) -> None:
    sup.add(mb("w", retry_lost=1))
    await sup.wait_state("w", State.READY)
    task = sup.tasks.submit("w", {"do": "sleep", "seconds": 60})
    await kill_running(sup, "w", task, signal.SIGKILL)
    await attempt_ended(sup, task, 1)
    await kill_running(sup, "w", task, signal.SIGKILL)  # its retry, killed too
    await asyncio.wait_for(task.done, 30)
    assert task.status == TaskStatus.LOST
    assert task.error is not None and task.error.message == KILLED  # no note: it was retried
    assert [(a.outcome, a.error) for a in task.attempts] == [("lost", KILLED)] * 2
    # past it, an agent's retries for lost attempts run it again (one spent)
    sup.add(mb("more", retry_lost=1, retries=1))
    await sup.wait_state("more", State.READY)
    task = sup.tasks.submit("more", {"do": "until", "attempt": 3, "how": "sleep"})
    for n in (1, 2):
        await kill_running(sup, "more", task, signal.SIGKILL)
        await attempt_ended(sup, task, n)
    await asyncio.wait_for(task.done, 30)
    assert (task.status, task.output, task.retries_left) == ("succeeded", {"attempt": 3}, 0)


def test_what_kind_of_loss_a_workers_end_was() -> None:
    assert [of_exit(-s, False) for s in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT,
                                         signal.SIGHUP)] == [Loss.INFRA] * 4
    # a signal of its own fault, an exit status: its own doing
    assert [of_exit(-s, False) for s in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS,
                                         signal.SIGFPE)] == [Loss.CRASH] * 4
    assert (of_exit(3, False), of_exit(0, False)) == (Loss.CRASH, Loss.CRASH)
    assert (of_exit(-signal.SIGKILL, True), of_exit(1, True)) == (Loss.CAP, Loss.CAP)
    assert [of_take_down(c) for c in (Cause.HANG, Cause.UNREAD, Cause.UNHEALTHY,
                                      Cause.ERROR)] == [Loss.INFRA] * 4
    assert (of_take_down(Cause.CAP), of_take_down(Cause.STOP)) == (Loss.CAP, Loss.STOPPED)


def test_retry_lost_is_two_unless_said_and_never_negative() -> None:
    spec = parse_agents({"agents": {"a": {"command": "x"}}}, "f.toml")["a"]
    assert (spec.retry_lost, spec.retries, spec.retry_on) == (2, 0, ("lost",))
    assert parse_agents({"agents": {"a": {"command": "x", "retry_lost": 0}}},
                        "f.toml")["a"].retry_lost == 0
    from corral.supervisor.config import ConfigError
    with pytest.raises(ConfigError) as err:
        parse_agents({"agents": {"a": {"command": "x", "retry_lost": -1}}}, "f.toml")
    assert str(err.value) == "f.toml: agents.a.retry_lost: Expected `int` >= 0"


# -- a workflow with no retries survives its daemon's SIGKILL mid-map ----------------------
# attempt 1 of an item from `hold_from` on holds (writes a file naming its task, then
# waits forever): the daemon is killed while they hold; a later attempt answers at once
AGENT = '''
import time, uuid
from pathlib import Path
from corral.worker import run

def handle(inp, ctx):
    if inp.get("op") == "items":
        return {"items": list(range(inp["n"]))}
    if inp.get("op") == "sum":
        return sum(inp["xs"])
    x = inp["x"]
    if x >= inp["hold_from"] and ctx.attempt == 1:
        (Path(inp["dir"]) / f"held{x}.{ctx.task_id}").write_text("")
        while True:
            time.sleep(1)
    (Path(inp["dir"]) / f"done{x}.{ctx.task_id}.{uuid.uuid4().hex}").write_text("")
    return x * x

run(handle)
'''

MAP = """
[workflows.sq]
[[workflows.sq.steps]]
name = "list"
agent = "wf"
input = { op = "items", n = 4 }
[[workflows.sq.steps]]
name = "sq"
agent = "wf"
map = "$steps.list.output.items"
concurrency = 4
input = { x = "$item", hold_from = 2, dir = "$input.dir" }
[[workflows.sq.steps]]
name = "sum"
agent = "wf"
join = "sq"
input = { op = "sum", xs = "$steps.sq.output" }
"""


def test_a_workflow_with_no_retries_survives_a_daemon_sigkill_mid_map(
        tmp_path: Path) -> None:
    script = tmp_path / "wfagent.py"
    script.write_text(AGENT)
    # no retries, no retry_lost: the defaults
    d = Daemon(tmp_path, textwrap.dedent(f"""
        [agents.wf]
        command = ["{PY}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        replicas = 4
        backoff_initial = 0.05
        stop_timeout = 10.0
    """) + MAP)
    marks = tmp_path / "marks"
    marks.mkdir()
    try:
        d.start()
        run_id = d.json("workflows", "run", "sq", "--input",
                        json.dumps({"dir": str(marks)}))["run_id"]
        # items 0 and 1 done, 2 and 3 held on their workers: the kill falls mid-map
        while True:
            view = d.ask("runs.get", {"run_id": run_id, "wait": 0.1})
            items = {s["item"]: s for s in view["steps"]
                     if s["step"] == "sq" and s["item"] is not None}
            held = {f.name.split(".")[0] for f in marks.iterdir()}
            if ({i for i, s in items.items() if s["status"] == "succeeded"} == {0, 1}
                    and {"held2", "held3"} <= held):
                break
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.start()  # the same state directory
        view = d.json("run-status", run_id, "--wait", "60")
        assert view["status"] == "succeeded", view
        assert view["output"] == sum(i * i for i in range(4))
        rows = {(s["step"], s["item"]): s for s in view["steps"]}
        for i in (2, 3):  # the items lost to the restart ran again, in their one task
            task = d.json("task", rows[("sq", i)]["task_id"])
            assert [(a["outcome"], a["error"]) for a in task["attempts"]] == [
                ("lost", "daemon restarted"), ("succeeded", None)], task
        for i in (0, 1):  # what was done is not done again
            task = d.json("task", rows[("sq", i)]["task_id"])
            assert [a["outcome"] for a in task["attempts"]] == ["succeeded"]
        done: dict[str, set[str]] = {}
        for f in marks.iterdir():
            if f.name.startswith("done"):
                done.setdefault(f.name.split(".")[0], set()).add(f.name.split(".")[1])
        assert done == {f"done{i}": {rows[("sq", i)]["task_id"]} for i in range(4)}
        assert sum(1 for f in marks.iterdir() if f.name.startswith("done")) == 4
        assert d.stop() == 0
    finally:
        d.close()


# -- a spawn tree with no retries survives its daemon's SIGKILL ------------------------------
def test_a_spawn_tree_with_no_retries_survives_a_daemon_sigkill(tmp_path: Path) -> None:
    """The orchestrator, its daemon killed after 4 of its 10 children answered, runs again
    (lost to the restart: retry_lost), its 4 spawns answered from its step journal with
    the same children, and each child runs once."""
    toml = spawn_fleet().replace("retries = 1\n", "")
    assert "retries" not in toml
    d = Daemon(tmp_path, toml)
    marker, count = tmp_path / "marker", tmp_path / "count"
    try:
        d.start()
        task = {"children": 10, "stop_after": 4, "how": "hang", "marker": str(marker),
                "count": str(count)}
        r = d.cli("run", "orch", "--detach", "--input", json.dumps(task))
        assert r.returncode == 0, r.stderr
        task_id = r.stdout.strip()
        # the kill after the daemon kept the 4 children's answers (a child's count is
        # written before its answer: one killed between the two would count twice)
        wait_until(lambda: marker.exists() and len(d.json(
            "tasks", "--agent", "leaf", "--status", "succeeded")["tasks"]) == 4,
            timeout=30, what="4 children answered and kept")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d.start()
        info = d.json("task", task_id, "--wait")
        assert info["status"] == "succeeded", info
        assert info["output"] == [i * 2 for i in range(10)]
        assert counted(count) == list(range(10))
        assert [(a["outcome"], a["error"]) for a in info["attempts"]] == [
            ("lost", "daemon restarted"), ("succeeded", None)]
        assert info["attempts"][1]["replayed"] == 4
        assert d.stop() == 0
    finally:
        d.close()


# -- a team call with no retries survives its daemon's SIGKILL --------------------------------
def running_in_journal(d: Daemon, task_id: str) -> bool:
    """Whether the daemon's state database holds the task as running (read only)."""
    db = sqlite3.connect(f"file:{d.state / 'corral.db'}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
    finally:
        db.close()
    return row is not None and row[0] == "running"


def test_a_team_call_with_no_retries_survives_a_daemon_sigkill(tmp_path: Path) -> None:
    """A broadcast whose member b is at work when the daemon is killed: b's task, lost to
    the restart, runs again (retry_lost) and the call succeeds; a, done, is not run
    again."""
    marks = tmp_path / "marks"
    marks.mkdir()
    toml = team_agents(tmp_path, "a b", retries=0).replace("retries = 0\n", "")
    assert "retries" not in toml
    d = Daemon(tmp_path, toml + '[teams.all]\nmode = "broadcast"\nmembers = ["a", "b"]\n')
    try:
        d.start()
        # b held at work until the daemon is back (a sleep of 3 s could end before the kill
        # on a loaded host, and b's task then had no attempt to lose)
        gate = tmp_path / "go"
        inp = {"mark": str(marks), "hold_for": {"b": str(gate)}}
        r = d.cli("submit", "all", "--input", json.dumps(inp), "--json")
        call_id = json.loads(r.stdout)["task_id"]
        wait_until(lambda: team_steps(d, call_id).get("member:a", {}).get("status")
                   == "succeeded", timeout=30, what="member a done")
        b_id = team_steps(d, call_id)["member:b"]["task_id"]
        # the kill while b's attempt is at work and its start is in the journal (on a busy
        # host b may still wait for its replica when a is done: then there is no attempt
        # to lose, and the journal's write of its start trails its dispatch)
        wait_until(lambda: running_in_journal(d, b_id), timeout=30,
                   what="member b's attempt journaled as running")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.start()
        gate.touch()
        info = d.json("task", call_id, "--wait")
        assert (info["agent"], info["status"]) == ("all", "succeeded"), info
        steps = team_steps(d, call_id)
        member_b = d.json("task", steps["member:b"]["task_id"])
        assert [(a["outcome"], a["error"]) for a in member_b["attempts"]] == [
            ("lost", "daemon restarted"), ("succeeded", None)]
        marked = team_marks(marks)
        assert marked == {"a": [steps["member:a"]["task_id"]],
                          "b": [steps["member:b"]["task_id"]]}
        assert d.stop() == 0
    finally:
        d.close()
