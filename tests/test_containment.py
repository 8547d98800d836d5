"""Containment in the engine: the subreaper, escaped descendants, process records, and the
reclaim of an earlier incarnation's processes. Real processes, real signals; the `sup`
fixture asserts that no process, zombie or fd outlives each test."""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from corral.supervisor import Limits, LogBatch, ProcessEnded, ProcessStarted, State, Supervisor
from corral.supervisor.caps import wrap_argv
from corral.supervisor.containment import (
    TOKEN_VARIABLE,
    CgroupTree,
    Containment,
    ProcessRecord,
    read_stat,
    read_token,
    token_owner,
)

from .chaos.procs import wait_until
from .conftest import agent
from .test_gateway_stdio import wait_until_async


def is_subreaper() -> bool:
    """prctl(PR_GET_CHILD_SUBREAPER): whether this process is a child subreaper."""
    libc = ctypes.CDLL(None, use_errno=True)
    out = ctypes.c_int(0)
    libc.prctl(37, ctypes.byref(out), 0, 0, 0)
    return out.value != 0


def alive(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.state != "Z"


async def gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait until `pid` has exited and was reaped by whoever is its parent."""
    deadline = time.monotonic() + timeout
    while read_stat(pid) is not None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def escaped_pids(sup: Supervisor) -> asyncio.Queue[int]:
    """The pids misbehave.py's escape modes report on stderr, in order."""
    q: asyncio.Queue[int] = asyncio.Queue()

    def on_log(r: object, stream: str, lines: list[bytes]) -> None:
        for text in lines:
            m = re.match(rb"escaped (\d+)", text)
            if m:
                q.put_nowait(int(m.group(1)))

    sup.stream.subscribe(lambda e: on_log(*e), LogBatch)
    return q


async def start_escaper(sup: Supervisor, name: str, **kw: object) -> tuple[int, int]:
    """An agent whose grandchild double-forked with setsid: (agent pid, escapee pid)."""
    q = escaped_pids(sup)
    sup.add(agent(name, "misbehave.py", env={"MISBEHAVE": "escape"}, **kw))
    r = await sup.wait_state(name, State.READY)
    esc = await asyncio.wait_for(q.get(), 10)
    st = read_stat(esc)
    assert r.pid is not None and st is not None
    # re-parented to us (the subreaper), in a session of its own: no killpg reaches it
    assert st.ppid == os.getpid()
    assert st.sid != r.pid and st.pgid != r.pid
    # what it still has of its agent: the spawn token in its environment (which reads
    # empty while its exec of `sleep`, right after it told its pid, is under way)
    await wait_until_async(lambda: read_token(esc) is not None)
    token = read_token(esc)
    assert token is not None and token_owner(token) == sup.containment.owner
    return r.pid, esc


async def test_a_supervisor_is_a_subreaper_while_open_and_not_after(sup: Supervisor) -> None:
    assert is_subreaper()
    await sup.close()
    assert not is_subreaper()


async def test_a_double_forked_setsid_grandchild_is_gone_after_stop(sup: Supervisor) -> None:
    _, esc = await start_escaper(sup, "esc")
    await sup.stop("esc")
    assert await gone(esc), "the escaped grandchild survived `stop`"


async def test_a_double_forked_setsid_grandchild_is_gone_after_a_sigkill_of_its_agent(
        sup: Supervisor) -> None:
    q = escaped_pids(sup)
    pid, esc = await start_escaper(sup, "esc")
    os.kill(pid, signal.SIGKILL)
    assert await gone(esc), "the escaped grandchild survived its agent's SIGKILL"
    # the restarted incarnation has an escapee of its own, and it is left alone
    r = await sup.wait_state("esc", State.READY)
    assert r.pid != pid and (r.last_exit or "").startswith("killed by SIGKILL")
    assert await asyncio.wait_for(q.get(), 10) == esc
    esc2 = await asyncio.wait_for(q.get(), 10)
    # a pass over /proc now that it exists (the exit's own passes may all have run before
    # it did) and has its token (none while its exec of `sleep` is under way, and a pass
    # then only looks once more later): it is its live agent's, and left alone
    await wait_until_async(lambda: read_token(esc2) is not None)
    assert await sup.containment._sweep_now() == 0
    assert alive(esc2)
    assert [list(t.escapees) for t in sup.containment.live.values()] == [[esc2]]


async def test_a_double_forked_setsid_grandchild_is_gone_after_shutdown() -> None:
    s = Supervisor(heartbeat_interval=0.1, heartbeat_timeout=2.0)
    s.open()
    try:
        _, esc = await start_escaper(s, "esc")
    finally:
        await s.close()
    # close() returns only once the escapee is dead and reaped
    assert read_stat(esc) is None


async def test_an_escapee_that_exits_by_itself_is_reaped_not_left_a_zombie(
        sup: Supervisor) -> None:
    q = escaped_pids(sup)
    sup.add(agent("brief", "misbehave.py",
                  env={"MISBEHAVE": "escape-brief", "ESCAPE_SECONDS": "0.3"}))
    await sup.wait_state("brief", State.READY)
    esc = await asyncio.wait_for(q.get(), 10)
    # its agent is alive and nothing stops: the tick's zombie reaper collects it
    assert await gone(esc), f"escapee {esc} left as {read_stat(esc)}"


async def test_stopping_many_agents_scans_proc_at_most_once_per_tick() -> None:
    s = Supervisor(heartbeat_interval=0.5, heartbeat_timeout=5.0)
    s.open()
    try:
        s.add(agent("many", replicas=8))
        for i in range(8):
            await s.wait_state("many", State.READY, replica=i)
        before = s.containment.sweeps
        t0 = time.monotonic()
        await s.stop("many")
        ticks = (time.monotonic() - t0) / s.tuning.heartbeat_interval
        # 8 exits: one sweep at the first exit, one more per tick after (never one per exit)
        assert s.containment.sweeps - before <= 2 + ticks
    finally:
        await s.close()


async def test_every_process_is_recorded_with_its_start_time_and_forgotten_at_exit(
        sup: Supervisor) -> None:
    started: list[ProcessRecord] = []
    ended: list[ProcessRecord] = []
    sup.stream.subscribe(lambda e: started.append(e.record), ProcessStarted)
    sup.stream.subscribe(lambda e: ended.append(e.record), ProcessEnded)
    sup.add(agent("rec", replicas=2, stop_timeout=3.5))
    for i in range(2):
        await sup.wait_state("rec", State.READY, replica=i)
    assert sorted((r.name, r.replica) for r in started) == [("rec", 0), ("rec", 1)]
    for rec in started:
        st = read_stat(rec.pid)
        assert st is not None
        assert (rec.start_time, rec.pgid, rec.sid) == (st.start_time, rec.pid, rec.pid)
        assert rec.owner == sup.containment.owner
        assert rec.token.startswith(rec.owner + ".")
        assert rec.cgroup is None  # no delegated cgroup in the test suite's own process
        assert rec.stop_timeout == 3.5  # the spec's, recorded for a later reclaim
    await sup.stop("rec")
    assert sorted(r.token for r in ended) == sorted(r.token for r in started)


# -- reclaim: what a crashed incarnation left running -------------------------------------
def incarnation() -> str:
    """A made-up crashed incarnation's id; random, as real ones are: reclaim looks for its
    tokens across the whole machine, where other test runs may be running this very test."""
    return f"12345-{secrets.token_hex(6)}"


def spawn_leftover(token: str, *, ignore_term: bool = False) -> subprocess.Popen[bytes]:
    """A process as a crashed daemon leaves it: its own session, a spawn token."""
    code = ("import signal, time, sys\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
            + "print('up', flush=True)\ntime.sleep(1000)\n")
    p = subprocess.Popen(["python3", "-c", code], start_new_session=True,
                         stdout=subprocess.PIPE, env={**os.environ, TOKEN_VARIABLE: token})
    assert p.stdout is not None
    assert p.stdout.readline() == b"up\n"  # the SIGTERM handler is in place
    return p


def record_of(p: subprocess.Popen[bytes], token: str, **kw: object) -> ProcessRecord:
    st = read_stat(p.pid)
    assert st is not None
    fields: dict[str, object] = {
        "token": token, "kind": "agent", "name": "old", "replica": 0, "pid": p.pid,
        "start_time": st.start_time, "pgid": st.pgid, "sid": st.sid, "stop_timeout": 0.5}
    fields.update(kw)
    return ProcessRecord(**fields)  # type: ignore[arg-type]


async def test_reclaim_stops_recorded_processes_by_sigterm_then_sigkill() -> None:
    old = incarnation()
    polite = spawn_leftover(f"{old}.1")
    stubborn = spawn_leftover(f"{old}.2", ignore_term=True)
    try:
        c = Containment("off")
        report = await c.reclaim([record_of(polite, f"{old}.1"),
                                  record_of(stubborn, f"{old}.2")], [old])
        assert (report.found, report.terminated, report.killed) == (2, 1, 1)
        assert polite.wait(5) == -signal.SIGTERM
        assert stubborn.wait(5) == -signal.SIGKILL
    finally:
        for p in (polite, stubborn):
            p.kill()
            p.wait()


async def test_reclaim_finds_an_unrecorded_process_by_its_spawn_token() -> None:
    old = incarnation()
    p = spawn_leftover(f"{old}.7")  # spawned just before the crash: no record yet
    try:
        report = await Containment("off").reclaim([], [old])
        assert report.found == 1
        assert p.wait(5) == -signal.SIGTERM
    finally:
        p.kill()
        p.wait()


async def test_reclaim_never_signals_a_process_that_took_over_a_recorded_pid() -> None:
    # a record whose pid now belongs to a process that started at another time
    old = incarnation()
    bystander = spawn_leftover(f"{incarnation()}.1")
    try:
        rec = record_of(bystander, f"{old}.1")
        rec = ProcessRecord(**{**{f: getattr(rec, f) for f in rec.__struct_fields__},
                               "start_time": rec.start_time - 1})
        report = await Containment("off").reclaim([rec], [old])
        assert report.found == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_no_delegation_is_said_once_with_the_reason(mode: str) -> None:
    c = Containment(mode)  # type: ignore[arg-type]
    c.open()
    try:
        assert c.tree is None
        assert c.notice.startswith("cgroups: ")
        assert c.notice.endswith("containment by subreaper and records")
    finally:
        asyncio.run(c.close())


def test_the_spawn_gate_holds_the_prologue_until_released_and_consumes_only_its_line(
        ) -> None:
    argv = wrap_argv(["cat"], Limits(), gate=True)
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[2].startswith("read _ || exit 125; ") and argv[2].endswith('exec "$@"')
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdin is not None

        def blocked_reading_stdin() -> bool:
            # /proc/PID/syscall: "0 0x0 ..." is read(0, ...) on x86-64
            with open(f"/proc/{p.pid}/syscall") as f:
                return f.read().split()[:2] == ["0", "0x0"]

        if platform.machine() == "x86_64":
            wait_until(blocked_reading_stdin, 10, "the prologue to wait at the gate")
        with open(f"/proc/{p.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0] == b"/bin/sh"  # not exec'd: held at the gate
        out, _ = p.communicate(b"\n" + b'{"jsonrpc": "2.0"}\n', timeout=10)
        assert out == b'{"jsonrpc": "2.0"}\n'  # the protocol after the gate, intact
    finally:
        p.kill()
        p.wait()


def test_an_eof_at_the_spawn_gate_ends_the_prologue_with_status_125() -> None:
    r = subprocess.run(wrap_argv(["true"], Limits(), gate=True), input=b"", timeout=10)
    assert r.returncode == 125


async def test_a_process_that_cannot_be_placed_in_its_cgroup_is_a_spawn_failure(
        sup: Supervisor, tmp_path: Path) -> None:
    sup.containment.tree = CgroupTree(str(tmp_path))  # a directory that is no cgroup
    sup.add(agent("homeless", restart="never"))
    r = await sup.wait_state("homeless", State.TERMINATED)
    assert r.last_exit == (
        f"spawn failed: [Errno 2] cannot place the process in cgroup "
        f"{tmp_path}/agent-homeless-0: No such file or directory")
    # nothing tracked, no plain file written where cgroup.procs would be
    assert sup.containment.live == {}
    assert not (tmp_path / "agent-homeless-0" / "cgroup.procs").exists()
    # nothing pending: a start again is given the same cgroup, not one beside a pending one
    sup.start("homeless")
    r = await sup.wait_state("homeless", State.TERMINATED)
    assert r.last_exit == (
        f"spawn failed: [Errno 2] cannot place the process in cgroup "
        f"{tmp_path}/agent-homeless-0: No such file or directory")


def test_limits_become_the_cgroup_v2_values_of_the_enabled_controllers(tmp_path: Path) -> None:
    # the kernel's files stand as plain files here (no controllers on this machine: the
    # real write is tests/test_cgroups.py); what is checked is the values and units
    tree = CgroupTree(str(tmp_path))
    tree.controllers = {"memory", "pids", "cpu"}
    for knob in ("memory.max", "pids.max", "cpu.max"):
        (tmp_path / knob).write_text("")
    tree.prepare(str(tmp_path), Limits(memory_mb=512, processes=64, cpu_percent=150))
    assert (tmp_path / "memory.max").read_text() == str(512 * 1024 * 1024)
    assert (tmp_path / "pids.max").read_text() == "64"
    assert (tmp_path / "cpu.max").read_text() == "150000 100000"  # 1.5 CPUs
    tree.prepare(str(tmp_path), Limits())  # no caps: the kernel's "max"
    assert [(tmp_path / k).read_text() for k in ("memory.max", "pids.max", "cpu.max")] == [
        "max", "max", "max 100000"]
    tree.controllers = {"pids"}  # a controller not enabled is not written
    tree.prepare(str(tmp_path), Limits(memory_mb=1, processes=2))
    assert (tmp_path / "memory.max").read_text() == "max"
    assert (tmp_path / "pids.max").read_text() == "2"


async def test_an_orphan_without_a_token_is_judged_twice_before_it_is_killed(
        sup: Supervisor) -> None:
    """A process whose exec is under way reads an empty environment (no token): one pass
    over /proc leaves an unknown token-less child alone, the next kills it."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
    stray = subprocess.Popen(["sleep", "1000"], env=env)
    try:
        assert read_token(stray.pid) is None
        assert await sup.containment._sweep_now() == 0
        assert stray.poll() is None
        assert await sup.containment._sweep_now() == 1
        assert stray.wait(timeout=10) == -signal.SIGKILL
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


def _zombie(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.state == "Z"


def test_a_spared_child_is_left_to_its_owner_and_another_is_reaped() -> None:
    """The embedding program's own children, given as `spared`, are not reaped by the
    tick (their owner's wait learns their status); a child nobody claims is."""
    mine = subprocess.Popen(["sh", "-c", "exit 3"])
    c = Containment("off", spared={mine.pid})
    try:
        wait_until(lambda: _zombie(mine.pid), 10, "the spared child exited")
        assert c.reap_zombies() == 0
        assert _zombie(mine.pid)
    finally:
        assert mine.wait(10) == 3  # its status, which a reap by the tick would have taken
    other = subprocess.Popen(["sh", "-c", "exit 3"])
    wait_until(lambda: _zombie(other.pid), 10, "the other child exited")
    assert c.reap_zombies() == 1
    assert read_stat(other.pid) is None
    other.wait(10)  # already reaped: Popen learns nothing more of it
