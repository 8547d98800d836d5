"""Pause and resume (corral pause|resume NAME[#N]) against real workers: the same process
and its memory kept, no heartbeat judgement while paused, tasks held in the queue, stops
and crashes of a paused replica, the daemon's shutdown, the CLI and HTTP, and the
refusals, word for word."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError
from corral.supervisor import NoSuchAgent, State, Supervisor, Transition, containment
from corral.supervisor.containment import cgroup_pids, read_stat
from corral.taskoptions import TaskOptions

from .conftest import ROOT, agent
from .daemon_harness import (
    PY,
    Daemon,
    corral_popen,
    free_port,
    problem,
    running_daemon,
    shared_tmpdir,
)
from .test_cgroups import delegated  # noqa: F401  (the fixture)
from .test_daemon_cli import wait_until
from .test_ui import chromium_page, needs_chromium

WORKER = Path(__file__).with_name("pause_worker.py")


def worker(name: str, mb: int = 32, **kw: Any) -> Any:
    env = {"PYTHONPATH": str(ROOT), "PAUSE_MB": str(mb)}
    return agent(name, command=[PY, str(WORKER)], env=env, **kw)


def proc_state(pid: int) -> str | None:
    st = read_stat(pid)
    return st.state if st is not None else None


def transitions(q: asyncio.Queue[Transition], name: str) -> list[tuple[str, str, str | None]]:
    out = []
    while not q.empty():
        e = q.get_nowait()
        if e.name == name:
            out.append((e.previous.value, e.state.value, e.cause.value if e.cause else None))
    return out


async def quiet_for(sup: Supervisor, name: str, seconds: float) -> None:
    """No transition of `name` for `seconds` (a wait for one that must not come), with the
    heartbeat visiting all along."""
    rounds = sup.heartbeat_work.rounds
    with pytest.raises(TimeoutError):
        e = await sup.wait_event(lambda e: e.name == name, seconds)
        raise AssertionError(f"unexpected transition: {e}")
    assert sup.heartbeat_work.rounds >= rounds + int(seconds / sup.tuning.heartbeat_interval) // 2


async def test_pause_keeps_the_process_and_its_memory_and_counts_no_restart(
        sup: Supervisor) -> None:
    q = sup.subscribe()
    sup.add(worker("w", mb=64))
    r = await sup.wait_state("w", State.READY)
    before = (await sup.tasks.run("w", {"do": "info"})).output
    assert before["pid"] == r.pid and before["rss_kb"] > 64 * 1024
    paused = await sup.pause("w", reason="paused by test")
    assert paused == [r] and r.state == State.PAUSED and r.reason == "paused by test"
    assert proc_state(before["pid"]) == "T"  # stopped, not asleep
    st = r.status()
    assert (st.state, st.pid, st.restarts) == (State.PAUSED, before["pid"], 0)
    # a second pause changes nothing
    assert await sup.pause("w", 0) == [r] and r.state == State.PAUSED
    assert sup.resume("w", reason="resumed by test") == [r]
    assert r.state == State.IDLE and proc_state(before["pid"]) in ("S", "R")
    after = (await sup.tasks.run("w", {"do": "info"})).output
    assert after["pid"] == before["pid"] and after["ballast"] == before["ballast"]
    assert after["rss_kb"] >= before["rss_kb"] * 0.9
    assert (r.restarts, sup.stats.restarts, sup.stats.spawned) == (0, 0, 1)
    assert transitions(q, "w")[-6:] == [
        ("ready", "busy", "task"), ("busy", "idle", "done"),
        ("idle", "paused", "pause"), ("paused", "idle", "resume"),
        ("idle", "busy", "task"), ("busy", "idle", "done")]


async def test_a_warm_worker_forked_by_its_zygote_pauses_the_same(sup: Supervisor) -> None:
    # its parent is the zygote, not corral: the stop is seen in /proc
    sup.add(worker("z", mb=8, warm=True))
    r = await sup.wait_state("z", State.READY)
    pid = r.pid
    assert pid is not None and read_stat(pid).ppid != os.getpid()  # type: ignore[union-attr]
    await sup.pause("z")
    assert proc_state(pid) == "T"
    sup.resume("z")
    assert (await sup.tasks.run("z", {"do": "info"})).output["pid"] == pid
    assert (r.restarts, sup.stats.cold_fallbacks) == (0, 0)


async def test_no_heartbeat_kill_while_paused_past_the_timeout(sup: Supervisor) -> None:
    sup.add(worker("h", mb=1, heartbeat_timeout=0.5))
    r = await sup.wait_state("h", State.READY)
    pid = r.pid
    await sup.pause("h")
    pings = sup.heartbeat_work.pings
    await quiet_for(sup, "h", 2.0)  # four heartbeat timeouts
    assert r.state == State.PAUSED and sup.heartbeat_work.pings == pings  # none sent
    sup.resume("h")
    # the silence while paused is not held against it: no hang once it runs again
    await quiet_for(sup, "h", 1.5)
    assert (r.state, r.pid, r.restarts) == (State.READY, pid, 0)
    assert (await sup.tasks.run("h", {"do": "info"})).output["pid"] == pid


async def test_tasks_wait_in_the_queue_while_paused_and_run_after_resume(
        sup: Supervisor) -> None:
    sup.add(worker("q", mb=1, replicas=2))
    for i in range(2):
        await sup.wait_state("q", State.READY, replica=i)
    await sup.pause("q", 1)
    pid0 = sup.agent("q").replicas[0].pid
    # one replica paused: tasks go to the other only
    outs = await asyncio.gather(*(sup.tasks.run("q", {"do": "info"}) for _ in range(4)))
    assert {o.output["pid"] for o in outs} == {pid0}
    await sup.pause("q")
    assert [r.state for r in sup.agent("q").replicas] == [State.PAUSED] * 2
    # every replica paused: the agent still takes tasks, and they wait
    tasks = [sup.tasks.submit("q", {"do": "info"}) for _ in range(5)]
    assert {t.status.value for t in tasks} == {"queued"}
    assert sup.tasks.queue.depth("q") == 5
    await quiet_for(sup, "q", 0.5)
    assert {t.status.value for t in tasks} == {"queued"}
    sup.resume("q")
    async with asyncio.timeout(20):
        held = [await sup.tasks.info(t.id, wait=True) for t in tasks]
    assert {h.status for h in held} == {"succeeded"}
    assert [r.restarts for r in sup.agent("q").replicas] == [0, 0]


async def test_a_task_running_at_the_pause_finishes_after_the_resume(
        sup: Supervisor, tmp_path: Path) -> None:
    q = sup.subscribe()
    sup.add(worker("b", mb=1))
    r = await sup.wait_state("b", State.READY)
    flag = tmp_path / "go"
    task = sup.tasks.submit("b", {"do": "await", "path": str(flag)}, TaskOptions(timeout=60))
    await sup.wait_state("b", State.BUSY)
    await sup.pause("b")
    flag.touch()  # it cannot see it: it is stopped
    await quiet_for(sup, "b", 0.5)
    assert task.status.value == "running" and r.state == State.PAUSED
    sup.resume("b")
    assert r.state == State.BUSY  # back to where it was
    await sup.wait_state("b", State.IDLE)
    assert task.status.value == "succeeded"
    assert transitions(q, "b")[-4:] == [
        ("ready", "busy", "task"), ("busy", "paused", "pause"),
        ("paused", "busy", "resume"), ("busy", "idle", "done")]


async def test_a_deadline_passing_while_paused_times_out_on_time_and_kills_nothing(
        sup: Supervisor, tmp_path: Path) -> None:
    # (a grace within the quiet second below, so that one run while it is stopped would
    # kill it there; past the thaw, the worker's read of the cancel on a loaded host)
    sup.add(worker("d", mb=1, cancel_grace=0.6))
    r = await sup.wait_state("d", State.READY)
    pid = r.pid
    task = sup.tasks.submit("d", {"do": "await", "path": str(tmp_path / "never")},
                            TaskOptions(timeout=0.5))
    await sup.wait_state("d", State.BUSY)
    await sup.pause("d")
    t0 = time.monotonic()
    async with asyncio.timeout(5):
        info = await sup.tasks.info(task.id, wait=True)
    assert info.status == "timed_out" and time.monotonic() - t0 < 2.0
    # the cancel cannot be read while it is stopped: no hang kill for that
    await quiet_for(sup, "d", 1.0)
    assert r.state == State.PAUSED
    sup.resume("d")
    await sup.wait_state("d", State.IDLE)  # it read the cancel and stopped the task
    assert (r.pid, r.restarts) == (pid, 0)


async def test_a_stop_of_a_paused_replica_thaws_it_and_it_exits_as_asked(
        sup: Supervisor) -> None:
    sup.add(worker("s", mb=1, stop_timeout=10.0))
    r = await sup.wait_state("s", State.READY)
    pid = r.pid
    await sup.pause("s")
    t0 = time.monotonic()
    await sup.stop("s")
    # asked and gone: no SIGTERM after the grace, let alone SIGKILL
    assert (r.state, r.last_exit) == (State.TERMINATED, "stopped")
    assert time.monotonic() - t0 < 5.0 and proc_state(pid) is None
    sup.start("s")
    await sup.wait_state("s", State.READY)


async def test_a_crash_while_paused_is_a_crash_and_the_restart_runs(sup: Supervisor) -> None:
    q = sup.subscribe()
    sup.add(worker("c", mb=1))
    r = await sup.wait_state("c", State.READY)
    await sup.pause("c")
    assert r.pid is not None
    os.kill(r.pid, signal.SIGKILL)
    await sup.wait_for(lambda: r.state == State.READY and r.restarts == 1, 20)
    assert ("paused", "terminated", "crash") in transitions(q, "c")
    assert proc_state(r.pid) in ("S", "R")  # the new process is not born stopped
    assert (await sup.tasks.run("c", {"do": "info"})).output["pid"] == r.pid


async def test_refusals_say_why_and_change_nothing(sup: Supervisor) -> None:
    sup.add(worker("ok", mb=1))
    sup.add(agent("slowstart", "misbehave.py", env={"MISBEHAVE": "no-init"}))
    sup.add(agent("dead", "misbehave.py", env={"MISBEHAVE": "exit"}, backoff_initial=60.0,
                  backoff_max=60.0))
    r = await sup.wait_state("ok", State.READY)
    await sup.wait_state("slowstart", State.STARTING)
    await sup.wait_state("dead", State.BACKOFF)

    async def refused(coro: Any) -> RpcError:
        with pytest.raises(RpcError) as info:
            await coro
        return info.value

    async def resumed(name: str, index: int | None = None) -> Any:
        return sup.resume(name, index)

    e = await refused(sup.pause("okk"))
    assert isinstance(e, NoSuchAgent)
    assert (e.code, e.message) == (jsonrpc.NOT_FOUND, "no such agent: okk (did you mean `ok`?)")
    e = await refused(sup.pause("ok", 3))
    assert (e.code, e.message) == (jsonrpc.NOT_FOUND, "no such replica: ok#3 (ok has 1 replica)")
    e = await refused(sup.pause("dead"))
    assert (e.code, e.message) == (
        jsonrpc.CONFLICT, "replica dead#0 is backoff: only a running replica can be paused")
    e = await refused(sup.pause("slowstart", 0))
    assert e.message == "replica slowstart#0 is starting: only a running replica can be paused"
    e = await refused(resumed("ok", 0))
    assert (e.code, e.message) == (
        jsonrpc.CONFLICT, "replica ok#0 is ready: only a paused replica can be resumed")
    e = await refused(resumed("ok"))
    assert e.message == "agent ok has no paused replica"
    e = await refused(resumed("nope"))
    assert e.message == "no such agent: nope (agents: dead, ok, slowstart)"
    assert r.state == State.READY and r.restarts == 0


# -- the daemon: CLI, HTTP, audit, watch, shutdown ------------------------------------------
def agents_toml() -> str:
    return textwrap.dedent(f"""
        [agents.w]
        command = ["{PY}", "{WORKER}"]
        env = {{ PYTHONPATH = "{ROOT}", PAUSE_MB = "1" }}
        replicas = 2
        stop_timeout = 10.0
    """)


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    port = free_port()
    with running_daemon(shared_tmpdir(), agents_toml(),
                        extra=f'[http]\nlisten = "127.0.0.1:{port}"\n') as d:
        d.port = port  # type: ignore[attr-defined]
        wait_until(lambda: all(s["state"] == "ready" for s in d.status().values()),
                   what="both replicas ready")
        yield d


def test_cli_pause_and_resume_status_watch_and_audit(daemon: Daemon) -> None:
    d, me = daemon, f"uid {os.geteuid()}"
    pids = {k: s["pid"] for k, s in d.status().items()}
    out = d.cli("pause", "w#1")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"w#1: paused (pid {pids['w#1']})\n"
    st = d.status()
    assert (st["w#1"]["state"], st["w#1"]["reason"]) == ("paused", f"paused by {me}")
    assert proc_state(pids["w#1"]) == "T" and st["w#0"]["state"] == "ready"
    table = d.cli("status")
    assert table.returncode == 0  # paused is an operator's choice, not a failure
    assert any(line.split()[:3] == ["w#1", "paused", str(pids["w#1"])]
               for line in table.stdout.splitlines())
    info = d.json("info")
    assert "1 paused" in info["status"]
    out = d.cli("pause", "w", "--json")
    assert out.returncode == 0, out.stderr
    assert d.json("pause", "w") == {"agent": "w", "replicas": [
        {"replica": 0, "state": "paused", "pid": pids["w#0"]},
        {"replica": 1, "state": "paused", "pid": pids["w#1"]}]}
    out = d.cli("resume", "w")
    assert out.stdout == (f"w#0: ready (pid {pids['w#0']})\n"
                          f"w#1: ready (pid {pids['w#1']})\n")
    assert {k: (s["state"], s["pid"], s["restarts"]) for k, s in d.status().items()} == {
        k: ("ready", p, 0) for k, p in pids.items()}
    # refusals: the message, exit status 1, nothing changed
    bad = d.cli("resume", "w#0")
    assert bad.returncode == 1
    assert "replica w#0 is ready: only a paused replica can be resumed" in bad.stderr
    bad = d.cli("pause", "ww")
    assert "no such agent: ww (did you mean `w`?)" in bad.stderr
    bad = d.cli("pause", "w#a")
    assert bad.returncode != 0 and "the replica after '#' must be a number" in bad.stderr
    audit = d.json("audit")
    rows = [(a["method"], a["params"]) for a in audit["entries"]
            if a["method"] in ("agents.pause", "agents.resume")]
    assert ("agents.pause", {"name": "w", "replica": 1}) in rows
    assert ("agents.resume", {"name": "w", "replica": 0}) in rows
    # the transitions are in the log as events are
    log = d.cli("logs", "w#1", "-n", "200").stdout
    pid = pids["w#1"]
    assert [ln.split(" ", 1)[1] for ln in log.splitlines()][-2:] == [
        f"w#1[{pid}] event: ready -> paused: paused by {me}",
        f"w#1[{pid}] event: paused -> ready: resumed by {me}"]


def test_http_pause_and_resume_per_agent_and_per_replica(daemon: Daemon) -> None:
    import urllib.error
    import urllib.request

    d = daemon
    base = f"http://127.0.0.1:{d.port}/api/v1"  # type: ignore[attr-defined]
    token = d.json("token", "create", "ops", "--scope", "agents:write")["token"]

    def post(path: str) -> tuple[int, Any]:
        req = urllib.request.Request(base + path, data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, __import__("json").loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, __import__("json").loads(exc.read())

    pids = {k: s["pid"] for k, s in d.status().items()}
    assert post("/agents/w/replicas/0/pause") == (200, {"agent": "w", "replicas": [
        {"replica": 0, "state": "paused", "pid": pids["w#0"]}]})
    assert d.status()["w#0"]["reason"] == "paused by token ops"
    code, body = post("/agents/w/pause")
    assert code == 200 and [r["state"] for r in body["replicas"]] == ["paused", "paused"]
    code, body = post("/agents/w/replicas/1/resume")
    assert (code, body["replicas"]) == (200, [{"replica": 1, "state": "ready",
                                               "pid": pids["w#1"]}])
    assert post("/agents/w/replicas/1/resume") == (409, problem(
        409, "conflict", "replica w#1 is ready: only a paused replica can be resumed",
        jsonrpc.CONFLICT))
    assert post("/agents/w/replicas/7/pause") == (404, problem(
        404, "not found", "no such replica: w#7 (w has 2 replicas)", jsonrpc.NOT_FOUND))
    assert post("/agents/nope/pause")[0] == 404
    assert post("/agents/w/resume")[0] == 200
    assert {s["state"] for s in d.status().values()} == {"ready"}


def test_daemon_shutdown_while_paused_leaves_no_stopped_process(daemon: Daemon) -> None:
    d = daemon
    pids = [s["pid"] for s in d.status().values()]
    assert d.cli("pause", "w").returncode == 0
    assert {proc_state(p) for p in pids} == {"T"}
    t0 = time.monotonic()
    assert d.stop() == 0
    # thawed, asked, gone: well within one stop_timeout
    assert time.monotonic() - t0 < 8.0
    assert [proc_state(p) for p in pids] == [None, None]


def test_a_daemon_killed_while_paused_has_its_stopped_processes_reclaimed(
        daemon: Daemon) -> None:
    d = daemon
    pids = [s["pid"] for s in d.status().values()]
    assert d.cli("pause", "w").returncode == 0
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    assert {proc_state(p) for p in pids} == {"T"}  # frozen, orphaned
    d.start()
    # the next daemon found them and thawed them for the SIGTERM: gone at once, not
    # after the grace (stop_timeout) and a SIGKILL, as its log says (a bound on the time
    # counted the next daemon's whole start, which a loaded host's outlasted)
    assert {proc_state(p) for p in pids} <= {None, "Z"}  # (a zombie: ours to reap)
    log = (d.state / "logs" / "corral.log").read_text()
    assert "2 of its processes were still running (2 ended by SIGTERM, 0 by SIGKILL)" in log
    wait_until(lambda: all(s["state"] == "ready" for s in d.status().values()),
               what="fresh replicas ready")


# -- cgroup.freeze where the replica has a delegated cgroup of its own ---------------------
def cgroup_file(cg: Path, name: str) -> str:
    return (cg / name).read_text()


def events_say(cg: Path, frozen: bool) -> bool:
    """Whether the kernel says the cgroup is frozen (thawed) within 30 s, waited for as the
    daemon waits for a freeze (its notification of cgroup.events)."""
    return asyncio.run(containment.wait_frozen(str(cg), 30, frozen))


def test_in_a_delegated_cgroup_pause_is_cgroup_freeze(delegated: Path) -> None:  # noqa: F811
    tmp = shared_tmpdir()
    d = Daemon(tmp, agents_toml().replace("replicas = 2", "replicas = 1"), cgroup=delegated)
    try:
        d.start()
        wait_until(lambda: d.status()["w#0"]["state"] == "ready", what="w#0 ready")
        cg = delegated / "agent-w-0"
        pid = d.status()["w#0"]["pid"]
        assert cgroup_pids(str(cg)) == [pid]
        assert d.cli("pause", "w").returncode == 0
        # the command returned once the kernel said so
        assert cgroup_file(cg, "cgroup.freeze").strip() == "1"
        assert "frozen 1" in cgroup_file(cg, "cgroup.events")
        assert proc_state(pid) != "T"  # frozen by the cgroup, not stopped by a signal
        assert d.cli("resume", "w").returncode == 0
        assert "frozen 0" in cgroup_file(cg, "cgroup.events")
        assert d.json("run", "w", "--input", '{"do": "info"}')["output"]["pid"] == pid
        # a crash while frozen (SIGKILL reaches a frozen task): the next process, in the
        # same cgroup, is not born frozen
        assert d.cli("pause", "w").returncode == 0
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: (s := d.status()["w#0"])["state"] == "ready" and s["pid"] != pid,
                   what="a new w#0 ready")
        assert cgroup_file(cg, "cgroup.freeze").strip() == "0"
        assert d.status()["w#0"]["restarts"] == 1
        # the daemon's shutdown while frozen: thawed, stopped, the cgroup empty
        assert d.cli("pause", "w").returncode == 0
        assert d.stop() == 0
        assert sorted(p.name for p in delegated.iterdir() if p.is_dir()) == ["supervisor"]
    finally:
        d.close()


# what a root daemon runs as when a file's mode is to bind it: without the capabilities
# that pass over modes
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
          "--bounding-set=-dac_override,-dac_read_search"]


@contextlib.contextmanager
def in_cgroup(cgroup: Path, agents: str, n: int = 1,
              wrapper: list[str] | None = None) -> Iterator[Daemon]:
    """A daemon started in `cgroup` with agent w's `n` replicas ready, that must stop
    cleanly (exit 0) when the test is done; closed whatever happens."""
    d = Daemon(shared_tmpdir(), agents, cgroup=cgroup, wrapper=wrapper)
    try:
        d.start()
        wait_until(lambda: [s["state"] for s in d.status().values()] == ["ready"] * n,
                   what="w ready")
        yield d
        assert d.stop() == 0
    finally:
        d.close()


def replicas(cgroup: Path, n: int) -> contextlib.AbstractContextManager[Daemon]:
    """A daemon whose own writes obey file modes, with agent w of `n` replicas ready."""
    toml = agents_toml().replace("replicas = 2", f"replicas = {n}").replace(
        "stop_timeout = 10.0", "stop_timeout = 1.0")
    return in_cgroup(cgroup, toml, n, NO_DAC)


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z")


def corral_lines(d: Daemon, name: str) -> list[str]:
    """corral's own lines in `name`'s log (its notes about the replica)."""
    r = d.cli("logs", name, "-n", "200", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    return [e["text"] for e in lines if e["stream"] == "corral"]


def test_a_cgroup_freeze_that_cannot_be_written_falls_back_to_sigstop(
        delegated: Path) -> None:  # noqa: F811
    with replicas(delegated, 1) as d:
        cg = delegated / "agent-w-0"
        pid = d.status()["w#0"]["pid"]
        (cg / "cgroup.freeze").chmod(0o444)  # the daemon cannot write it now
        r = d.cli("pause", "w")
        assert (r.returncode, r.stderr) == (0, "")
        assert d.status()["w#0"]["state"] == "paused"
        assert proc_state(pid) == "T"  # stopped by SIGSTOP, not frozen
        assert "frozen 0" in cgroup_file(cg, "cgroup.events")
        assert corral_lines(d, "w")[-1] == (f"cgroup.freeze of {cg} failed (Permission "
                                            "denied); SIGSTOP")
        r = d.cli("resume", "w")
        assert (r.returncode, r.stderr) == (0, "")
        assert proc_state(pid) in ("S", "R")  # SIGCONT, as it was stopped
        assert d.json("run", "w", "--input", '{"do": "info"}')["output"]["pid"] == pid


def test_a_process_killed_mid_freeze_ends_the_pause_as_a_crash(
        delegated: Path) -> None:  # noqa: F811
    """The replica's process dies while the pause waits for the kernel (its freeze held
    up by the FUSE lookup): the pause returns then, not at its bound (30 s here, so that
    a loaded machine's slowness is not mistaken for the wait); the death is a crash, and
    the next process starts in the same cgroup unfrozen."""
    with in_cgroup(delegated, fuse_agent(pause_timeout=30)) as d:
        cg = delegated / "agent-w-0"
        pid = d.status()["w#0"]["pid"]
        d.json("run", "w", "--input", '{"do": "stick"}')
        pause = corral_popen(["--socket", str(d.sock), "pause", "w"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            wait_until(lambda: cgroup_file(cg, "cgroup.freeze").strip() == "1",
                       what="the freeze asked")
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            # (under a busy loop per core the CLI's own start took seconds: only the 30 s
            # bound, the wait the death must cut short, is what this tells apart)
            out, err = pause.communicate(timeout=25)
            took = time.monotonic() - killed
        finally:
            if pause.poll() is None:
                pause.kill()
                pause.wait()
        assert (pause.returncode, err) == (0, "")
        assert out.startswith("w#0: ") and "paused" not in out, out  # as it ended up
        assert took < 25, took  # the kernel said frozen (empty) at once: not the 30 s wait
        wait_until(lambda: (s := d.status()["w#0"])["state"] == "ready" and s["pid"] != pid,
                   what="a new w#0 ready")
        assert d.status()["w#0"]["restarts"] == 1
        assert cgroup_file(cg, "cgroup.freeze").strip() == "0"
        assert not any(ln.startswith("paused, but not seen") for ln in corral_lines(d, "w"))
        new = d.status()["w#0"]["pid"]
        assert d.json("run", "w", "--input", '{"do": "info"}')["output"] == {
            "pid": new, "ended": []}


def test_a_freeze_whose_events_cannot_be_read_is_said_so(delegated: Path) -> None:  # noqa: F811
    with replicas(delegated, 1) as d:
        cg = delegated / "agent-w-0"
        (cg / "cgroup.events").chmod(0o000)  # the daemon cannot read it now
        r = d.cli("pause", "w")
        assert (r.returncode, r.stderr) == (0, "")
        assert d.status()["w#0"]["state"] == "paused"
        (cg / "cgroup.events").chmod(0o444)
        # frozen all the same, once the kernel is done (the daemon, which could not read
        # that file, did not wait for it: a loaded host's freeze may come after its answer)
        assert events_say(cg, True), cgroup_file(cg, "cgroup.events")
        assert corral_lines(d, "w")[-1] == ("paused, but not seen frozen: "
                                            f"{cg}/cgroup.events cannot be read "
                                            "(Permission denied)")
        assert d.cli("resume", "w").returncode == 0
        assert events_say(cg, False), cgroup_file(cg, "cgroup.events")


def test_a_resume_whose_thaw_cannot_be_written_leaves_the_replica_paused(
        delegated: Path) -> None:  # noqa: F811
    with replicas(delegated, 2) as d:
        cg = delegated / "agent-w-0"
        pids = {k: s["pid"] for k, s in d.status().items()}
        assert d.cli("pause", "w").returncode == 0
        assert "frozen 1" in cgroup_file(cg, "cgroup.events")
        (cg / "cgroup.freeze").chmod(0o444)
        refusal = (f"replica w#0 stays paused: cgroup.freeze of {cg} cannot be written "
                   "(Permission denied)")
        for argv in (["resume", "w"], ["resume", "w#0"]):
            r = d.cli(*argv)
            assert (r.returncode, r.stdout, r.stderr) == (1, "", f"corral: {refusal}\n")
            # w#1 is resumed all the same; w#0 is as it was: paused, frozen, no task sent
            assert {k: (s["state"], s["pid"]) for k, s in d.status().items()} == {
                "w#0": ("paused", pids["w#0"]), "w#1": ("ready", pids["w#1"])}
            assert "frozen 1" in cgroup_file(cg, "cgroup.events")
        assert [(e["method"], e["outcome"]) for e in d.json("audit")["entries"]][-1] == (
            "agents.resume", f"error: {refusal}")
        (cg / "cgroup.freeze").chmod(0o644)
        r = d.cli("resume", "w")
        assert (r.returncode, r.stderr) == (0, "")
        assert "frozen 0" in cgroup_file(cg, "cgroup.events")
        assert d.status()["w#0"]["state"] == "ready"


def test_a_rollout_stops_a_replica_it_cannot_thaw_and_says_so(
        delegated: Path) -> None:  # noqa: F811
    with replicas(delegated, 1) as d:
        cg = delegated / "agent-w-0"
        pid = d.status()["w#0"]["pid"]
        assert d.cli("pause", "w").returncode == 0
        (cg / "cgroup.freeze").chmod(0o444)
        r = d.cli("restart", "--rolling", "w")
        assert r.returncode == 0, r.stderr
        new = d.status()["w#0"]
        assert new["state"] == "ready" and new["pid"] != pid
        assert d.json("run", "w", "--input", '{"do": "info"}')["output"]["pid"] == new["pid"]
        assert not alive(pid)
        said = corral_lines(d, "w")
        assert (f"replica w#0 stays paused: cgroup.freeze of {cg} cannot be written "
                "(Permission denied): its tasks are not finished") in said, said


def fuse_agent(pause_timeout: float = 2.0) -> str:
    """Agent w of tests/fuse_worker.py (a thread of it can be made unfreezable)."""
    return textwrap.dedent(f"""
        [agents.w]
        command = ["{PY}", "{Path(__file__).with_name('fuse_worker.py')}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 2.0
        pause_timeout = {pause_timeout}
    """)


def test_a_freeze_the_kernel_does_not_finish_in_time_is_said_and_thaws(
        delegated: Path) -> None:  # noqa: F811
    """A thread in a sleep the freezer cannot end (a FUSE lookup its server, frozen, does
    not answer): the pause returns after its bound, the replica is paused and its log says
    it was not seen frozen; the resume lets the lookup end and the worker serve on."""
    with in_cgroup(delegated, fuse_agent()) as d:
        cg = delegated / "agent-w-0"
        pid = d.status()["w#0"]["pid"]
        assert d.json("run", "w", "--input", '{"do": "stick"}')["output"] == {
            "pid": pid, "stuck": True}
        began = time.monotonic()
        r = d.cli("pause", "w")
        took = time.monotonic() - began
        assert (r.returncode, r.stderr) == (0, "")
        assert 2.0 <= took < 10, took  # pause_timeout, and no longer
        assert d.status()["w#0"]["state"] == "paused"
        assert cgroup_file(cg, "cgroup.freeze").strip() == "1"
        assert "frozen 0" in cgroup_file(cg, "cgroup.events")
        assert corral_lines(d, "w")[-1] == ("paused, but not seen frozen within 2 s (in "
                                            "uninterruptible sleep?)")
        assert d.cli("resume", "w").returncode == 0
        assert "frozen 0" in cgroup_file(cg, "cgroup.events")
        assert d.json("run", "w", "--input", '{"do": "info"}')["output"] == {
            "pid": pid, "ended": ["Interrupted system call"]}


# -- the dashboard ----------------------------------------------------------------------------
@needs_chromium
def test_a_replica_is_paused_and_resumed_from_the_dashboard() -> None:
    """The agent view: a replica's Pause button freezes it (the row says paused, the
    process is stopped), the agent's Resume button lets it run on, same pid; the audit
    says the page's session did it."""
    import re

    from playwright.sync_api import expect

    extra = '[http]\nlisten = "127.0.0.1:0"\n'
    with running_daemon(shared_tmpdir(), agents_toml(), extra=extra) as d:
        wait_until(lambda: all(s["state"] == "ready" for s in d.status().values()),
                   what="both replicas ready")
        pid = d.status()["w#1"]["pid"]
        r = d.cli("ui")
        assert r.returncode == 0, r.stderr
        with chromium_page() as page:
            page.goto(r.stdout.strip())
            expect(page.locator('#fleet tr[data-agent="w"][data-replica="1"] .state')
                   ).to_have_text(re.compile(r"^(ready|idle|busy)$"), timeout=30_000)
            page.click('#fleet a[href="#/agent/w"]')
            row = page.locator('#replicas-table tr[data-replica="1"]')
            row.locator("button.pause").click()
            expect(row.locator(".state")).to_have_text("paused", timeout=30_000)
            # SIGSTOP is delivered when the process next runs: on a loaded machine /proc
            # may say R for a moment after the daemon has sent it (a fresh-clone run did)
            wait_until(lambda: proc_state(pid) == "T", what="the replica's process stopped")
            expect(page.locator('#replicas-table tr[data-replica="0"] .state')
                   ).to_have_text("ready")
            page.click("#resume")
            expect(row.locator(".state")).to_have_text("ready", timeout=30_000)
            expect(page.locator("#resume")).to_have_count(0)
            assert page.evaluate("window.__cspViolations") == []
        assert (d.status()["w#1"]["pid"], d.status()["w#1"]["restarts"]) == (pid, 0)
        who = [(a["method"], a["who"]) for a in d.json("audit")["entries"]
               if a["method"] in ("agents.pause", "agents.resume")]
        assert who == [("agents.pause", "token dashboard (uid 0)"),
                       ("agents.resume", "token dashboard (uid 0)")]


@pytest.mark.deadline(90)
async def test_corral_status_watch_shows_the_pause_and_the_resume() -> None:
    import re
    import sys

    # a daemon of its own process, as tests/test_watch.py says why
    with running_daemon(shared_tmpdir(), agents_toml()) as d:
        await asyncio.to_thread(wait_until, lambda: all(
            s["state"] == "ready" for s in d.status().values()), what="replicas ready")
        pid = d.status()["w#0"]["pid"]
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        watch = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "corral", "--socket", str(d.sock), "status", "--watch", "w",
            stdout=asyncio.subprocess.PIPE, env=env)
        try:
            assert watch.stdout is not None

            async def line_with(text: str) -> str:
                assert watch.stdout is not None
                while True:
                    line = (await asyncio.wait_for(watch.stdout.readline(), 30)).decode()
                    assert line, "the watch ended"
                    if text in line:
                        return line.rstrip("\n")

            await line_with("w#1")  # the table first
            await asyncio.to_thread(d.cli, "pause", "w#0")
            paused = await line_with(" -> paused")
            await asyncio.to_thread(d.cli, "resume", "w#0")
            resumed = await line_with("paused -> ")
            stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
            assert [re.sub(stamp, "T", ln) for ln in (paused, resumed)] == [
                f"T w#0[{pid}] ready -> paused: paused by uid {os.geteuid()}",
                f"T w#0[{pid}] paused -> ready: resumed by uid {os.geteuid()}"]
        finally:
            with contextlib.suppress(ProcessLookupError):
                watch.kill()
            await asyncio.wait_for(watch.wait(), 10)


async def test_a_rolling_restart_resumes_a_paused_replica_to_finish_its_task(
        sup: Supervisor, tmp_path: Path) -> None:
    sup.add(worker("r", mb=1))
    old = await sup.wait_state("r", State.READY)
    flag = tmp_path / "go"
    task = sup.tasks.submit("r", {"do": "await", "path": str(flag)}, TaskOptions(timeout=60))
    await sup.wait_state("r", State.BUSY)
    await sup.pause("r")
    flag.touch()
    async with asyncio.timeout(30):
        await sup.agent("r").roll()
        info = await sup.tasks.info(task.id, wait=True)
    assert info.status == "succeeded"
    new = sup.agent("r").replicas[0]
    assert new is not old and new.state == State.READY and old.state == State.TERMINATED
    assert old.last_exit == "replaced by a new process"
