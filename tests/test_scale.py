"""A fleet's idle cost and per-event bookkeeping: the heartbeat pings only quiet workers,
and not those it sees parked on their stdin, and visits a bounded number per turn of the
loop; sd_notify messages are coalesced and
never lost to a full socket; hundreds of agents start and stop in linear time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.daemon.notify import Notifier
from corral.supervisor import State, Supervisor, Tick, procstat
from corral.supervisor.core import HEARTBEAT_SLICE

from .conftest import agent
from .test_daemon_cli import wait_until


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


needs_syscall_file = pytest.mark.skipif(
    not procstat.READ_CALLS, reason="no read/readv numbers for this machine in procstat")


@needs_syscall_file
async def _rounds_until(sup: Supervisor, cond: Callable[[], bool], rounds: int = 100) -> None:
    """Wait round by round of the heartbeat until `cond()` holds; fails after `rounds`."""
    for _ in range(rounds):
        if cond():
            return
        await _rounds(sup, 1)
    assert cond(), f"not so after {rounds} heartbeat rounds"


async def test_a_quiet_worker_parked_on_its_stdin_is_looked_at_not_pinged(
        sup: Supervisor) -> None:
    pings = sup.heartbeat_work.pings
    sup.add(agent("quiet"))
    r = await sup.wait_state("quiet", State.READY)
    pid = r.pid
    # the fixture's heartbeat_timeout is 2 s: a look after each 1 s of silence, compared
    # with the CPU time it had as it answered initialize
    await _rounds(sup, 45)  # 4.5 s: twice the timeout, four looks
    # (one ping at most: the answer's last microseconds may cross a clock tick, and a
    # look that sees the CPU time moved pings, once)
    assert sup.heartbeat_work.pings - pings <= 1
    assert sup.heartbeat_work.parked >= 2
    assert r.state == State.READY and r.pid == pid and r.restarts == 0


async def test_a_quiet_worker_with_a_busy_thread_is_pinged_every_half_timeout(
        sup: Supervisor) -> None:
    """Its CPU time moves between looks: something in it runs, and only an answer says
    that its main thread would get the interpreter to answer a task."""
    # a tenth of a core or so: enough CPU time to move its clock-tick count every second
    busy = ("import threading, time\nfrom corral.worker import run\n"
            "def busy():\n    while True:\n        sum(range(100000))\n"
            "        time.sleep(0.02)\n"
            "threading.Thread(target=busy, daemon=True).start()\nrun(lambda i, c: i)\n")
    sup.add(agent("busy", command=[sys.executable, "-c", busy]))
    r = await sup.wait_state("busy", State.READY)
    pings, parked, t0 = sup.heartbeat_work.pings, sup.heartbeat_work.parked, time.monotonic()
    await _rounds(sup, 45)
    sent = sup.heartbeat_work.pings - pings
    assert 2 <= sent <= (time.monotonic() - t0) / 1.0 + 1
    assert sup.heartbeat_work.parked == parked
    assert r.state == State.READY and r.restarts == 0


def test_the_proc_files_say_whether_a_process_sleeps_reading_its_stdin() -> None:
    reader = subprocess.Popen([sys.executable, "-c", "import os\nos.readv(0, [bytearray(8)])"],
                              stdin=subprocess.PIPE)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time\ntime.sleep(60)"],
                               stdin=subprocess.PIPE)
    other = subprocess.Popen([sys.executable, "-c", "import os\nos.readv(0, [bytearray(8)])"],
                             stdin=subprocess.PIPE)
    stranger, stranger_w = os.pipe2(os.O_CLOEXEC)
    try:
        assert reader.stdin is not None and sleeper.stdin is not None
        assert procstat.same_pipe(reader.pid, reader.stdin.fileno())
        assert not procstat.same_pipe(other.pid, reader.stdin.fileno())
        assert not procstat.same_pipe(reader.pid, stranger)
        fd = procstat.open_proc(reader.pid, "syscall")
        sleeping = procstat.open_proc(sleeper.pid, "syscall")
        try:
            if procstat.READ_CALLS:
                # until the interpreter reaches the read
                wait_until(lambda: procstat.reading_stdin(fd), 30, "it to read its stdin")
                stat = procstat.open_proc(reader.pid, "stat")
                try:
                    st = procstat.stat_at(stat, reader.pid)
                finally:
                    os.close(stat)
                assert st is not None and st.state == "S"
            assert not procstat.reading_stdin(sleeping)
            reader.stdin.write(b"x\n")
            reader.stdin.flush()
            assert reader.wait(30) == 0
            assert not procstat.reading_stdin(fd)  # gone: the open file says nothing more
        finally:
            os.close(fd)
            os.close(sleeping)
    finally:
        os.close(stranger)
        os.close(stranger_w)
        for p in (reader, sleeper, other):
            p.kill()
            p.wait(30)
    assert procstat.open_proc(reader.pid, "syscall") == procstat.UNAVAILABLE


async def test_a_process_s_proc_files_are_closed_when_its_life_ends(sup: Supervisor) -> None:
    sup.add(agent("looked"))
    r = await sup.wait_state("looked", State.READY)
    pid = r.pid
    assert pid is not None
    # its stat and syscall, opened by the monitor's first look and kept open
    await _rounds_until(sup, lambda: len(_files_of(pid)) == 2)
    assert {f.rsplit("/", 1)[1] for f in _files_of(pid)} == {"stat", "syscall"}
    os.kill(pid, signal.SIGKILL)
    await sup.wait_event(lambda e: e.name == "looked" and e.state == "terminated", 10)
    assert _files_of(pid) == set()


def _files_of(pid: int) -> set[str]:
    """What this process holds open of /proc/PID/."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd, gone already
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"/proc/{pid}/"):
                held.add(target)
    return held


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
