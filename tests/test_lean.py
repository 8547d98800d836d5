"""What a running fleet holds is few objects: a replica whose process runs has no task, no
coroutine and no closure of its own, so a full pass of the cyclic collector (a stall of the
loop) walks a small, fixed number of objects per replica (lean.py, decision 60); and the
callbacks that replaced the tasks end every life exactly as the tasks did."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import pytest

from corral.supervisor import State, Supervisor

from .conftest import PY, agent

N = 24
# tracked objects that one running replica adds to the heap: its transports, protocols,
# process and peer, and the bound methods they call back. Measured 50 warm, 59 cold (92
# warm before the lifetime became callbacks and the closures went); a task per replica
# would add 6 or more.
PER_REPLICA_MOST = 64


def tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


def tasks() -> int:
    """Task objects alive, done or not (asyncio.all_tasks counts only pending ones)."""
    return sum(isinstance(o, asyncio.Task) for o in gc.get_objects())


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_a_running_replica_holds_no_task_and_a_bounded_number_of_objects(
        sup: Supervisor, warm: bool) -> None:
    if warm:  # the zygote's own objects are not the replicas': made before counting
        sup.add(agent("first", warm=True))
        await sup.wait_all_serving(timeout=60)
    before = tracked()
    tasks_before = tasks()
    sup.add(agent("fleet", replicas=N, warm=warm, start_timeout=60.0))
    await sup.wait_all_serving(timeout=120)
    assert sup.census[State.READY] == N + warm
    per_replica = (tracked() - before) / N
    assert tasks() == tasks_before
    assert per_replica <= PER_REPLICA_MOST, (
        f"{per_replica:.1f} tracked objects per running replica")
    # the zygote's table holds one pending exit status per running child, and no more
    for zygote in sup.zygotes.zygotes.values():
        assert set(zygote._statuses) == {r.pid for r in sup.replicas()}
        assert not any(f.done() for f in zygote._statuses.values())


async def test_stopped_returns_once_terminated_and_at_once_when_there_is_no_life(
        sup: Supervisor) -> None:
    sup.add(agent("one"))
    r = await sup.wait_state("one", State.READY)
    r.begin_stop("stopped", graceful=True)
    assert r.state == State.SHUTTING_DOWN
    await r.stopped()
    assert r.state == State.TERMINATED and r.reason == "stopped" and r.process is None
    await asyncio.wait_for(r.stopped(), 1.0)  # no life: nothing to wait for
    # a life that ends at its spawn ends for those who wait as well
    sup.add(agent("nowhere", command=["/nonexistent/agent"], restart="never"))
    gone = next(iter(sup.replicas("nowhere")))
    await asyncio.wait_for(gone.stopped(), 10.0)
    assert gone.state == State.TERMINATED
    assert gone.reason.startswith("spawn failed") or "not found" in gone.reason, gone.reason


ANSWER_AND_EXIT = """
import sys
line = sys.stdin.readline()
rid = line.split('"id":', 1)[1].split(",", 1)[0].strip(" }\\n")
sys.stdout.write('{"jsonrpc":"2.0","id":%s,"result":{}}\\n' % rid)
sys.stdout.flush()
"""


async def test_an_answer_read_after_the_exit_makes_nothing_ready(
        sup: Supervisor, tmp_path: Path) -> None:
    # the process answers initialize and exits at once: whichever of the two corral
    # sees first, once the exit is seen no answer makes the replica Ready
    script = tmp_path / "brief.py"
    script.write_text(ANSWER_AND_EXIT)
    events = sup.subscribe()
    sup.add(agent("brief", command=[PY, str(script)], restart="never"))
    r = await sup.wait_state("brief", State.TERMINATED, timeout=30)
    seen = []
    while not events.empty():
        seen.append(events.get_nowait().state)
    assert seen in (["starting", "terminated"], ["starting", "ready", "terminated"]), seen
    await asyncio.sleep(0.2)  # a late answer would have been read by now
    assert r.state == State.TERMINATED and r._init is None and r.ready_at is None
    assert r.last_exit == "exited with status 0"


async def test_a_warm_child_that_exits_at_once_has_its_own_status_not_a_lost_one(
        sup: Supervisor) -> None:
    # its exit may be told by the zygote before the spawn's answer is read: the status
    # told early is the one used, at once, not 255 after the zygote's grace
    sup.add(agent("storm", "misbehave.py", warm=True, env={"MISBEHAVE": "exit"},
                  restart="never"))
    t0 = time.monotonic()
    r = await sup.wait_state("storm", State.TERMINATED, timeout=30)
    assert r.last_exit == "exited with status 3"
    assert time.monotonic() - t0 < 30
    assert sup.stats.cold_fallbacks == 0
    zygote = next(iter(sup.zygotes.zygotes.values()))
    assert zygote.spawned == 1 and zygote._statuses == {}
