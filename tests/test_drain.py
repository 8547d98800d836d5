"""A stop drains (issue 37, decision 164): no new task goes to a worker, running tasks
finish within drain_timeout and are recorded once, the rest are handed to the next
daemon; `corral shutdown` waits for the daemon to be gone and says what it drained."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from .conftest import ROOT
from .daemon_harness import Daemon, corral_popen, free_port, shared_tmpdir, sleeper
from .test_daemon_cli import wait_until

DRAIN = "drain_timeout = 30"  # [supervisor]: the fleet's, far past what a test waits


def worker(name: str, extra: str = "") -> str:
    return sleeper(name) + "retries = 1\nbackoff_initial = 0.05\n" + extra


def submit(d: Daemon, agent: str, task: str) -> str:
    r = d.cli("run", agent, "--input", task, "--detach")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def running(d: Daemon, tid: str) -> None:
    wait_until(lambda: d.task(tid)["status"] == "running", what=f"{tid} running")


def attempts(d: Daemon, tid: str) -> list[tuple[str, str | None]]:
    return [(a["outcome"], a["error"]) for a in d.json("task", tid)["attempts"]]


def readyz(port: int) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def log(d: Daemon) -> str:
    return (d.state / "logs" / "corral.log").read_text()


def statuses(d: Daemon, prefix: str, timeout: float = 20) -> str:
    """The first STATUS= notification starting with `prefix`."""
    deadline = time.monotonic() + timeout
    while True:
        for msg in d.notify.seen:
            if msg.get("STATUS", "").startswith(prefix):
                return msg["STATUS"]
        left = deadline - time.monotonic()
        assert left > 0, f"no STATUS={prefix}... within {timeout} s: {d.notify.seen}"
        d.notify.sock.settimeout(min(left, 0.5))
        try:
            data = d.notify.sock.recv(4096).decode()
        except TimeoutError:
            continue
        d.notify.seen.append(dict(line.split("=", 1) for line in data.splitlines()
                                  if "=" in line))


def test_a_task_running_at_shutdown_finishes_once_on_its_first_attempt() -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w"), extra=DRAIN)
    try:
        d.start()
        # the task ends once the drain is under way, not after 5 s of its own, which the
        # shutdown's start could outlast on a loaded host (nothing left to drain then)
        gate = tmp / "go"
        tid = submit(d, "w", json.dumps({"do": "await", "path": str(gate)}))
        running(d, tid)
        assert d.proc is not None
        pid = d.proc.pid
        shutdown = corral_popen(["--socket", str(d.sock), "shutdown"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: "1 running task may finish" in log(d), what="the drain")
            gate.touch()
            out, err = shutdown.communicate(timeout=60)
        finally:
            if shutdown.poll() is None:
                shutdown.kill()
                shutdown.wait()
        # it returned once the daemon was gone (its exit status is ours to reap)
        assert d.proc.poll() == 0, (out, err)
        assert shutdown.returncode == 0, err
        lines = out.splitlines()
        assert re.fullmatch(r"drained in \d+\.\d s: 1 finished \(succeeded 1\)", lines[0])
        assert lines[1:] == [f"  {tid}  w  succeeded",
                             f"waiting for the daemon (pid {pid}) to stop its agents ...",
                             f"corral daemon stopped (pid {pid})"]
        assert "draining: no new task goes to a worker; 1 running task may finish" in log(d)
        assert "drained in" in log(d) and ": 1 finished (succeeded 1)" in log(d)
        # the next daemon has nothing to run again: one attempt, the first, succeeded
        d.start()
        t = d.json("task", tid)
        assert (t["status"], t["output"]) == ("succeeded", {"awaited": str(gate)})
        assert attempts(d, tid) == [("succeeded", None)]
        assert "unfinished task" not in log(d).split(f"pid {d.proc.pid}")[-1]
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_task_past_drain_timeout_is_cancelled_and_retried_once_by_the_next_daemon(
        ) -> None:
    tmp = shared_tmpdir()
    gate = tmp / "gate"
    # its own drain_timeout, under the fleet's; `once` is at most once (retry_lost = 0):
    # it must not run twice, so the drain does not hand it over to run again
    once = sleeper("once") + "retries = 0\nretry_lost = 0\ndrain_timeout = 1\n"
    d = Daemon(tmp, worker("w", "drain_timeout = 1\ncancel_grace = 5\n") + once,
               extra=DRAIN)
    try:
        d.start()
        tid = submit(d, "w", f'{{"do": "await", "path": "{gate}"}}')
        single = submit(d, "once", f'{{"do": "await", "path": "{gate}"}}')
        running(d, tid)
        running(d, single)
        started = time.monotonic()
        r = d.cli("shutdown", timeout=60)
        took = time.monotonic() - started
        assert r.returncode == 0, r.stderr
        assert took < 10, took  # the agents' 1 s, not the fleet's 30
        assert r.stdout.splitlines()[0].endswith(
            ": 1 finished (lost 1), 1 handed to the next daemon")
        assert r.stdout.splitlines()[1:3] == [f"  {tid}  w  handed to the next daemon",
                                              f"  {single}  once  lost"]
        why = "not finished within the drain (1 s drain_timeout): daemon stopping"
        gate.touch()  # the retry finishes at once
        d.start()
        t = wait_until(lambda: (t := d.task(tid))["status"] == "succeeded" and t,
                       what="the retry")
        assert attempts(d, tid) == [("lost", why), ("succeeded", None)]
        assert t["output"] == {"awaited": str(gate)}
        assert ("task journal: 1 unfinished task recovered: 1 queued again, 0 running "
                "tasks retried, 0 lost") in log(d)
        lost = d.json("task", single)
        assert (lost["status"], lost["error"]["message"]) == (
            "lost", f"{why} (not run again: at most once, retry_lost = 0)")
        assert attempts(d, single) == [("lost", why)]  # and not run again
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_sigterm_drains_and_says_so_in_status_and_to_systemd() -> None:
    tmp = shared_tmpdir()
    gate = tmp / "gate"
    port = free_port()
    d = Daemon(tmp, worker("w") + f'\n[http]\nlisten = "127.0.0.1:{port}"\n', extra=DRAIN)
    try:
        d.start()
        tid = submit(d, "w", f'{{"do": "await", "path": "{gate}"}}')
        running(d, tid)
        assert readyz(port)[0] == 200
        assert d.proc is not None
        d.notify.drain()
        d.proc.send_signal(signal.SIGTERM)
        assert re.fullmatch(r"draining 1 task \(up to 3\d s\); 1 agent, 1/1 replica "
                            r"serving, 0 failed", statuses(d, "draining"))
        st = d.json("status")
        assert [re.sub(r"\d+ s", "N s", n) for n in st["notices"]] == [
            "draining 1 task (up to N s)"]
        info = d.json("info")
        assert info["draining"].startswith("draining 1 task")
        # a load balancer sends it no more work
        code, body = readyz(port)
        assert (code, body["status"], body["problems"][0][:16]) == (503, "draining",
                                                                    "draining 1 task ")
        # a task handed in meanwhile is journaled, and waits for the next daemon
        later = submit(d, "w", '{"do": "echo", "n": 1}')
        assert d.json("task", later)["status"] == "queued"
        gate.touch()
        assert d.proc.wait(30) == 0
        assert "received SIGTERM" in log(d)
        d.start()
        assert attempts(d, tid) == [("succeeded", None)]
        done = d.json("task", later, "--wait")
        assert (done["status"], done["output"]) == ("succeeded", {"do": "echo", "n": 1})
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_shutdown_now_keeps_the_old_stop_and_cuts_a_drain_short() -> None:
    tmp = shared_tmpdir()
    gate = tmp / "gate"
    d = Daemon(tmp, worker("w"), extra=DRAIN)
    try:
        d.start()
        tid = submit(d, "w", f'{{"do": "await", "path": "{gate}"}}')
        running(d, tid)
        started = time.monotonic()
        r = d.cli("shutdown", "--now", timeout=60)
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - started < 15  # not the drain's 30 s
        assert d.proc is not None and d.proc.poll() == 0
        assert r.stdout.splitlines()[0].endswith(
            ": 0 finished, 1 still running, ended by the stop, cut short")
        assert "stopping at once (no drain)" in log(d)
        gate.touch()
        d.start()
        wait_until(lambda: d.task(tid)["status"] == "succeeded", what="the retry")
        # as before drains: the attempt was lost with its worker, and retried
        assert [a[0] for a in attempts(d, tid)] == ["lost", "succeeded"]
        assert d.stop() == 0

        # a drain under way is cut short by a second request (`--now`)
        gate.unlink()
        d.start()
        tid = submit(d, "w", f'{{"do": "await", "path": "{gate}"}}')
        running(d, tid)
        assert d.cli("shutdown", "--no-wait").stdout == "corral daemon is shutting down\n"
        wait_until(lambda: "draining: no new task" in log(d), what="the drain")
        r = d.cli("shutdown", "--now", "--no-wait")
        assert r.returncode == 0, r.stderr
        assert d.proc.wait(15) == 0
        assert "received shutdown --now while draining: stopping at once" in log(d)
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_without_a_journal_a_task_is_refused_during_a_drain_with_a_retry_hint() -> None:
    tmp = shared_tmpdir()
    gate = tmp / "gate"
    d = Daemon(tmp, worker("w"), extra=DRAIN + "\ntask_journal = false")
    try:
        d.start()
        tid = submit(d, "w", f'{{"do": "await", "path": "{gate}"}}')
        running(d, tid)
        assert d.cli("shutdown", "--no-wait").returncode == 0
        wait_until(lambda: "draining: no new task" in log(d), what="the drain")
        r = d.cli("run", "w", "--input", '{"do": "echo"}', "--detach")
        assert r.returncode != 0
        assert r.stderr == ("corral: refused: the daemon is stopping (draining), and "
                            "without a task journal (task_journal = false) a task "
                            "accepted now would be lost: submit it again once the daemon "
                            "is back\n")
        assert [t["task_id"] for t in d.json("tasks")["tasks"]] == [tid]
        gate.touch()
        assert d.proc is not None and d.proc.wait(30) == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_units_stop_timeout_is_derived_from_drain_timeout(tmp_path: Path) -> None:
    from corral.cli.install import stop_timeout_sec
    from corral.supervisor.configload import load_config

    unit = (ROOT / "systemd" / "corral.service").read_text()
    shipped = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))  # type: ignore[union-attr]
    config = tmp_path / "corral.toml"
    config.write_text("[agents.a]\ncommand = 'true'\n")
    assert stop_timeout_sec(load_config(config)) == shipped
    config.write_text("[supervisor]\ndrain_timeout = 600\n"
                      "[agents.a]\ncommand = 'true'\ncancel_grace = 20\n"
                      "[agents.b]\ncommand = 'true'\ndrain_timeout = 900\n")
    # the longest drain and cancel grace, then the agents' and tool servers' stops
    assert stop_timeout_sec(load_config(config)) == 900 + 20 + 2 * 10 + 2 * 10 + 15


async def test_a_held_engine_takes_no_task_to_a_worker_until_released(sup: Any) -> None:
    """The hold a drain takes (and an upgrade will): tasks are accepted and wait, those
    running go on; released, the waiting ones start."""
    from corral.supervisor import State

    from .conftest import agent

    sup.add(agent("w", "misbehave.py", max_concurrent_tasks=2))
    await sup.wait_state("w", State.READY)
    tasks = sup.tasks
    first = tasks.submit("w", {"do": "sleep", "seconds": 0.5})
    assert first.status == "running"
    tasks.hold("held by the test")
    assert tasks.held == "held by the test"
    waiting = tasks.submit("w", {"do": "echo", "n": 1})
    assert (waiting.status, tasks.waiting(), tasks.running_tasks()) == ("queued", 1, [first])
    await asyncio.shield(first.done)  # the running one finished, the waiting one waits
    assert (first.status, waiting.status) == ("succeeded", "queued")
    tasks.release()
    assert tasks.held is None and waiting.status == "running"
    await asyncio.shield(waiting.done)
    assert (waiting.status, waiting.output) == ("succeeded", {"do": "echo", "n": 1})


def test_shutdown_with_nothing_running_says_so_and_waits_for_the_daemon() -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w"), extra=DRAIN)
    try:
        d.start()
        assert d.proc is not None
        pid = d.proc.pid
        r = d.cli("shutdown")
        assert (r.returncode, r.stderr) == (0, "")
        assert d.proc.poll() == 0
        assert r.stdout.splitlines() == [
            "no task was running",
            f"waiting for the daemon (pid {pid}) to stop its agents ...",
            f"corral daemon stopped (pid {pid})"]
        # no daemon any more: said, with the exit status of an unreachable one
        r = d.cli("shutdown")
        assert r.returncode == 3 and r.stderr.startswith(
            f"corral: cannot reach the corral daemon at {d.sock}: no socket there"), r.stderr
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)
