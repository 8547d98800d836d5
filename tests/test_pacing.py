"""Bursts of per-replica work (a mass stop, a thousand exits at once, a mass crash) run
BATCH items per turn of the loop, with the loop's other work served between slices; and
the writes per process (records) and per agent (checkpoints) go off the loop, durable."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections import Counter
from pathlib import Path

from corral.daemon.store import StateStore
from corral.supervisor import State, Supervisor, Transition
from corral.supervisor.containment import ProcessRecord
from corral.supervisor.pacing import BATCH, Pacer, pacer

from .conftest import agent

N = 2 * BATCH + 9  # three slices at the least


class Turns:
    """A task that looks once per turn of the loop (as a control call waiting on its
    socket would be served): what it saw of the terminated count, turn by turn."""

    def __init__(self, sup: Supervisor, state: State) -> None:
        self.sup = sup
        self.state = state
        self.seen: list[int] = []
        self.task = asyncio.ensure_future(self._look())

    async def _look(self) -> None:
        while True:
            self.seen.append(self.sup.census[self.state])
            await asyncio.sleep(0)

    async def done(self) -> list[int]:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        return self.seen


def _per_replica(events: asyncio.Queue[object], state: str) -> Counter[int]:
    got: Counter[int] = Counter()
    while not events.empty():
        e = events.get_nowait()
        if getattr(e, "state", None) == state:
            got[e.replica] += 1  # type: ignore[attr-defined]
    return got


async def test_a_mass_crash_and_a_mass_stop_are_handled_in_slices_each_agent_once(
        sup: Supervisor) -> None:
    # the backoff long enough that a replica is still in it when the looking task looks
    # (at 10 ms a loaded machine saw the first slices leave it before the last came in)
    sup.add(agent("fleet", replicas=N, warm=True, restart="always", start_timeout=60.0,
                  backoff_initial=2.0, backoff_max=2.0, max_restarts=10))
    await sup.wait_all_serving(timeout=120)
    events = sup.subscribe(maxsize=100_000)
    # every process killed at once: N exits, readable together
    p = pacer()
    slices = p.slices
    look = Turns(sup, State.BACKOFF)
    for r in sup.agent("fleet").replicas:
        assert r.pid is not None
        os.kill(r.pid, signal.SIGKILL)
    ended: set[int] = set()
    sup.stream.subscribe(
        lambda e: ended.add(e.replica) if e.state == "terminated" else None, Transition)
    await sup.wait_for(lambda: len(ended) == N, 60)
    seen = await look.done()
    # the exits were handled over several turns, the looking task served in between
    assert len({s for s in seen if 0 < s < N}) >= 2, seen
    assert p.slices - slices >= N // BATCH
    await sup.wait_for(lambda: sup.census[State.READY] == N, 120)
    # the restart policy was applied to each crash, once
    crashed = _per_replica(events, "terminated")
    assert crashed == Counter(range(N)), crashed
    restarts = [r.restarts for r in sup.agent("fleet").replicas]
    assert restarts == [1] * N

    # a mass stop: stops and exits through the same queue, in slices; each replica ends
    # Terminated exactly once and stays down (no restart of a stop)
    look = Turns(sup, State.TERMINATED)
    slices = p.slices
    await sup.stop("fleet")
    seen = await look.done()
    assert len({s for s in seen if 0 < s < N}) >= 2, seen
    assert p.slices - slices >= 2 * (N // BATCH)  # N stops begun, N exits: 2N items
    assert sup.census[State.TERMINATED] == N
    stopped = _per_replica(events, "terminated")
    assert stopped == Counter(range(N)), stopped
    assert all(r.state == State.TERMINATED and r.last_exit == "stopped"
               for r in sup.agent("fleet").replicas)


async def test_a_pacer_runs_at_most_a_batch_per_turn_in_order_and_survives_a_failure(
) -> None:
    p = Pacer(asyncio.get_running_loop(), batch=4)
    ran: list[int] = []
    turns = 0

    def item(i: int) -> None:
        if i == 5:
            raise RuntimeError("one item fails")
        ran.append(i)

    for i in range(10):
        p.submit(item, i)
    counts = []
    while p.waiting or len(ran) < 9:
        await asyncio.sleep(0)
        turns += 1
        counts.append(len(ran))
    assert ran == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    steps = [b - a for a, b in zip([0, *counts], counts, strict=False)]
    assert max(steps) <= 4 and turns >= 3


async def test_process_records_and_checkpoints_are_committed_off_the_loop_in_order(
        tmp_path: Path) -> None:
    store = StateStore(tmp_path / "corral.db")
    writer = store.open_writer()
    try:
        recs = [ProcessRecord(token=f"me-1.{i}", kind="agent", name="w", replica=i,
                              pid=10_000 + i, start_time=1, pgid=10_000 + i,
                              sid=10_000 + i) for i in range(3)]
        store.begin_incarnation("me-1", os.getpid(), 1)
        for r in recs:
            writer.submit(StateStore.write_processes([r], []))
        writer.submit(StateStore.write_processes([], [recs[1].token]))
        store.save_state("w", 0, 1.0, {"n": 1})
        # nothing written on the loop: not visible before the writer's commit...
        await writer.committed()
        # ...and durable once it is: another connection (another process) sees it
        other = sqlite3.connect(tmp_path / "corral.db")
        tokens = {t for (t,) in other.execute("SELECT token FROM processes")}
        states = list(other.execute("SELECT name, replica, state FROM agent_state"))
        other.close()
        assert tokens == {"me-1.0", "me-1.2"}  # the delete came after its insert
        assert states == [("w", 0, '{"n":1}')]
        assert [r.token for r in store.process_records(["me-1"])] == ["me-1.0", "me-1.2"]
        writer.submit(StateStore.ending_incarnations(["me-1"]))
        await writer.committed()
        assert store.process_records(["me-1"]) == [] and store.incarnations() == []
    finally:
        await store.close_writer()
        store.close()


async def test_a_write_that_is_wrong_is_dropped_alone_and_told_and_the_writer_goes_on(
        tmp_path: Path) -> None:
    store = StateStore(tmp_path / "corral.db")
    errors: list[str] = []
    writer = store.open_writer(on_error=errors.append)
    try:
        # a write that is wrong (not one the database cannot take now) is dropped alone:
        # the writes of its batch around it are committed
        store.save_state("w", 0, 1.0, 6)
        writer.submit(lambda db: db.execute("INSERT INTO no_such_table VALUES (1)"))
        store.save_state("w", 1, 1.0, 7)
        await writer.committed()  # (the error is told before this returns)
        assert errors == [f"state database {store.path}: one write dropped, SQLite refused "
                          "it (no such table: no_such_table)"]
        assert store.states() == {("w", 0): (1.0, 6), ("w", 1): (1.0, 7)}
        assert not writer.outage.failing and writer.pending() == {}
    finally:
        await store.close_writer()
        store.close()
