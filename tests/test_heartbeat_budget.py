"""The heartbeat's fleet-wide budget of looks at quiet workers (heartbeat.py's
fleet_budget): in a fleet large enough for it to bound them, a worker found parked is
looked at again only at its turn, a task given to it meanwhile is watched at once, and a
worker stopped after a look is still found hung."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from corral.supervisor import State, Supervisor, Tick, heartbeat, procstat

from .conftest import agent

pytestmark = pytest.mark.skipif(
    not procstat.READ_CALLS, reason="no read/readv numbers for this machine in procstat")


def budget(monkeypatch: pytest.MonkeyPatch, per_second: float) -> None:
    monkeypatch.setattr(heartbeat, "BUDGET_FLOOR", per_second)
    monkeypatch.setattr(heartbeat, "BUDGET_GROWTH", 0.0)


def test_the_budget_has_a_floor_and_grows_as_the_square_root_of_the_fleet() -> None:
    assert heartbeat.fleet_budget(1) == heartbeat.fleet_budget(900) == 50.0
    assert heartbeat.fleet_budget(10_000) == 160.0


async def _rounds(sup: Supervisor, n: int) -> None:
    done = asyncio.get_running_loop().create_future()
    target = sup.heartbeat_work.rounds + n
    sub = sup.stream.subscribe(
        lambda _: sup.heartbeat_work.rounds >= target and not done.done()
        and done.set_result(None), Tick)
    try:
        await asyncio.wait_for(done, 60)
    finally:
        sup.stream.unsubscribe(sub)


async def test_a_parked_worker_is_looked_at_at_the_fleets_rate(
        sup: Supervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    # one replica at half a look a second: as a fleet of 2 s of looks, twice its 1 s
    # heartbeat timeout (a parked worker's silence past its timeout is not a hang)
    budget(monkeypatch, 0.5)
    sup.add(agent("quiet", heartbeat_timeout=1.0))
    r = await sup.wait_state("quiet", State.READY)
    await _rounds(sup, 2)
    assert sup.heartbeat_work.look_every == 2.0
    parked = sup.heartbeat_work.parked
    await _rounds(sup, 15)  # 0.1 s rounds: 1.5 s of silence, looked at every 2 s
    assert sup.heartbeat_work.parked - parked <= 1
    await _rounds(sup, 30)
    assert 1 <= sup.heartbeat_work.parked - parked <= 3
    assert r.state == State.READY and r.restarts == 0
    # work given between two looks is answered, and nothing is taken for a hang
    for i in range(3):
        assert (await sup.tasks.run("quiet", {"i": i})).status == "succeeded"
        await _rounds(sup, 6)
    assert r.machine.takes_work and r.restarts == 0


async def test_a_worker_stopped_after_its_look_is_found_hung_at_its_turn(
        sup: Supervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    budget(monkeypatch, 0.5)
    sup.add(agent("frozen", backoff_initial=30.0, backoff_max=30.0, heartbeat_timeout=1.0))
    r = await sup.wait_state("frozen", State.READY)
    parked = sup.heartbeat_work.parked
    while sup.heartbeat_work.parked == parked:
        await _rounds(sup, 1)
    assert r.pid is not None
    os.kill(r.pid, signal.SIGSTOP)  # after a look found it parked: unseen till its turn
    await sup.wait_state("frozen", State.BACKOFF, timeout=20)
    assert r.last_exit == "hung: no heartbeat for 1 s"


async def test_a_task_given_to_a_parked_worker_that_stopped_is_found_hung(
        sup: Supervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    budget(monkeypatch, 0.02)  # a look every 50 s
    # (at most once: its task ends lost with the hang rather than wait 30 s to run again)
    sup.add(agent("frozen", backoff_initial=30.0, backoff_max=30.0, heartbeat_timeout=1.0,
                  retry_lost=0))
    r = await sup.wait_state("frozen", State.READY)
    parked = sup.heartbeat_work.parked
    while sup.heartbeat_work.parked == parked:
        await _rounds(sup, 1)
    assert r.pid is not None
    os.kill(r.pid, signal.SIGSTOP)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    task = sup.tasks.submit("frozen", {"do": "echo"})
    await sup.wait_state("frozen", State.BACKOFF, timeout=20)
    # watched from when the task was given (1 s heartbeat timeout), not at the next look
    assert loop.time() - t0 < 10
    assert r.last_exit == "hung: no heartbeat for 1 s"
    await asyncio.wait_for(asyncio.shield(task.done), 10)
    assert task.status == "lost"
    assert task.error is not None and task.error.message == (
        "worker exited: hung: no heartbeat for 1 s (not run again: at most once, "
        "retry_lost = 0)")
