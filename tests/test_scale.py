"""A fleet's idle cost and per-event bookkeeping: the heartbeat pings only quiet workers
and visits a bounded number per turn of the loop; sd_notify messages are coalesced and
never lost to a full socket; hundreds of agents start and stop in linear time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from pathlib import Path

from corral.daemon.notify import Notifier
from corral.supervisor import State, Supervisor, Tick
from corral.supervisor.core import HEARTBEAT_SLICE

from .conftest import agent


async def _rounds(sup: Supervisor, n: int, timeout: float = 30.0) -> None:
    """Wait until the heartbeat has gone round every replica `n` more times."""
    done = asyncio.get_running_loop().create_future()
    target = sup.heartbeat_work.rounds + n

    def on_tick() -> None:
        if sup.heartbeat_work.rounds >= target and not done.done():
            done.set_result(None)

    ticks = sup.stream.subscribe(lambda _: on_tick(), Tick)
    try:
        await asyncio.wait_for(done, timeout)
    finally:
        sup.stream.unsubscribe(ticks)


async def test_a_quiet_worker_is_pinged_once_per_half_timeout_not_every_tick(
        sup: Supervisor) -> None:
    sup.add(agent("quiet"))
    await sup.wait_state("quiet", State.READY)
    pings, t0 = sup.heartbeat_work.pings, time.monotonic()
    await _rounds(sup, 15)  # 1.5 s at the fixture's 0.1 s interval: 15 pings before
    sent = sup.heartbeat_work.pings - pings
    # the fixture's heartbeat_timeout is 2 s: a ping after 1 s of silence
    assert 1 <= sent <= (time.monotonic() - t0) / 1.0 + 1
    assert sup.agent("quiet").replicas[0].state == State.READY


async def test_a_worker_that_keeps_answering_tasks_is_never_pinged(sup: Supervisor) -> None:
    sup.add(agent("talker"))
    await sup.wait_state("talker", State.READY)
    pings = sup.heartbeat_work.pings
    rounds = sup.heartbeat_work.rounds
    while sup.heartbeat_work.rounds < rounds + 15:
        assert (await sup.tasks.run("talker", {"name": "x"})).status == "succeeded"
    assert sup.heartbeat_work.pings == pings


def _stuffed_socket(path: Path) -> socket.socket:
    """A notify socket whose queue is full: the next datagram gets EAGAIN."""
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    rx.bind(str(path))
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.setblocking(False)
    try:
        for _ in range(100_000):
            tx.sendto(b"STATUS=filler", str(path))
    except BlockingIOError:
        pass
    finally:
        tx.close()
    return rx


async def test_ready_is_retried_until_a_full_notify_socket_takes_it(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    rx = _stuffed_socket(path)
    saved = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    try:
        n.status("starting 1")
        n.ready("all up")
        n.status("starting 2")  # a STATUS after READY: kept in order, never before it
        n.status("starting 3")  # replaces "starting 2", which was never sent
        assert n.sent == 0 and len(n.pending) == 3 and n.retries == 1
        rx.setblocking(False)
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pending = bool(n.pending)
            with contextlib.suppress(BlockingIOError):
                while True:
                    got.append(rx.recv(4096))
            if not pending:
                break
            await asyncio.sleep(0.01)  # the retry timer runs on the loop meanwhile
        ours = [g for g in got if g != b"STATUS=filler"]
        assert ours == [b"STATUS=starting 1",
                        f"READY=1\nSTATUS=all up\nMAINPID={os.getpid()}".encode(),
                        b"STATUS=starting 3"]
        assert n.dropped == 0 and n.retries >= 1
    finally:
        n.close()
        rx.close()
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v


async def test_status_lines_are_coalesced_to_one_per_100_ms(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    rx.setblocking(False)
    saved = os.environ.get("NOTIFY_SOCKET")
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    calls = 0

    def line() -> str:
        nonlocal calls
        calls += 1
        return f"status {calls}"

    n.track_status(line)
    try:
        t0 = time.monotonic()
        for _ in range(1000):  # a thousand lifecycle events in one turn of the loop
            n.status_changed()
        assert calls == 1  # the first went out at once; the rest wait for the window
        while calls < 2:
            await asyncio.sleep(0.01)
        assert time.monotonic() - t0 >= 0.09
        got = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(rx.recv(4096))
        assert got == [b"STATUS=status 1", b"STATUS=status 2"]
    finally:
        n.close()
        rx.close()
        if saved is not None:
            os.environ["NOTIFY_SOCKET"] = saved


async def test_300_agents_start_and_stop_with_a_bounded_heartbeat_turn(sup: Supervisor) -> None:
    t0 = time.monotonic()
    sup.add(agent("fleet", replicas=300, start_timeout=60.0, stop_timeout=10.0))
    await sup.wait_all_serving(timeout=90)
    started = time.monotonic() - t0
    assert sup.census[State.READY] == 300
    await _rounds(sup, 2)
    work = sup.heartbeat_work
    assert work.replicas == 300 and work.slices_per_round == 300 // HEARTBEAT_SLICE + 1
    assert work.most_visits <= HEARTBEAT_SLICE
    t1 = time.monotonic()
    await sup.stop("fleet")
    stopped = time.monotonic() - t1
    assert sup.census[State.TERMINATED] == 300
    # loose bounds (a shared 2-core machine); the figures themselves live in bench/
    assert started < 60 and stopped < 30, (started, stopped)
    print(f"300 agents: start {started:.2f} s, stop {stopped:.2f} s")
