"""A queued task says why it waits, and where it is in its agent's queue (issue 36, "Answers
to why?"): every replica busy, none taking tasks (paused, unready, starting), the agent
asleep, its tenant at max_concurrent_tasks; a budget is tests/test_budgets.py's."""

from __future__ import annotations

import asyncio

from corral.supervisor import State, Supervisor
from corral.supervisor.config import Autoscale, TenantSpec
from corral.supervisor.tasks import TaskStatus
from corral.taskoptions import TaskOptions

from .conftest import agent


async def waiting(sup: Supervisor, task_id: str) -> str | None:
    return (await sup.tasks.info(task_id)).waiting


async def test_a_queued_task_says_what_holds_it_and_its_place(sup: Supervisor) -> None:
    sup.add(agent("w", "misbehave.py", max_concurrent_tasks=1))
    await sup.wait_state("w", State.READY)
    running = sup.tasks.submit("w", {"do": "sleep", "seconds": 60})
    low = sup.tasks.submit("w", {"do": "echo"})
    high = sup.tasks.submit("w", {"do": "echo"}, TaskOptions(priority=5))
    assert (running.status, low.status, high.status) == ("running", "queued", "queued")
    busy = "every replica that takes tasks is busy (1 at max_concurrent_tasks 1)"
    assert await waiting(sup, high.id) == f"1st of 2 waiting for w: {busy}"
    assert await waiting(sup, low.id) == f"2nd of 2 waiting for w: {busy}"
    assert await waiting(sup, running.id) is None
    # paused: no replica takes tasks, and each says why
    await sup.pause("w")
    assert await waiting(sup, high.id) == (
        "1st of 2 waiting for w: no replica takes tasks: w#0 paused: paused")
    sup.resume("w")
    sup.tasks.cancel(running.id)
    await asyncio.wait_for(asyncio.gather(low.done, high.done), 30)
    assert (await sup.tasks.info(low.id)).waiting is None


async def test_an_asleep_agent_and_a_tenant_at_its_bound_are_named(sup: Supervisor) -> None:
    sup.tenancy.replace({"t": TenantSpec(max_concurrent_tasks=1)})
    sup.add(agent("a", "misbehave.py", tenant="t"))
    sup.add(agent("b", "misbehave.py", tenant="t"))
    await sup.wait_state("a", State.READY)
    await sup.wait_state("b", State.READY)
    first = sup.tasks.submit("a", {"do": "sleep", "seconds": 60})
    held = sup.tasks.submit("b", {"do": "echo"})
    assert held.status == TaskStatus.QUEUED
    assert await waiting(sup, held.id) == (
        "1st of 1 waiting for b: its tenant t is at its max_concurrent_tasks")
    sup.tasks.cancel(first.id)
    await asyncio.wait_for(held.done, 30)
    # asleep: no replica at all, one waking for it
    sup.add(agent("z", "misbehave.py", replicas=0,
                  autoscale=Autoscale(min_replicas=0, max_replicas=1, idle_after=60.0)))
    woken = sup.tasks.submit("z", {"do": "echo"})
    assert await waiting(sup, woken.id) == (
        "1st of 1 waiting for z: the agent is asleep (scaled to zero): a replica is waking "
        "for it")
    await asyncio.wait_for(woken.done, 60)
    assert woken.status == TaskStatus.SUCCEEDED
