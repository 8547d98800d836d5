"""`tasks.map`'s lanes (supervisor/tasks/lanes.py): refusals in the middle of a map, a
map cancelled while its tasks run."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from corral.supervisor import Supervisor
from corral.supervisor.tasks import TaskFinished

from .conftest import agent, all_ready


def mb(name: str, **kw: Any) -> Any:
    return agent(name, "misbehave.py", **kw)


async def test_refused_inputs_are_results_in_their_place(sup: Supervisor) -> None:
    sup.add(mb("rated", rate_per_minute=3, max_concurrent_tasks=2))
    await all_ready(sup, "rated")
    out = await sup.tasks.map("rated", [{"do": "echo", "i": i} for i in range(7)],
                              concurrency=2)
    assert [r.status for r in out] == ["succeeded"] * 3 + ["refused"] * 4
    assert [r.output["i"] for r in out[:3]] == [0, 1, 2]
    assert all(r.error is not None and r.error.message.startswith(
        "rate limit: agent rated takes 3 tasks a minute") for r in out[3:])
    assert sup.tasks.stats()["agents"]["rated"]["refused"] == 4


async def test_a_cancelled_map_submits_nothing_more(sup: Supervisor) -> None:
    sup.add(mb("slow", max_concurrent_tasks=4))
    await all_ready(sup, "slow")
    first = asyncio.get_running_loop().create_future()

    def on_end(e: TaskFinished) -> None:
        if not first.done():
            first.set_result(None)

    sup.stream.subscribe(on_end, TaskFinished)
    job = asyncio.ensure_future(sup.tasks.map(
        "slow", [{"do": "sleep", "seconds": 0.05 * (1 + i % 2)} for i in range(50)],
        concurrency=2))
    await first  # one task has ended (its lane may have taken its next input)
    job.cancel()
    accepted = sup.tasks.stats()["agents"]["slow"]["accepted"]
    assert 2 <= accepted <= 3
    for task in sup.tasks.running_tasks():  # what was running ends
        await asyncio.wait_for(asyncio.shield(task.done), 10)
    for _ in range(3):
        await asyncio.sleep(0)
    assert job.cancelled()
    assert sup.tasks.stats()["agents"]["slow"]["accepted"] == accepted  # nothing new
    assert sup.tasks.stats()["agents"]["slow"]["succeeded"] == accepted
    assert not sup.tasks.running_tasks() and sup.tasks.waiting() == 0


async def test_a_maps_results_are_no_work_for_the_collector(sup: Supervisor) -> None:
    """What a map hands back is never walked by the cyclic collector: a list of a
    million results would make each of its full passes walk them all (a refused input's
    result, and a failed task's, too)."""
    sup.add(mb("echo", max_concurrent_tasks=4, rate_per_minute=6))
    await all_ready(sup, "echo")
    out = await sup.tasks.map("echo", [{"do": "echo", "i": i} for i in range(5)]
                              + [{"do": "fail"}, {"do": "echo", "i": 6}], concurrency=3)
    assert [r.status for r in out] == ["succeeded"] * 5 + ["failed", "refused"]
    gc.collect()  # (a tuple is untracked once a pass has seen it holds nothing tracked)
    assert [(gc.is_tracked(r), gc.is_tracked(r.attempts)) for r in out] == [(False, False)] * 7
    assert [len(r.attempts) for r in out] == [1] * 6 + [0]
    assert out[3].output == {"do": "echo", "i": 3}


async def test_a_plain_tasks_end_is_told_to_no_part_of_the_engine(sup: Supervisor) -> None:
    """The engine's parts (sessions, steps, outputs, spawn trees, asks, elicitations)
    listen for a task's end only while they hold something of a task: a map of tasks
    that use none of them makes no TaskFinished at all."""
    sup.add(mb("plain", max_concurrent_tasks=4))
    await all_ready(sup, "plain")
    assert TaskFinished not in sup.stream.wanted
    out = await sup.tasks.map("plain", [{"do": "echo", "i": i} for i in range(20)],
                              concurrency=4)
    assert [r.status for r in out] == ["succeeded"] * 20
    assert TaskFinished not in sup.stream.wanted
