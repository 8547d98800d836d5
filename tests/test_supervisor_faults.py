"""Every fault of the supervisor-core issue ends in its documented state with its reason.

Real subprocesses, real signals, real rlimits; the `sup` fixture asserts that no fd,
process or zombie outlives each test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError
from corral.supervisor import Limits, LogBatch, State, Supervisor, Transition
from corral.supervisor.stream import Roster

from .conftest import PY, ROOT, agent


def drain(q: asyncio.Queue[Transition], name: str) -> list[Transition]:
    out = []
    while not q.empty():
        e = q.get_nowait()
        if e.name == name:
            out.append(e)
    return out


async def run_task(sup: Supervisor, name: str, task: dict[str, object]) -> object:
    r = sup.agent(name).replicas[0]
    assert r.peer is not None
    return await r.peer.request("task/run", {"task_id": "t", "input": task})


async def test_exits_at_once_backs_off_then_fails_and_stays_down(sup: Supervisor) -> None:
    q = sup.subscribe()
    t0 = time.monotonic()
    sup.add(agent("storm", "misbehave.py", env={"MISBEHAVE": "exit"}, max_restarts=3,
                  backoff_initial=0.1, backoff_max=1.0))
    r = await sup.wait_state("storm", State.FAILED, timeout=20)
    elapsed = time.monotonic() - t0
    assert r.reason == "too many restarts (3 within 60 s); last exit: exited with status 3"
    assert r.last_exit == "exited with status 3"
    assert r.restarts == 3
    states = [e.state for e in drain(q, "storm")]
    assert states == ["starting", "terminated", "backoff"] * 3 + [
        "starting", "terminated", "failed"]
    # backoff doubles with jitter in [d/2, d]: 0.05 + 0.1 + 0.2 at the very least
    assert elapsed >= 0.35, "restarted in a busy loop"
    assert r.executor.timer is None  # nothing will start it again by itself
    stats = sup.runtime_stats()
    assert (stats.spawned, stats.restarts, stats.failures, stats.active) == (4, 3, 1, 0)
    # a start by hand forgives the past
    sup.start("storm")
    assert r.state == State.STARTING and r.machine.policy.recent_restarts == 0


async def test_never_answers_initialize_hits_start_timeout(sup: Supervisor) -> None:
    q = sup.subscribe()
    sup.add(agent("mute", "misbehave.py", env={"MISBEHAVE": "no-init"}, start_timeout=0.5,
                  restart="never"))
    r = await sup.wait_state("mute", State.TERMINATED, timeout=10)
    # and says what runs a program that is no worker (the first thing a supervisord or
    # PM2 user meets: issue 36)
    reason = ("start timeout: no answer to initialize within 0.5 s (not a corral worker? "
              'any other program: protocol = "none")')
    assert [(e.state, e.reason) for e in drain(q, "mute")] == [
        ("starting", "started"), ("shutting_down", reason), ("terminated", reason)]
    assert r.last_exit == reason
    assert sup.status("mute")[0].pid is None


async def test_garbage_on_stdout_is_counted_and_logged_not_fatal(sup: Supervisor) -> None:
    logs: list[str] = []
    sup.stream.subscribe(
        lambda e: logs.extend(f"{e.stream}: {t.decode()}" for t in e.lines), LogBatch)
    sup.add(agent("noisy", "misbehave.py", env={"MISBEHAVE": "garbage"}))
    r = await sup.wait_state("noisy", State.READY)
    assert await run_task(sup, "noisy", {"do": "echo", "x": 1}) == {
        "output": {"do": "echo", "x": 1}}
    assert r.garbage_lines == 4
    discarded = [line for line in logs if "not JSON-RPC" in line]
    assert len(discarded) == 4
    assert "'this is not json'" in discarded[0]
    assert 'wrong "jsonrpc" member' in discarded[1]


async def test_100mb_line_is_discarded_without_buffering_it(sup: Supervisor) -> None:
    logs: list[str] = []
    sup.stream.subscribe(lambda e: logs.extend(t.decode() for t in e.lines), LogBatch)
    rss_before = psutil.Process().memory_info().rss
    sup.add(agent("huge", "misbehave.py", env={"MISBEHAVE": "hugeline"}))
    r = await sup.wait_state("huge", State.READY, timeout=20)
    assert r.garbage_lines == 1
    assert [t for t in logs if t.startswith("discarded a")] == [
        f"discarded a {100 * 1024 * 1024}-byte line on stdout (limit {16 * 1024 * 1024} bytes)"]
    assert psutil.Process().memory_info().rss - rss_before < 64 * 1024 * 1024
    assert await run_task(sup, "huge", {"do": "echo"}) == {"output": {"do": "echo"}}


# a worker whose line over the limit starts with a string id that is not UTF-8, then
# answers its task; its other tasks' answers come after
HOSTILE_ID_WORKER = """
import json, os, sys
for text in sys.stdin:
    msg = json.loads(text)
    answer = {"jsonrpc": "2.0", "id": msg.get("id"), "result": {}}
    if msg.get("method") == "task/run":
        answer["result"] = {"output": msg["params"]["input"]}
        if msg["params"]["input"].get("hostile"):
            os.write(1, b'{"jsonrpc":"2.0","id":"\\xff","result":"' + b"x" * (17 << 20)
                     + b'"}\\n')
    if "method" in msg and "id" in msg:
        os.write(1, (json.dumps(answer) + "\\n").encode())
"""


async def test_a_line_over_the_limit_whose_id_is_not_utf8_is_discarded(
        sup: Supervisor, caplog: pytest.LogCaptureFixture) -> None:
    """The id at the start of a discarded line is looked at for the request it answers:
    one that is no string of UTF-8 answers none (decoding it raised, which ended the
    reading of the worker's stdout: its tasks lost)."""
    logs: list[str] = []
    sup.stream.subscribe(lambda e: logs.extend(t.decode() for t in e.lines), LogBatch)
    sup.add(agent("hostile", command=[PY, "-c", HOSTILE_ID_WORKER],
                  max_concurrent_tasks=3))
    r = await sup.wait_state("hostile", State.READY)
    pid = r.pid
    with caplog.at_level(logging.WARNING, "corral"):
        tasks = [sup.tasks.submit("hostile", {"n": 0, "hostile": True}),
                 *(sup.tasks.submit("hostile", {"n": n}) for n in (1, 2))]
        for task in tasks:
            await asyncio.wait_for(asyncio.shield(task.done), 20)
        later = sup.tasks.submit("hostile", {"n": 3})  # its stdout is still read
        await asyncio.wait_for(asyncio.shield(later.done), 20)
    assert [(t.status, t.error) for t in [*tasks, later]] == [("succeeded", None)] * 4
    assert [t.result(decode=True).output["n"] for t in [*tasks, later]] == [0, 1, 2, 3]
    assert [[a.pid for a in t.attempts] for t in [*tasks, later]] == [[pid]] * 4
    assert (r.pid, r.restarts, r.garbage_lines) == (pid, 0, 1)
    size = len(b'{"jsonrpc":"2.0","id":"\xff","result":""}') + (17 << 20)
    assert [t for t in logs if t.startswith("discarded a")] == [
        f"discarded a {size}-byte line on stdout (limit {16 * 1024 * 1024} bytes)"]
    # (a loaded host's stall of this process's loop is said too, and is not the worker's)
    assert [rec.getMessage() for rec in caplog.records
            if not rec.getMessage().startswith("event loop stalled for ")] == []


async def test_stopped_worker_is_hung_killed_and_restarted(sup: Supervisor) -> None:
    q = sup.subscribe()
    sup.add(agent("frozen"))
    r = await sup.wait_state("frozen", State.READY)
    old_pid = r.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGSTOP)
    await sup.wait_state("frozen", State.BACKOFF, timeout=10)
    await sup.wait_state("frozen", State.READY, timeout=10)
    assert r.pid != old_pid and r.restarts == 1
    assert not psutil.pid_exists(old_pid)
    hung = "hung: no heartbeat for 2 s"
    events = [(e.state, e.reason) for e in drain(q, "frozen")]
    assert events[2:4] == [("shutting_down", hung), ("terminated", hung)]
    assert events[4][0] == "backoff"
    assert re.fullmatch(r"restarting in 0\.\d\d s after: hung: no heartbeat for 2 s", events[4][1])
    assert [s for s, _ in events[5:]] == ["starting", "ready"]
    assert r.last_exit == hung


async def test_a_worker_whose_main_thread_stops_reading_is_hung(sup: Supervisor) -> None:
    """Asleep, but not reading its stdin: it is pinged, the ping goes unanswered, and it is
    hung after heartbeat_timeout, as a stopped process is."""
    deaf = ("import json, sys, time\n"
            "rid = json.loads(sys.stdin.buffer.readline())['id']\n"
            "print(json.dumps({'jsonrpc': '2.0', 'id': rid, 'result': {}}), flush=True)\n"
            "time.sleep(3600)\n")
    sup.add(agent("deaf", command=[PY, "-c", deaf], backoff_initial=30.0,
                  backoff_max=30.0))
    r = await sup.wait_state("deaf", State.READY)
    pings = sup.heartbeat_work.pings
    await sup.wait_state("deaf", State.BACKOFF, timeout=15)
    assert r.last_exit == "hung: no heartbeat for 2 s"
    assert sup.heartbeat_work.pings > pings


async def test_a_slow_reader_is_waited_for_not_taken_for_hung(sup: Supervisor) -> None:
    # it floods corral with requests but reads the answers slowly for its first MB: past
    # the budget its requests wait, for longer than its heartbeat timeout, and as long as
    # it reads some of what is waiting it is not hung. Its reads are slow enough that a
    # loaded host's corral, slow to answer, still fills the budget before they speed up
    # (at a faster pace the reader kept up and the backlog never reached it)
    logs: list[bytes] = []
    sup.stream.subscribe(lambda e: logs.extend(e.lines), LogBatch)
    n, topic = 2600, "t" * 1000  # answers of ~1 KB: 2.6 MB in all, past pipe and budget
    sup.add(agent("slowpoke", command=[PY, str(ROOT / "tests" / "flood_worker.py")],
                  heartbeat_timeout=1.0, env={
                      "FLOOD_READS": "1", "FLOOD_READ": "16384,0.1,1000000",
                      "FLOOD_REQUESTS": str(n), "FLOOD_PARAMS": f'{{"topic":"{topic}"}}'}))
    r = await sup.wait_state("slowpoke", State.READY)
    proc = r.process
    assert proc is not None
    was_full = False
    async with asyncio.timeout(30):
        while b"all answered" not in logs:
            was_full = was_full or proc.stdin_full
            assert r.restarts == 0 and r.process is proc, r.last_exit
            await asyncio.sleep(0.01)
    assert was_full and r.restarts == 0 and r.state == State.READY


async def test_ignores_sigterm_is_killed_after_grace(sup: Supervisor) -> None:
    sup.add(agent("stubborn", "misbehave.py", env={"MISBEHAVE": "stubborn"},
                  stop_timeout=0.3))
    r = await sup.wait_state("stubborn", State.READY)
    pid = r.pid
    t0 = time.monotonic()
    await sup.stop("stubborn")
    assert time.monotonic() - t0 >= 0.6  # EOF + shutdown, then SIGTERM, each 0.3 s
    assert r.state == State.TERMINATED
    assert r.reason == "stopped (SIGKILL after ignoring SIGTERM for 0.3 s)"
    assert pid is not None and not psutil.pid_exists(pid)


async def test_memory_cap_is_named(sup: Supervisor) -> None:
    sup.add(agent("hog", "misbehave.py", limits=Limits(memory_mb=200)))
    r = await sup.wait_state("hog", State.READY)
    with pytest.raises(RpcError) as err:
        await run_task(sup, "hog", {"do": "leak"})
    # the SDK does not answer past a cap: the task is lost with the worker, cap named
    assert err.value.message == "worker exited: memory limit (RLIMIT_AS 200 MiB)"
    # (the loss is read once the exit is: the backoff after it may be over by then, so
    # what is waited for is the next process serving)
    await sup.wait_state("hog", State.READY)
    assert (r.restarts, r.last_exit) == (1, "memory limit (RLIMIT_AS 200 MiB)")
    # restarted for its cap, and counted so, not as a crash (README: crash, hang, cap)
    assert sup.runtime_stats().restarts_by_cause == {"cap": 1}
    # a crash that names no cap is a crash, caps in force or not
    with pytest.raises(RpcError):
        await run_task(sup, "hog", {"do": "crash"})
    await sup.wait_state("hog", State.READY)
    assert r.restarts == 2
    assert sup.runtime_stats().restarts_by_cause == {"cap": 1, "crash": 1}


async def test_open_files_cap_is_named(sup: Supervisor) -> None:
    sup.add(agent("fds", "misbehave.py", limits=Limits(open_files=64), restart="never"))
    r = await sup.wait_state("fds", State.READY)
    with pytest.raises(RpcError):
        await run_task(sup, "fds", {"do": "files"})
    await sup.wait_state("fds", State.TERMINATED)
    assert r.last_exit == "open files limit (RLIMIT_NOFILE 64)"


async def test_cpu_time_cap_is_named(sup: Supervisor) -> None:
    sup.add(agent("spin", "misbehave.py", limits=Limits(cpu_seconds=1), restart="never"))
    r = await sup.wait_state("spin", State.READY)
    with pytest.raises(RpcError) as err:
        await run_task(sup, "spin", {"do": "spin"})
    assert err.value.code == jsonrpc.PEER_CLOSED
    assert err.value.message == "worker exited: CPU time limit (RLIMIT_CPU 1 s)"
    await sup.wait_state("spin", State.TERMINATED)
    assert r.last_exit == "CPU time limit (RLIMIT_CPU 1 s)"


async def test_file_size_cap_is_named(sup: Supervisor, tmp_path: Path) -> None:
    sup.add(agent("big", "misbehave.py", limits=Limits(file_size_mb=1), restart="never"))
    r = await sup.wait_state("big", State.READY)
    with pytest.raises(RpcError):
        await run_task(sup, "big", {"do": "write", "path": str(tmp_path / "f"), "mb": 4})
    await sup.wait_state("big", State.TERMINATED)
    assert r.last_exit == "file size limit (RLIMIT_FSIZE 1 MiB)"
    assert (tmp_path / "f").stat().st_size <= 1024 * 1024


async def test_user_needs_root(sup: Supervisor) -> None:
    if os.geteuid() == 0:
        sup.add(agent("who", user="no-such-user-here", restart="never"))
        r = await sup.wait_state("who", State.TERMINATED)
        assert r.last_exit == "spawn failed: user: no such user: no-such-user-here"
    else:  # pragma: no cover - the suite runs as root in CI
        sup.add(agent("who", user="nobody", restart="never"))
        r = await sup.wait_state("who", State.TERMINATED)
        assert r.last_exit == ("spawn failed: user/group: dropping privileges needs the "
                               "supervisor to run as root")


async def test_grandchild_dies_with_its_agent(sup: Supervisor) -> None:
    found: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_log(r: object, stream: str, lines: list[bytes]) -> None:
        for text in lines:
            m = re.match(rb"grandchild (\d+)", text)
            if m and not found.done():
                found.set_result(int(m.group(1)))

    sup.stream.subscribe(lambda e: on_log(*e), LogBatch)
    sup.add(agent("parent", "misbehave.py", env={"MISBEHAVE": "grandchild"}))
    await sup.wait_state("parent", State.READY)
    gc = await asyncio.wait_for(found, 5)
    assert psutil.pid_exists(gc)
    await sup.stop("parent")
    if psutil.pid_exists(gc):
        _, alive = psutil.wait_procs([psutil.Process(gc)], timeout=5)
        assert not alive


async def test_crash_mid_task_fails_the_request_and_restarts(sup: Supervisor) -> None:
    logs: list[str] = []
    sup.stream.subscribe(lambda e: logs.extend(t.decode() for t in e.lines), LogBatch)
    sup.add(agent("crashy", "misbehave.py"))
    r = await sup.wait_state("crashy", State.READY)
    with pytest.raises(RpcError) as err:
        await run_task(sup, "crashy", {"do": "crash"})
    assert err.value.code == jsonrpc.PEER_CLOSED
    assert err.value.message == "worker exited: exited with status 3: crashing on request"
    # the last line before the crash made it
    assert "crashing on request" in logs
    await sup.wait_state("crashy", State.READY)
    assert r.restarts == 1


async def test_command_not_found(sup: Supervisor) -> None:
    # without caps the agent is exec'd directly, and the spawn itself fails
    sup.add(agent("ghost", command=["/nonexistent/agent"], restart="never"))
    r = await sup.wait_state("ghost", State.TERMINATED)
    if r.last_exit and r.last_exit.startswith("spawn failed"):
        assert r.last_exit == ("spawn failed: [Errno 2] No such file or directory: "
                               "'/nonexistent/agent'")
    else:  # the suite's own core limit was not 0, so a prologue ran
        assert r.last_exit == "command not found (status 127): /nonexistent/agent"
    # with caps a shell prologue execs it, and the shell reports it
    sup.add(agent("ghost2", command=["/nonexistent/agent"], restart="never",
                  limits=Limits(open_files=100)))
    r = await sup.wait_state("ghost2", State.TERMINATED)
    assert r.last_exit == "command not found (status 127): /nonexistent/agent"


async def test_bad_cwd_is_a_spawn_failure(sup: Supervisor) -> None:
    sup.add(agent("lost", cwd="/nonexistent/dir", restart="never"))
    r = await sup.wait_state("lost", State.TERMINATED)
    assert r.last_exit is not None
    assert r.last_exit.startswith("spawn failed: [Errno 2] No such file or directory")


async def test_a_switch_to_a_new_release_tells_of_the_new_processes_in_their_places(
        sup: Supervisor) -> None:
    """Whoever keeps an agent's places from `Roster` (daemon.fleetwatch) learns that the new
    processes hold them, as after a rollout's swap; else the old ones' stops, which come
    after, would read as the agent's places going down."""
    rosters: list[list[int]] = []
    sup.stream.subscribe(
        lambda e: rosters.append([id(r) for r in sup.agents[e.agent].replicas]), Roster)
    a = sup.add(agent("sw", replicas=2))
    await sup.wait_for(lambda: all(r.serving for r in a.replicas), 30)
    old = [id(r) for r in a.replicas]
    assert rosters == [old]
    await a.switch(agent("sw", replicas=2))
    new = [id(r) for r in a.replicas]
    assert set(new).isdisjoint(old) and all(r.serving for r in a.replicas)
    assert rosters == [old, new]
