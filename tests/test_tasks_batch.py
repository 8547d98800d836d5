"""`tasks.map`'s batch path (lanes.py, Intake.submit_many): each input of a turn's
batch keeps every behaviour of a task submitted alone, against real workers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from corral import jsonrpc
from corral.supervisor import State, Supervisor
from corral.supervisor.tasks import TaskFinished, TaskStatus
from corral.taskoptions import TaskOptions

from .conftest import agent


def mb(name: str, **kw: Any) -> Any:
    return agent(name, "misbehave.py", **kw)


async def _until(cond: Any) -> None:
    while not cond():
        await asyncio.sleep(0.005)


async def test_one_failing_input_fails_alone_and_the_rest_succeed(sup: Supervisor) -> None:
    sup.add(mb("bf", max_concurrent_tasks=4))
    await sup.wait_state("bf", State.READY)
    inputs: list[Any] = [{"do": "echo", "i": i} for i in range(20)]
    inputs[7] = {"do": "fail"}
    out = await sup.tasks.map("bf", inputs, concurrency=8)
    assert [r.status for r in out] == ["succeeded"] * 7 + ["failed"] + ["succeeded"] * 12
    err = out[7].error
    assert err is not None
    assert (err.code, err.message, err.data) == (jsonrpc.TASK_FAILED, "failed on request",
                                                 {"asked": True})
    assert [r.output["i"] for r in out if r.status == "succeeded"] == [
        i for i in range(20) if i != 7]
    assert len({r.task_id for r in out}) == 20  # every input its own task and id
    s = sup.tasks.stats()["agents"]["bf"]
    assert (s["accepted"], s["succeeded"], s["failed"]) == (20, 19, 1)


async def test_one_input_times_out_and_one_is_retried(sup: Supervisor, tmp_path: Path
                                                      ) -> None:
    sup.add(mb("bt", max_concurrent_tasks=4, retries=1))
    await sup.wait_state("bt", State.READY)
    inputs: list[Any] = [{"do": "echo", "i": i} for i in range(10)]
    inputs[3] = {"do": "sleep", "seconds": 60}
    out = await sup.tasks.map("bt", inputs, TaskOptions(timeout=1.0), concurrency=4)
    assert out[3].status == "timed_out"
    assert out[3].error is not None and out[3].error.message == "task timed out after 1 s"
    assert {a.outcome for a in out[3].attempts} == {"timed_out"}
    assert [r.status for i, r in enumerate(out) if i != 3] == ["succeeded"] * 9
    # a crash loses the worker's other tasks too: alone in its batch here
    crash = {"do": "crash-once", "marker": str(tmp_path / "m")}
    out = await sup.tasks.map("bt", [crash], concurrency=4)
    assert out[0].status == "succeeded" and out[0].output["attempt"] == 2
    assert [a.outcome for a in out[0].attempts] == ["lost", "succeeded"]


async def test_one_input_cancelled_by_id(sup: Supervisor, tmp_path: Path) -> None:
    sup.add(mb("bc", max_concurrent_tasks=4))
    await sup.wait_state("bc", State.READY)
    gate = tmp_path / "gate"
    inputs: list[Any] = [{"do": "await", "path": str(gate)}] + [
        {"do": "echo", "i": i} for i in range(1, 12)]
    job = asyncio.ensure_future(sup.tasks.map("bc", inputs, concurrency=4))
    await _until(lambda: any(bytes(t.input).startswith(b'{"do":"await"') and
                             t.status == TaskStatus.RUNNING
                             for t in sup.tasks.active.values()))
    held = next(t for t in sup.tasks.active.values() if bytes(t.input).startswith(b'{"do":"await"'))
    sup.tasks.cancel(held.id)
    out = await job
    assert out[0].task_id == held.id and out[0].status == "cancelled"
    assert [r.status for r in out[1:]] == ["succeeded"] * 11
    assert [r.output["i"] for r in out[1:]] == list(range(1, 12))


async def test_a_full_queue_refuses_the_batch_inputs_a_lone_submit_would(sup: Supervisor
                                                                         ) -> None:
    sup.add(mb("bq", max_concurrent_tasks=1, max_queue=2))
    await sup.wait_state("bq", State.READY)
    inputs = [{"do": "sleep", "seconds": 0.05, "i": i} for i in range(10)]
    out = await sup.tasks.map("bq", inputs, concurrency=10)
    # one starts, two wait, the other seven of the first batch are refused as `submit`
    # refuses them; the lanes freed take no more (there are none)
    assert [r.status for r in out] == ["succeeded"] * 3 + ["refused"] * 7
    assert {(r.error.code, r.error.message) for r in out[3:] if r.error is not None} == {
        (jsonrpc.REFUSED, "queue full: agent bq has 2 tasks waiting (max_queue 2)")}
    s = sup.tasks.stats()["agents"]["bq"]
    assert (s["accepted"], s["refused"]) == (3, 7)


async def test_a_map_beside_single_submissions_keeps_the_queue_order(sup: Supervisor,
                                                                     tmp_path: Path) -> None:
    sup.add(mb("bo", max_concurrent_tasks=1))
    await sup.wait_state("bo", State.READY)
    ended: list[Any] = []
    sup.stream.subscribe(lambda e: ended.append(e.task.id), TaskFinished)
    gate = tmp_path / "gate"
    blocker = sup.tasks.submit("bo", {"do": "await", "path": str(gate), "k": "blocker"})
    await _until(lambda: blocker.status == TaskStatus.RUNNING)
    names = {blocker.id: "blocker"}
    names[sup.tasks.submit("bo", {"do": "echo", "k": "s1"}).id] = "s1"
    job = asyncio.ensure_future(sup.tasks.map(
        "bo", [{"do": "echo", "k": f"m{i}"} for i in range(6)], concurrency=3))
    await _until(lambda: sup.tasks.waiting() == 4)  # s1 and the map's first batch
    names[sup.tasks.submit("bo", {"do": "echo", "k": "s2"}).id] = "s2"
    names[sup.tasks.submit("bo", {"do": "echo", "k": "hi"}, TaskOptions(priority=5)).id] = "hi"
    gate.touch()
    out = await job
    assert [r.output["k"] for r in out] == [f"m{i}" for i in range(6)]
    await _until(lambda: len(ended) == 10)
    names.update((r.task_id, r.output["k"]) for r in out)
    order = [names[i] for i in ended]
    # higher priority first, then arrival: the map's inputs take their place among the
    # single tasks as they arrive, a lane's next input behind what came before it
    assert order == ["blocker", "hi", "s1", "m0", "m1", "m2", "s2", "m3", "m4", "m5"]
