"""A durable call's new step row written by its task's submit script (cluster/rides.py,
decision 752), against a real redis-server: the row, the call's held ended rows and the
task in one script; a call whose lease another node took writes none of them and makes
no task (both the plain submit and the submit-and-claim), nor that of a call that
ended meanwhile (a run cancelled while its submit was on its way), its holder told CONFLICT and
its later writes refused without asking Redis; a call not held is refused before Redis
is asked; the row in the node's journal (the engine told) only once Redis has it; a
step's work refused so (StepSubmit.carry) fails with CONFLICT, the call lost here; and
on daemons, a driver frozen past its lease and thawed makes no task for its next step
(which of its refusals comes first, its own lease's or the script's, is the host's
timing: the script's is the component tests' above)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from corral import methods as m
from corral.cluster.calltasks import ClusterStepTasks
from corral.cluster.rides import (
    REFUSED,
    SUBMIT_CLAIM_RIDING,
    SUBMIT_RIDING,
    LostLease,
    Ride,
)
from corral.cluster.trust import TENANT
from corral.jsonrpc import CONFLICT, RpcError
from corral.supervisor.durable import StepRow
from corral.supervisor.durable.engine import StepEngine
from corral.supervisor.durable.tasks import AgentTask
from corral.taskoptions import NO_OPTIONS

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import TTL, nodes, sleeper
from .test_cluster_calls import CALL_ID, K, Node, killed, record, row
from .test_cluster_held_rows import _status, pair  # noqa: F401  (the fixture)
from .test_cluster_specs import log

TASK = "0190a5c0-0000-7000-8000-0000000000aa"


def _running(step: str) -> StepRow:
    return StepRow(step, -1, "running", TASK, 1.0)


def _submit(n: Node, ride: Ride, claim: bool, task: str = TASK
            ) -> tuple[Any, list[str], list[Any]]:
    """The riding submit (or submit-and-claim) of `task`, an agent `w` of the default
    tenant, as ClusterTasks and SubmitClaims lay out their keys and arguments."""
    keys = [K.task(task), K.stream("default", "w", 0), K.priorities("default", "w"),
            K.agents, K.live]
    args: list[Any] = [task, "w", b"{}", 0, "", "", "1.0", "a", 0, "0", ""]
    last = ["", b"", "", "default", n.calls.trust.sign(TENANT, task, "w", "default")]
    if not claim:
        return (n.calls.redis.register_script(SUBMIT_RIDING), [*keys, *ride.keys],
                [*args, *ride.args(), *last])
    claim_args = [n.membership.consumer, "a", "1.0", b"{}", 0, "0", K.prefix]
    return (n.calls.redis.register_script(SUBMIT_CLAIM_RIDING), [*keys, K.fence, *ride.keys],
            [*args, *claim_args, *ride.args(), *last])


async def test_a_new_row_and_the_held_rows_ride_with_the_tasks_submit(
        pair: tuple[Node, Node]) -> None:  # noqa: F811
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("first", -1, "out")])  # held
    noted: list[str] = []
    ride = a.calls.ride(CALL_ID, _running("second"), lambda: noted.append("noted"))
    assert a.calls.held == {}  # (taken by the ride)
    assert await _status(b, "first", -1) is None
    [got] = await a.calls.scripts.acknowledged([_submit(a, ride, claim=False)])
    assert got == 1
    assert await a.calls.redis.hget(K.task(TASK), "status") == b"queued"
    fetched = await b.calls.fetch(CALL_ID)
    assert fetched is not None
    assert fetched.rows == {("first", -1): row("first", -1, "out"),
                            ("second", -1): _running("second")}
    assert (noted, a.local.load(CALL_ID).rows.get(("second", -1))) == ([], None)
    await ride.kept()
    assert noted == ["noted"]
    assert a.local.load(CALL_ID).rows[("second", -1)] == _running("second")


@pytest.mark.parametrize("claim", [False, True], ids=["submit", "submit_claim"])
async def test_a_ride_of_a_call_taken_over_writes_nothing_and_makes_no_task(
        pair: tuple[Node, Node], claim: bool) -> None:  # noqa: F811
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("first", -1, "a's")])  # held
    ride = a.calls.ride(CALL_ID, _running("second"), lambda: None)
    await killed(a)
    assert [t.record.call_id for t in await b.calls.orphans()] == [CALL_ID]
    [got] = await a.calls.scripts.acknowledged([_submit(a, ride, claim)])
    assert got == ([REFUSED] if claim else REFUSED)
    assert await a.calls.redis.exists(K.task(TASK)) == 0
    assert await a.calls.redis.xlen(K.stream("default", "w", 0)) == 0
    assert await _status(b, "first", -1) is None
    assert await _status(b, "second", -1) is None
    refused = a.calls.lost_lease(CALL_ID)
    assert (refused.code, refused.message) == (CONFLICT, (
        f"call {CALL_ID} not kept: it is no longer this node's (its lease as a/1, fence "
        "1): another node took it over"))
    assert a.calls.fenced == 1
    with pytest.raises(RpcError) as late:  # refused without asking Redis
        a.calls.ride(CALL_ID, _running("third"), lambda: None)
    assert late.value.message == refused.message


async def test_a_call_not_held_here_is_refused_a_ride(pair: tuple[Node, Node]) -> None:  # noqa: F811
    a, _b = pair
    with pytest.raises(RpcError) as refused:
        a.calls.ride(CALL_ID, _running("first"), lambda: None)
    assert (refused.value.code, refused.value.message) == (
        CONFLICT, f"call {CALL_ID} not kept: another node holds it")


def _task_status(n: Any, task_id: str) -> str | None:
    """The task's status; None while the step's row names it and its submit is on its
    way (the row is the run's as the submit is sent)."""
    got = n.call("tasks.list", {"agent": "sleepy"})["tasks"]
    return next((t["status"] for t in got if t["task_id"] == task_id), None)


TWO = """
[workflows.two]
[[workflows.two.steps]]
name = "s1"
agent = "sleepy"
input = { do = "sleep", seconds = 4 }
[[workflows.two.steps]]
name = "s2"
agent = "sleepy"
input = { do = "sleep", seconds = 0 }
"""


def test_a_driver_frozen_past_its_lease_makes_no_task_for_its_next_step(
        tmp: Path, redis: RedisServer) -> None:
    """a drives a run; a is frozen (SIGSTOP) past its TTL during s1 (whose task, if a
    ran it, b runs again: `retries = 1`) and b takes the run over. Thawed, a hears s1
    end; its next write into the run is refused (by its own lease, lost as its
    incarnation fenced itself, or by the run's fence in s2's ride), so a stops the run's
    driver having made no task for s2: the cluster has two, s1's and b's s2's."""
    agents = sleeper("sleepy", retries=1) + TWO
    # b must keep its own lease while a is frozen past a's: beside four other workers'
    # tests on two cores (ci25) the run ended "failed" once, where alone it succeeded,
    # and a loaded host holds a loop past the harness's short TTL (the suite ran this
    # test with no other beside it, at the run's end); b's lease is three times a's
    with nodes(tmp, redis, {"a": agents}) as ns, \
            nodes(tmp, redis, {"b": agents}, ttl=3 * TTL) as more:
        a, b = ns["a"], more["b"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2,
                   what="a and b alive")
        run_id = a.call("workflows.run", {"name": "two", "input": None})["run_id"]
        s1 = wait_until(lambda: next((s["task_id"] for s in a.call("runs.get", {
            "run_id": run_id})["steps"] if s["step"] == "s1" and s["task_id"]
            and _task_status(a, s["task_id"]) == "running"), None), what="s1 running")
        pid = a.proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: "taken over from a/1" in log(b), timeout=30,
                       what="b to take the run")
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: "no longer this node's (its lease as a/1" in log(a), timeout=60,
                   what="a's ride refused")
        view = wait_until(lambda: (v := b.call("runs.get", {"run_id": run_id}))["status"]
                          != "running" and v, timeout=60, what="the run to end on b")
        assert view["status"] == "succeeded", view
        rows = {s["step"]: s["task_id"] for s in view["steps"]}
        assert rows["s1"] == s1
        tasks = b.call("tasks.list", {"agent": "sleepy"})["tasks"]
        assert sorted(t["task_id"] for t in tasks) == sorted([s1, rows["s2"]])
        # each of a's writes in flight as its lease was found lost is refused and counted:
        # the held rows' timed flush and s2's ride may both have been sent by then (which
        # goes first, and whether the other waits for its answer, is the host's timing)
        assert a.call("stats.get")["cluster"]["calls"]["late_writes_refused"] >= 1


class Desk:
    """ClusterTasks.step's contract for a step's task (the riding submit, LostLease when
    refused, `Ride.kept` once Redis has it), over the real script: the submit's other
    parts (routing, claims) are the daemon tests'."""

    def __init__(self, n: Node) -> None:
        self.n = n

    async def step(self, p: Any, task_id: str, ride: Ride | None = None) -> m.TaskResult:
        assert ride is not None
        [got] = await self.n.calls.scripts.acknowledged([_submit(self.n, ride, False,
                                                                 task_id)])
        if got == REFUSED:
            raise LostLease(ride.call_id)
        await ride.kept()
        return m.TaskResult(task_id, "succeeded", None, None, [])


async def test_a_step_whose_ride_is_refused_fails_and_its_driver_is_told_conflict(
        pair: tuple[Node, Node]) -> None:  # noqa: F811
    """StepSubmit.carry: the engine's new row for a step, refused by the call's fence
    (another node took the call): CONFLICT to the engine, the call lost here, no task."""
    a, b = pair
    call = record()
    await a.calls.save_call(call)
    await killed(a)
    assert [t.record.call_id for t in await b.calls.orphans()] == [CALL_ID]
    steps = ClusterStepTasks(Desk(a), cancel=lambda task_id: asyncio.sleep(0))  # type: ignore[arg-type]
    work = steps.work(AgentTask("w", {}, NO_OPTIONS, None))
    with pytest.raises(RpcError) as refused:
        await StepEngine(a.calls, steps).step(call, ("first", -1), work)
    assert (refused.value.code, refused.value.message) == (CONFLICT, (
        f"call {CALL_ID} not kept: it is no longer this node's (its lease as a/1, fence "
        "1): another node took it over"))
    assert a.calls.fenced == 1
    assert await a.calls.redis.keys(K.task("*")) == []
    assert await _status(b, "first", -1) is None


async def test_a_ride_of_a_call_that_ended_writes_nothing_and_makes_no_task(
        pair: tuple[Node, Node]) -> None:  # noqa: F811
    """A run cancelled while its step's submit was on its way: its rows stay as its end
    wrote them, and no task is left running for it."""
    a, b = pair
    await a.calls.save_call(record())
    ride = a.calls.ride(CALL_ID, _running("second"), lambda: None)
    await a.calls.save_steps(CALL_ID, [row("second", -1, None, "cancelled")])
    await a.calls.save_call(record("cancelled"))
    [got] = await a.calls.scripts.acknowledged([_submit(a, ride, claim=False)])
    assert got == REFUSED
    assert await a.calls.redis.exists(K.task(TASK)) == 0
    assert await _status(b, "second", -1) == "cancelled"
