"""`corral upgrade` (issue 37, item 2; decisions 200-204, 240-244): the daemon re-executes
itself in place — the same pid — and keeps its agents' processes, their running tasks, its
MCP servers and their sessions, its control socket and its HTTP listening sockets; a new
install that cannot start is refused before the exec, or falls back to the old image after
it, with every agent kept."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import os
import py_compile
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from corral.cli.client import Unreachable
from corral.daemon.gatewayaccess import GatewayService
from corral.daemon.handoff import Fallback, Handoff, Listener
from corral.daemon.logs import LogHub
from corral.daemon.store import StateStore
from corral.daemon.upgrade import IMPORT_VARIABLE, PREFLIGHT, Takeover, firsts_first
from corral.supervisor.adopt import Adoptions, HandedProcess
from corral.supervisor.config import Config
from corral.supervisor.configload import load_config
from corral.supervisor.containment import ProcessRecord, read_stat
from corral.supervisor.core import Supervisor

from .conftest import EXAMPLES, ROOT, agent
from .daemon_harness import PY, Daemon, free_port, shared_tmpdir, sleeper
from .test_daemon_cli import wait_until
from .warmforks import sdk_toml

# minutes of this file: a parallel run starts it first (tests/conftest.py longest_first)
pytestmark = [pytest.mark.long, pytest.mark.usefixtures("warm_mcp_sdk")]

# the notes server a fork of this process's MCP SDK server (tests/warmforks.py)
NOTES = sdk_toml(f"{EXAMPLES}/notes_server.py")


def worker(name: str) -> str:
    return sleeper(name) + "retries = 1\nbackoff_initial = 0.05\n"


NOTES = f"""
[mcp_servers.notes]
command = {NOTES}
start = "eager"
start_timeout = 30.0
"""


def submit(d: Daemon, agent: str, task: str) -> str:
    r = d.cli("run", agent, "--input", task, "--detach")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def running_until(d: Daemon, agent: str, release: Path) -> str:
    """A task that runs until the test creates `release`: running across an upgrade
    however long the upgrade takes on a loaded machine (a task of fixed length could end
    before the exec)."""
    return submit(d, agent, json.dumps({"do": "await", "path": str(release)}))


def pids(d: Daemon) -> dict[str, tuple[int, int]]:
    """Each replica's (pid, restarts)."""
    return {k: (v["pid"], v["restarts"]) for k, v in d.status().items()}


def install(tmp: Path, name: str, change: tuple[str, str, str] | None = None) -> Path:
    """A second install of corral: the package copied to `tmp/name`, one file of it
    changed (path, text replaced, by what). Compiled, as pip leaves an install: its
    byte-code copied with the sources' times, so the check compiles only the changed file
    again, not the whole package (the suite's CPU); the tests of the check's compiling
    take away the byte-code of the files they need compiled."""
    root = tmp / name
    shutil.copytree(ROOT / "corral", root / "corral")
    if change is not None:
        path, old, new = change
        f = root / "corral" / path
        text = f.read_text()
        assert old in text
        f.write_text(text.replace(old, new, 1))
    return root


class Knocker:
    """Connects to the control socket in a loop, from a thread, and keeps every error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.errors: list[str] = []
        self.connects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            # blocking, as the CLI's client connects: a full backlog makes it wait
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.path))
                self.connects += 1
            except OSError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                s.close()
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


class Poller:
    """GETs `url` in a loop, from a thread, a new connection each time; counts each
    outcome (a refused connection apart)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.refused: list[str] = []
        self.other: list[str] = []
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=30) as r:
                    r.read()
                self.answered += 1
            except urllib.error.URLError as exc:
                bucket = (self.refused if isinstance(exc.reason, ConnectionRefusedError)
                          else self.other)
                bucket.append(repr(exc.reason))
            except (ConnectionError, OSError) as exc:
                (self.refused if isinstance(exc, ConnectionRefusedError)
                 else self.other).append(repr(exc))
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(35)


def mcp_rows(d: Daemon) -> dict[str, dict[str, object]]:
    return {f"{m['name']}#{m['instance']}": m for m in d.json("mcp", "status")["mcp_servers"]}


def test_a_running_task_is_kept_across_an_upgrade_and_finishes_once() -> None:
    tmp = shared_tmpdir()
    port = free_port()
    d = Daemon(tmp, worker("w") + NOTES + f'[http]\nlisten = "127.0.0.1:{port}"\n')
    try:
        d.start()
        assert d.proc is not None
        before = pids(d)
        # the MCP server's state is its process's: a note kept in its memory
        added = d.cli("tools", "call", "notes__add", "--args",
                      '{"title": "t", "text": "before the upgrade"}')
        assert added.returncode == 0, added.stderr
        server = mcp_rows(d)["notes#0"]
        assert server["state"] == "ready" and server["calls"] == 1, server
        release = tmp / "release"
        tid = running_until(d, "w", release)
        wait_until(lambda: d.task(tid)["status"] == "running", what="running")
        knock = Knocker(d.sock)
        poll = Poller(f"http://127.0.0.1:{port}/healthz")
        wait_until(lambda: poll.answered > 0, what="/healthz answered")
        try:
            r = d.cli("upgrade")
            answered = poll.answered
            wait_until(lambda: poll.answered > answered + 5, what="/healthz after")
        finally:
            knock.stop()
            poll.stop()
        assert r.returncode == 0, r.stderr + r.stdout
        assert re.match(r"corral daemon upgraded from \S+ to \S+ \(pid "
                        rf"{d.proc.pid}\) in [\d.]+ s: 1 agent process, 1 MCP server and 1 "
                        r"running task kept$", r.stdout.strip()), r.stdout
        # the control socket refused no connection meanwhile, and took many
        assert knock.errors == [] and knock.connects > 10, (knock.errors, knock.connects)
        # nor did the HTTP port (a request open at the exec may be cut, never refused)
        assert poll.refused == [] and len(poll.other) <= 1, (poll.refused, poll.other)
        # the same MCP server process, its session and counters going on: no initialize
        after = mcp_rows(d)["notes#0"]
        assert (after["pid"], after["restarts"], after["protocol_version"], after["tools"],
                after["calls"]) == (server["pid"], server["restarts"],
                                    server["protocol_version"], server["tools"], 1), after
        assert after["state"] == "ready", after
        assert d.proc.poll() is None
        assert f"(pid {d.proc.pid}," in d.cli("version").stdout
        release.touch()
        task = wait_until(lambda: (t := d.task(tid))["status"] != "running" and t,
                          what="the task's end")
        assert task["status"] == "succeeded", task
        assert [(a["outcome"], a["pid"]) for a in task["attempts"]] == [
            ("succeeded", before["w#0"][0])]
        assert task["output"] == {"awaited": str(release)}
        # the same worker, no restart counted
        assert pids(d) == before
        assert d.status()["w#0"]["state"] in ("ready", "idle")
        # the MCP server kept answers a tool call, from the memory it had before
        called = d.cli("tools", "call", "notes__get", "--args", '{"title": "t"}')
        assert called.returncode == 0, called.stderr
        assert "before the upgrade" in called.stdout, called.stdout
        assert mcp_rows(d)["notes#0"]["pid"] == server["pid"]
        # a task after the upgrade runs on the same worker
        out = d.cli("run", "w", "--input", '{"do": "echo", "value": 1}', "--json")
        assert out.returncode == 0, out.stderr
        log = (d.state / "logs" / "corral.log").read_text()
        assert "upgrading: handing 1 agent process, 1 MCP server and 1 running task" in log
        assert "1 agent process, 1 MCP server and 1 running task kept" in log
        assert "did not shut down cleanly" not in log
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_an_upgrade_to_another_version_is_served_by_it() -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w"))
    try:
        d.start()
        assert d.proc is not None
        before = pids(d)
        new = install(tmp, "v2", ("__init__.py", '__version__ = "', '__version__ = "9.9.9+'))
        r = d.cli("upgrade", "--pythonpath", str(new))
        assert r.returncode == 0, r.stderr + r.stdout
        assert re.search(r"upgraded from \S+ to 9\.9\.9\+\S+ ", r.stdout), r.stdout
        version = d.cli("version").stdout
        assert re.search(rf"daemon 9\.9\.9\+\S+ \(pid {d.proc.pid},", version), version
        assert pids(d) == before
        # one upgrade, one audit row: the CLI's asks for its report (every 0.1 s until the
        # new image answers) change nothing and are not audited as upgrades
        rows = [(e["method"], e["params"], e["outcome"]) for e in d.json("audit")["entries"]
                if e["method"] == "daemon.upgrade"]
        assert rows == [("daemon.upgrade", {"python": None, "pythonpath": str(new),
                                            "report": False}, "ok")], rows
        # and back to this checkout's, by SIGUSR2 (the daemon's own interpreter and path:
        # the environment it runs with is the new image's, PYTHONPATH the second install)
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_broken_install_is_refused_before_the_exec() -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w"))
    try:
        d.start()
        assert d.proc is not None
        before = pids(d)
        broken = install(tmp, "broken", ("__init__.py", '__version__ = "',
                                         'raise ImportError("broken on purpose")\n'
                                         '__version__ = "'))
        r = d.cli("upgrade", "--pythonpath", str(broken))
        assert r.returncode == 1, r.stdout
        assert r.stderr.strip() == (
            "corral: upgrade refused, nothing changed: the new install does not start: "
            "ImportError: broken on purpose (exit status 1)"), r.stderr
        assert pids(d) == before and d.proc.poll() is None
        assert d.json("upgrade", "--report")["state"] == "refused"
        log = (d.state / "logs" / "corral.log").read_text()
        assert "upgrade refused, nothing changed: the new install does not start" in log
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_release_of_another_handoff_layout_is_refused_before_the_exec() -> None:
    """A release that needs a full stop takes a handoff layout of its own (decision
    1523): its check is refused with the layouts' numbers, nothing changed."""
    from corral import __version__
    from corral.daemon.handoff import HANDOFF_VERSION

    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w"))
    try:
        d.start()
        assert d.proc is not None
        before = pids(d)
        later = install(tmp, "later", ("daemon/handoff.py", f"HANDOFF_VERSION = {HANDOFF_VERSION}",
                                       f"HANDOFF_VERSION = {HANDOFF_VERSION + 1}"))
        r = d.cli("upgrade", "--pythonpath", str(later))
        assert r.returncode == 1, r.stdout
        assert r.stderr.strip() == (
            f"corral: upgrade refused, nothing changed: corral {__version__} takes handoff "
            f"layout {HANDOFF_VERSION + 1}, this daemon writes {HANDOFF_VERSION}: stop and "
            "start it instead"), r.stderr
        assert pids(d) == before and d.proc.poll() is None
        assert d.json("upgrade", "--report")["state"] == "refused"
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_new_image_that_fails_after_its_checks_falls_back_keeping_every_agent() -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w") + worker("v"))
    try:
        d.start()
        assert d.proc is not None
        before = pids(d)
        release = tmp / "release"
        tid = running_until(d, "w", release)
        wait_until(lambda: d.task(tid)["status"] == "running", what="running")
        broken = install(tmp, "late", (
            "daemon/boot.py", "    global committed\n",
            '    global committed\n    raise RuntimeError("broken on purpose after its '
            'checks")\n'))
        r = d.cli("upgrade", "--pythonpath", str(broken))
        assert r.returncode == 1, r.stdout + r.stderr
        assert re.match(rf"corral: the upgrade failed and the daemon \(pid {d.proc.pid}\) "
                        r"fell back to corral \S+: RuntimeError: broken on purpose after "
                        r"its checks; 2 agent processes and 1 running task kept$",
                        r.stdout.strip()), r.stdout
        assert d.proc.poll() is None
        assert pids(d) == before
        release.touch()
        task = wait_until(lambda: (t := d.task(tid))["status"] != "running" and t,
                          what="the task's end")
        assert [(a["outcome"], a["pid"]) for a in task["attempts"]] == [
            ("succeeded", before["w#0"][0])], task
        log = (d.state / "logs" / "corral.log").read_text()
        assert ("upgrade failed, fell back to corral" in log
                and "RuntimeError: broken on purpose after its checks" in log)
        # the state file is gone: a later daemon start takes nothing
        assert not (d.state / "upgrade-handoff.json").exists()
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_sigusr2_upgrades_and_an_upgrade_under_way_is_not_asked_twice() -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w"))
    try:
        d.start()
        assert d.proc is not None
        before = pids(d)
        d.notify.drain()
        d.proc.send_signal(15 - 3)  # SIGUSR2
        d.notify.wait_for("READY", proc=d.proc)
        report = wait_until(lambda: (r := d.json("upgrade", "--report"))["state"] == "done"
                            and r, what="the upgrade's report")
        assert report["attempt"] == 1 and report["kept"] == 1 and report["pid"] == d.proc.pid
        assert pids(d) == before
        # asked as `corral upgrade` is, through the Dispatcher: audited (decision 1522)
        rows = [(e["method"], e["params"], e["outcome"], e["who"], e["pid"])
                for e in d.json("audit")["entries"] if e["method"] == "daemon.upgrade"]
        assert rows == [("daemon.upgrade", {"python": None, "pythonpath": None,
                                            "report": False}, "ok", "signal SIGUSR2",
                         d.proc.pid)], rows
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_handoff_file_is_private() -> None:
    from corral.daemon import handoff
    from corral.daemon.handoff import Fallback, Handoff

    tmp = shared_tmpdir()
    try:
        path = tmp / handoff.NAME
        h = Handoff(attempt=1, from_version="x", asked_at=0.0,
                    config="c", socket=None, control=(3, 4),
                    issued=0, fallback=Fallback(python=PY, env={}, boot=""))
        handoff.write(path, h)
        assert path.stat().st_mode & 0o777 == 0o600
        assert handoff.read(path) == h
        path.write_text('{"version": 99}')
        try:
            handoff.read(path)
        except ValueError as exc:
            assert (f"handoff version 99, this corral reads {handoff.HANDOFF_VERSION}"
                    in str(exc))
        else:
            raise AssertionError("another layout was read")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Steady:
    """Calls `method` on the control socket every `interval` s from a thread, on one
    connection (made again when the exec cut it): what each call answered, the calls cut
    (the connection open at the exec), and refused connections apart."""

    def __init__(self, sock: Path, method: str, params: Callable[[int], dict[str, Any]],
                 interval: float) -> None:
        self.sock, self.method, self.params, self.interval = sock, method, params, interval
        self.answers: list[Any] = []
        self.cut = 0
        self.refused: list[str] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from corral.cli.client import CallFailed, Client, Disconnection, Unreachable

        c: Client | None = None
        n = 0
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                if c is None:
                    c = Client(self.sock, timeout=60)
                self.answers.append(c.ask(self.method, self.params(n)))
                n += 1
            except (Disconnection, ConnectionError):
                self.cut += 1
                c = _closed(c)
            except Unreachable as exc:
                self.refused.append(str(exc).splitlines()[0])
                c = _closed(c)
            except CallFailed as exc:
                self.failed.append(exc.message)
            time.sleep(max(0.0, self.interval - (time.monotonic() - t)))
        _closed(c)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(65)


def _closed(c: Any) -> None:
    if c is not None:
        c.close()


def test_an_upgrade_under_load_loses_no_task_reruns_none_and_restarts_no_agent() -> None:
    """Issue 37's acceptance: tasks at a steady rate on 100 agents (warm: forked by a
    zygote, the faster start), an MCP server in use, `corral upgrade` to a second install
    whose version differs: 0 tasks lost, 0 run again, 0 agents restarted, 0 control
    connections refused."""
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w") + "replicas = 100\nwarm = true\nstart_timeout = 60.0\n"
               + NOTES)
    try:
        d.start()
        assert d.proc is not None
        before = pids(d)
        assert len(before) == 100 and all(pid for pid, _ in before.values()), before
        server = mcp_rows(d)["notes#0"]
        new = install(tmp, "v2", ("__init__.py", '__version__ = "', '__version__ = "9.9.9+'))
        tasks = Steady(d.sock, "tasks.submit",
                       lambda n: {"agent": "w", "input": {"do": "sleep", "seconds": 0.2}},
                       0.02)
        tools = Steady(d.sock, "tools.call",
                       lambda n: {"name": "notes__add",
                                  "arguments": {"title": f"n{n}", "text": "x"}}, 0.05)
        knock = Knocker(d.sock)
        try:
            wait_until(lambda: len(tasks.answers) > 20 and len(tools.answers) > 5,
                       what="load under way")
            r = d.cli("upgrade", "--pythonpath", str(new))
            assert r.returncode == 0, r.stderr + r.stdout
            upgraded = (len(tasks.answers), len(tools.answers))
            wait_until(lambda: len(tasks.answers) > upgraded[0] + 20
                       and len(tools.answers) > upgraded[1] + 5, what="load after")
        finally:
            tasks.stop()
            tools.stop()
            knock.stop()
        assert re.search(r"upgraded from \S+ to 9\.9\.9\+\S+ .*: 100 agent processes, 1 MCP "
                         r"server and \d+ running tasks? kept; started again: zygote \S+$",
                         r.stdout.strip()), r.stdout
        # no control connection refused, no call failed nor cut (the old image answers what
        # it read and says so; the client sends the rest again to the new one)
        assert (knock.errors, tasks.refused, tools.refused) == ([], [], []), (
            knock.errors, tasks.refused, tools.refused)
        assert (tasks.failed, tools.failed) == ([], []), (tasks.failed, tools.failed)
        assert (tasks.cut, tools.cut) == (0, 0)
        # no agent restarted, the same MCP server
        assert pids(d) == before
        after = mcp_rows(d)["notes#0"]
        assert (after["pid"], after["restarts"]) == (server["pid"], server["restarts"])
        # every task accepted (and any a cut call made) succeeds once, on attempt 1
        accepted = {a.task_id for a in tasks.answers}
        assert len(accepted) > 40 and len(tools.answers) > 10

        def finished() -> list[dict[str, Any]] | None:
            rows: list[dict[str, Any]] = d.json("tasks", "--agent", "w", "--limit",
                                                "100000")["tasks"]
            done = all(t["status"] not in ("queued", "running") for t in rows)
            return rows if done and len(rows) >= len(accepted) else None

        rows = wait_until(finished, timeout=60, what="every task's end")
        assert accepted <= {t["task_id"] for t in rows}
        assert [(t["task_id"], t["status"], t["attempts"]) for t in rows
                if (t["status"], t["attempts"]) != ("succeeded", 1)] == []
        assert len(rows) == len(accepted)
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


# a plain program (protocol = "none") that speaks sd_notify: READY=1 and STATUS=serving,
# WATCHDOG=1 every 0.1 s, a line on stdout and on stderr every 0.05 s; once the file GO
# exists, STATUS=after (heard only if its $NOTIFY_SOCKET still is, after the upgrade)
PLAIN = """
import os, socket, sys, time
go = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def send(text):
    s.sendto(text.encode(), os.environ["NOTIFY_SOCKET"])
send("READY=1\\nSTATUS=serving")
n, said = 0, False
while True:
    n += 1
    print(f"tick {n}", flush=True)
    print(f"tock {n}", file=sys.stderr, flush=True)
    send("WATCHDOG=1")
    if not said and os.path.exists(go):
        send("STATUS=after")
        said = True
    time.sleep(0.05)
"""


def plain(tmp: Path) -> tuple[str, Path]:
    """Its config (with a readiness check that notes each run in RUNS and fails once BAD
    exists, three failures needed), and its GO file."""
    prog = tmp / "plain.py"
    prog.write_text(PLAIN)
    go = tmp / "go"
    check = f"echo x >> {tmp}/RUNS; test ! -e {tmp}/BAD"
    return (f'[agents.p]\ncommand = ["{PY}", "{prog}", "{go}"]\nprotocol = "none"\n'
            'ready = "notify"\nwatchdog_sec = 1.0\n'
            f'[agents.p.health.readiness]\ncommand = ["sh", "-c", "{check}"]\n'
            'interval = 30.0\nfailures = 3\n'), go


def runs(tmp: Path) -> int:
    f = tmp / "RUNS"
    return len(f.read_text().splitlines()) if f.exists() else 0


def ticks(log: Path) -> int:
    found = re.findall(r"tick (\d+)", log.read_text())
    return int(found[-1]) if found else 0


def test_a_plain_program_and_its_log_and_notify_socket_are_kept_across_an_upgrade() -> None:
    tmp = shared_tmpdir()
    conf, go = plain(tmp)
    d = Daemon(tmp, conf)
    try:
        d.start()
        assert d.proc is not None
        log = d.state / "logs" / "p.log"
        wait_until(lambda: ticks(log) > 3, what="its first lines")
        wait_until(lambda: d.status()["p#0"]["health"] is None, what="its check passed")
        before = d.status()["p#0"]
        assert (before["state"], before["status_text"]) == ("ready", "serving"), before
        notify = Path(psutil.Process(before["pid"]).environ()["NOTIFY_SOCKET"])
        # its check fails from now on, and three failures are needed: its checks start
        # again in the new image as after a restart (decision 2080), so the one failure
        # after the upgrade leaves it "not passed yet", where a carried pass stood
        (tmp / "BAD").touch()
        checked = runs(tmp)
        r = d.cli("upgrade")
        assert r.returncode == 0, r.stderr + r.stdout
        assert "started again" not in r.stdout, r.stdout
        assert re.search(r": 1 agent process and 0 running tasks kept$", r.stdout.strip()), \
            r.stdout
        at = ticks(log)
        wait_until(lambda: runs(tmp) >= checked + 1, what="a check after the upgrade")
        assert re.match(r"readiness check .* not passed yet", d.status()["p#0"]["health"]), \
            d.status()["p#0"]
        assert d.status()["p#0"]["state"] == "ready"  # (a plain program takes no task)
        (tmp / "BAD").unlink()
        # its log goes on from the same pipes, both streams
        wait_until(lambda: ticks(log) > at + 10, what="its lines after the upgrade")
        assert re.search(r"tock \d+", log.read_text())
        after = d.status()["p#0"]
        assert (after["pid"], after["restarts"], after["state"], after["status_text"]) == (
            before["pid"], 0, "ready", "serving"), after
        # its $NOTIFY_SOCKET is heard by the new image: a STATUS= sent now is shown, and
        # its WATCHDOG=1 kept it from being taken down as hung (watchdog_sec = 1)
        go.touch()
        wait_until(lambda: d.status()["p#0"]["status_text"] == "after", what="STATUS=after")
        wait_until(lambda: ticks(log) > at + 40, what="two watchdog periods")
        assert d.status()["p#0"]["pid"] == before["pid"]
        assert d.status()["p#0"]["restarts"] == 0
        text = (d.state / "logs" / "corral.log").read_text()
        assert "no WATCHDOG=1" not in text and "0 processes started again" in text
        assert notify.exists()
        assert d.stop() == 0
        # its socket's directory went with the daemon (the new image adopted it)
        assert not notify.parent.exists()
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def stats_of(d: Daemon) -> dict[str, Any]:
    """What `corral stats` counts (not what is of now: uptime, usage, the loop's work)."""
    s = d.json("stats")
    engine = {k: v for k, v in s["supervisor"].items() if k in (
        "spawned", "restarts", "restarts_by_cause", "failures", "spawn_failures",
        "cold_fallbacks", "exits", "stuck_after_kill", "active")}
    agents = {k: (v["replicas"], v["serving"], v["restarts"]) for k, v in s["agents"].items()}
    return {"tasks": s["tasks"], "supervisor": engine, "agents": agents}


def shown(d: Daemon) -> dict[str, tuple[Any, ...]]:
    """What `corral status` says of each replica that an upgrade must not change."""
    return {k: (v["state"], v["pid"], v["restarts"], v["tasks_running"], v["last_exit"])
            for k, v in d.status().items()}


def test_status_is_the_same_and_stats_start_again_after_an_upgrade() -> None:
    """Each replica is the process it was, with its restarts and its task running; the
    counts of `corral stats` start again as after a restart (decision 2080): the task
    taken back from the journal is the new image's one accepted, and an idle replica is
    ready again."""
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w") + "replicas = 2\n" + worker("v"))
    try:
        d.start()
        assert d.proc is not None
        for task in ('{"do": "echo", "value": 1}', '{"do": "echo", "value": 2}',
                     '{"do": "fail"}'):
            d.cli("run", "w", "--input", task)
        d.cli("run", "v", "--input", '{"do": "echo", "value": 3}')
        # w#0 or w#1 ran tasks and is idle, the other ready; v#0 busy with a task that
        # runs across the upgrade
        release = tmp / "release"
        tid = running_until(d, "v", release)
        wait_until(lambda: d.task(tid)["status"] == "running", what="running")
        wait_until(lambda: {v[0] for v in shown(d).values()} == {"idle", "ready", "busy"},
                   what="settled")
        before_stats, before = stats_of(d), shown(d)
        total = before_stats["tasks"]["total"]
        assert (total["accepted"], total["failed"], total["running"]) == (5, 1, 1), \
            before_stats
        assert before_stats["supervisor"]["spawned"] == 3, before_stats
        r = d.cli("upgrade")
        assert r.returncode == 0, r.stderr + r.stdout
        assert shown(d) == {k: ("ready" if v[0] == "idle" else v[0], *v[1:])
                            for k, v in before.items()}
        after_stats = stats_of(d)
        total = after_stats["tasks"]["total"]
        assert (total["accepted"], total["succeeded"], total["failed"], total["running"]) == (
            1, 0, 0, 1), after_stats
        assert after_stats["supervisor"]["spawned"] == 0, after_stats  # (adopted: none)
        assert after_stats["agents"] == before_stats["agents"]
        release.touch()
        assert wait_until(lambda: (t := d.task(tid))["status"] != "running" and t,
                          what="its end")["attempts"][0]["outcome"] == "succeeded"
        # and they go on from there
        d.cli("run", "v", "--input", '{"do": "echo", "value": 4}')
        after = stats_of(d)["tasks"]["agents"]["v"]
        assert (after["accepted"], after["succeeded"], after["latency_ms"]["window"]) == (
            2, 2, 2), after
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_a_peer_tells_each_request_ended_either_way() -> None:
    """What the hand-over's wait for quiet channels is told by (decision 283): a request
    of the other side handled, an answer to ours taken, a request forgotten."""
    import asyncio

    from corral.jsonrpc import Peer

    sent: list[bytes] = []
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    peer = Peer("p", sent.append, dispatch=lambda method, params, p: gate)
    ends = peer.ends()

    def ended() -> tuple[bool, int, int]:
        """Whether a request ended since last asked (cleared, as the wait clears it)."""
        was = ends.is_set()
        ends.clear()
        return was, peer.handling, peer.in_flight

    peer.feed_line(b'{"jsonrpc":"2.0","id":1,"method":"theirs"}')
    forgotten, _ = peer.request_future("later", None)  # our 1
    ours = asyncio.ensure_future(peer.request("ours"))  # our 2
    await asyncio.sleep(0)
    assert ended() == (False, 1, 2)
    gate.set_result("done")
    await asyncio.sleep(0)
    assert ended() == (True, 0, 2)
    peer.feed_line(b'{"jsonrpc":"2.0","id":2,"result":5}')
    assert await ours == 5 and ended() == (True, 0, 1)
    peer.forget(forgotten)
    assert ended() == (True, 0, 0)


def test_a_plain_program_that_closed_its_stdout_is_kept_too() -> None:
    """Its log pipe at EOF is handed as such (a program that closes its stdout, as a
    daemon-style program does, does not hold the upgrade back)."""
    tmp = shared_tmpdir()
    d = Daemon(tmp, '[agents.q]\ncommand = ["sh", "-c", "exec >&-; echo alive >&2; '
                    'exec sleep 1000"]\nprotocol = "none"\n')
    try:
        d.start()
        assert d.proc is not None
        log = d.state / "logs" / "q.log"
        wait_until(lambda: log.exists() and "alive" in log.read_text(), what="its line")
        before = d.status()["q#0"]
        r = d.cli("upgrade")
        assert r.returncode == 0, r.stderr + r.stdout
        assert re.search(r": 1 agent process and 0 running tasks kept$", r.stdout.strip()), \
            r.stdout
        after = d.status()["q#0"]
        assert (after["pid"], after["restarts"], after["state"]) == (before["pid"], 0,
                                                                     "ready"), after
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_plain_program_not_ready_yet_refuses_the_upgrade_and_changes_nothing() -> None:
    """Its READY=1 not yet sent: it is waited for, as a worker's handshake is, and past
    the hand-over's 10 s the upgrade is refused, the program left as it was."""
    tmp = shared_tmpdir()
    d = Daemon(tmp, '[agents.n]\ncommand = ["sleep", "1000"]\nprotocol = "none"\n'
                    'ready = "notify"\nstart_timeout = 120.0\n')
    try:
        d.start(wait_ready=False)  # (READY=1 waits for every agent's readiness)
        assert d.proc is not None

        def started_process() -> bool:
            # (a replica shows "starting" before its process is made: wait for its pid)
            try:
                row = d.status()["n#0"]
            except Unreachable:  # (its socket not made yet)
                return False
            return row["state"] == "starting" and row["pid"] is not None

        wait_until(started_process, what="starting, with its process made")
        before = d.status()["n#0"]["pid"]
        started = time.monotonic()
        r = d.cli("upgrade", timeout=60)
        assert r.returncode == 1, r.stdout + r.stderr
        # (refused after the new install's check: the report says it, on stdout)
        assert r.stdout.strip() == (
            "corral: upgrade refused, nothing changed: n#0 could not be handed over within "
            "10 s (starting, stopping, or a request of its own still being answered)"), r
        assert 10 <= time.monotonic() - started < 40
        assert d.json("upgrade", "--report")["state"] == "refused"
        now = d.status()["n#0"]
        assert (now["pid"], now["state"], now["restarts"]) == (before, "starting", 0), now
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_the_gateways_address_goes_on_only_where_its_sockets_are_inherited(
        sup: Supervisor, tmp_path: Path) -> None:
    """The new image starts its HTTP parts after the adoptions: until then a replica
    started anew is given the address the old image gave, if the sockets it is served on
    are inherited for the addresses the config still names."""
    def config(listen: str) -> Config:
        path = tmp_path / "corral.toml"
        path.write_text(f'[http]\nlisten = "{listen}"\n')
        return load_config(path)

    def taken(url: str, listen: str) -> Takeover:
        h = Handoff(attempt=1, from_version="0", asked_at=0.0,
                    config="corral.toml", socket=None, control=(-1, -1),
                    issued=0, fallback=Fallback(python="", env={}, boot=""),
                    listeners=[Listener("http", listen, -1)], gateway=(url, None))
        return Takeover(h, tmp_path / "upgrade-handoff.json", None)

    url = "http://127.0.0.1:7070/mcp"
    cases = [(url, "127.0.0.1:7070", "127.0.0.1:7070", url),  # the same address
             (url, "127.0.0.1:7070", "127.0.0.1:7071", None),  # the config changed it
             ("", "127.0.0.1:7070", "127.0.0.1:7070", None)]  # none was given
    for carried, inherited, configured, expected in cases:
        gateway = GatewayService(sup.parts.agents, sup.parts.tools, sup.stream,
                                 lambda *row: None, sup.tasks)
        taken(carried, inherited).gateway_address(gateway, config(configured))
        assert (gateway.url, gateway.socket_path) == (expected, None), (carried, configured)


async def test_each_agents_first_replica_is_adopted_before_any_second(
        sup: Supervisor) -> None:
    """The new image adopts in slices (one, then doubling): with the replicas in the
    order they were handed, the last agent's dispatch waited for every replica of the
    agents before it."""
    for name in ("a", "b", "c"):
        sup.add(agent(name, replicas=3), start=False)
    handed = [r for name in ("a", "b", "c") for r in sup.parts.agents[name].replicas]
    assert [r.label for r in firsts_first(handed)] == [
        "a#0", "b#0", "c#0", "a#1", "a#2", "b#1", "b#2", "c#1", "c#2"]
    assert firsts_first([]) == []


def handed_process(owner: str, name: str, index: int
                   ) -> tuple[HandedProcess, ProcessRecord, subprocess.Popen[bytes]]:
    """A live process with its three pipes, described as an old image hands it over, and
    its record as the state database keeps it."""
    child_in, our_in = os.pipe()
    our_out, child_out = os.pipe()
    our_err, child_err = os.pipe()
    proc = subprocess.Popen([PY, "-c", "import sys; sys.stdin.buffer.read()"],
                            stdin=child_in, stdout=child_out, stderr=child_err,
                            start_new_session=True)
    for fd in (child_in, child_out, child_err):
        os.close(fd)
    st = read_stat(proc.pid)
    assert st is not None
    rec = ProcessRecord(token=f"{owner}.{1000 + index}", kind="agent", name=name,
                        replica=index, pid=proc.pid, start_time=st.start_time,
                        pgid=proc.pid, sid=proc.pid)
    return HandedProcess(token=rec.token, fds=[our_in, our_out, our_err]), rec, proc


async def test_the_first_adoption_is_attached_alone_and_the_others_after_it(
        sup: Supervisor) -> None:
    """Dispatch goes on as soon as one replica is Ready: the adoptions begun while the
    first is being attached (a mass start's slice) wait until it is, so that the turns
    its attach takes are not filled with theirs."""
    a = sup.add(agent("a", replicas=3), start=False)
    made = [handed_process(sup.parts.containment.owner, "a", i) for i in range(3)]
    seen: list[tuple[str, list[str]]] = []
    lost: list[str] = []
    adoptions = Adoptions(
        lambda r, h: seen.append((r.label, [x.label for x in a.replicas
                                            if x.machine.takes_work])),
        lambda h, why: lost.append(why))
    assert adoptions.expect([h for h, _, _ in made], {rec.token: rec for _, rec, _ in made}
                            ) == []
    sup.parts.containment.handed = adoptions.take
    try:
        for r in a.replicas:  # begun in one turn, as a mass start's slice
            r.start(by_hand=True)
        assert adoptions.first_over is not None and not adoptions.first_over.done()
        await asyncio.wait_for(adoptions.settled(), 10)
        assert lost == []
        assert seen[0] == ("a#0", [])  # alone
        assert [label for label, _ in seen[1:]] == ["a#1", "a#2"]
        assert all("a#0" in ready for _, ready in seen[1:]), seen  # after it was Ready
        assert adoptions.adopted == 3 and adoptions.first_over.done()
        assert [r.pid for r in a.replicas] == [p.pid for _, _, p in made]
        assert all(r.machine.takes_work for r in a.replicas)
    finally:
        await sup.remove("a")
        for _, _, proc in made:
            proc.wait(10)


async def test_what_the_old_image_did_not_hand_over_is_found_by_its_record_and_ended(
        sup: Supervisor, tmp_path: Path) -> None:
    """As after a crash, the new image finds the old one's processes by their records in
    the state database: one not handed is tracked from before anything starts, ended by
    `settle` and said started again; one handed is known by its record there (the state
    file names its token alone), and one handed of no record is no one's, its pipes
    closed (it ends on its stdin's end), as a crash would leave it."""
    owner = sup.parts.containment.owner
    handed, handed_rec, kept = handed_process(owner, "a", 0)
    other, other_rec, left = handed_process(owner, "zygote", 1)
    unrecorded, _, gone = handed_process(owner, "b", 2)
    zygote = msgspec.structs.replace(other_rec, kind="zygote")
    assert b'"pid"' not in msgspec.json.encode(handed)
    store = StateStore(tmp_path / "corral.db")
    writer = store.open_writer()
    try:
        # this process's incarnation is the row of its pid and start time (the exec kept
        # both), not an earlier one's of the same pid
        me = read_stat(os.getpid())
        assert me is not None
        store.begin_incarnation("earlier", os.getpid(), me.start_time - 1)
        store.begin_incarnation(owner, os.getpid(), me.start_time)
        writer.submit(StateStore.write_processes([handed_rec, zygote], []))
        await writer.committed()
        h = Handoff(attempt=1, from_version="0", asked_at=0.0,
                    config="corral.toml", socket=None, control=(-1, -1),
                    issued=0, fallback=Fallback(python="", env={}, boot=""),
                    processes=[handed, unrecorded])
        t = Takeover(h, tmp_path / "upgrade-handoff.json", None)
        # the daemon's uptime goes on from its process's start, which the exec kept
        assert abs(t.started_at - psutil.Process().create_time()) < 1.5, t.started_at
        t.go_on(sup, store)
        assert sup.parts.containment.owner == owner
        live = sup.parts.containment.live
        assert (t.ended, zygote.token in live, handed_rec.token in live) == (
            [zygote], True, False)
        assert (t.adoptions.waiting, t.adoptions.records[handed.token]) == (
            {("agent", "a", 0): handed}, handed_rec)
        unknown = f"process {unrecorded.token} (no record of it in the state database)"
        assert t.lost == [unknown]
        assert gone.wait(10) == 0  # (its stdin's end: our end closed)
        report = await t.settle(LogHub(None))
        # (the handed one no replica took, as an agent gone from the config)
        assert report.restarted == [
            "zygote zygote#1", "agent a#0", unknown,
            "a#0 (its agent's replica did not start in the new image)"], report
        assert (zygote.token in live, handed_rec.token in live) == (False, False)
        assert (read_stat(left.pid), read_stat(kept.pid)) == (None, None)
    finally:
        for fd in other.fds:
            os.close(fd)
        for proc in (kept, left, gone):  # (each reaped by `settle` when it passed)
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                if proc.poll() is None:
                    proc.kill()
        await store.close_writer()
        store.close()


async def test_the_collector_is_on_again_once_the_adoptions_are_over(
        sup: Supervisor, tmp_path: Path) -> None:
    """BOOT turns the collector off until the handed processes are adopted; `settle`
    turns it on again, and so does an adoption that fails (the image goes on)."""
    def taken() -> Takeover:
        h = Handoff(attempt=1, from_version="0", asked_at=0.0,
                    config="corral.toml", socket=None, control=(-1, -1),
                    issued=0, fallback=Fallback(python="", env={}, boot=""))
        t = Takeover(h, tmp_path / "upgrade-handoff.json", None)
        t.sup = sup
        return t

    assert gc.isenabled()
    try:
        gc.disable()
        report = await taken().settle(LogHub(None))
        assert gc.isenabled() and report.state == "done" and report.kept == 0

        async def fails() -> None:
            raise RuntimeError("the HTTP parts' import failed")

        gc.disable()
        try:  # (nothing handed: no start, so no first adoption, is waited for)
            await taken().adopt(fails)
        except RuntimeError as exc:
            assert str(exc) == "the HTTP parts' import failed"
        else:
            raise AssertionError("adopt did not raise")
        assert gc.isenabled()
    finally:
        gc.enable()


def test_the_new_installs_check_compiles_it_and_says_where_it_cannot(tmp_path: Path) -> None:
    """The check writes the new install's byte-code before the exec, so that the new
    image reads it in the dispatch pause rather than compiling: a module it imports only
    later too, and a .pyc older than its source (an install changed in place). The rest
    of the install compiled already (the check compiling the whole package was 2 s of
    CPU, and proved no more than its two files)."""
    root = install(tmp_path, "new")
    config = tmp_path / "corral.toml"
    config.write_text("")
    env = {**os.environ, IMPORT_VARIABLE: str(root)}
    later = root / "corral" / "daemon" / "http" / "server.py"  # (the HTTP parts')
    Path(importlib.util.cache_from_source(str(later))).unlink(missing_ok=True)
    stale = root / "corral" / "daemon" / "boot.py"
    pyc = Path(importlib.util.cache_from_source(str(stale)))
    py_compile.compile(str(stale), cfile=str(pyc))
    stale.write_text(stale.read_text() + "# changed in place\n")
    mtime = stale.stat().st_mtime + 10
    os.utime(stale, (mtime, mtime))

    def check() -> dict[str, Any]:
        r = subprocess.run([PY, "-c", PREFLIGHT, str(config)], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        said: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return said

    assert check()["compiled"] is True
    header = pyc.read_bytes()[:16]  # magic, flags, the source's mtime and size
    assert int.from_bytes(header[8:12], "little") == int(mtime)
    assert int.from_bytes(header[12:16], "little") == stale.stat().st_size
    assert Path(importlib.util.cache_from_source(str(later))).exists()
    # where the byte-code cannot be written (a file where its directory would be)
    cache = Path(importlib.util.cache_from_source(str(later))).parent
    shutil.rmtree(cache)
    cache.write_text("")
    assert check()["compiled"] is False


def test_an_upgrade_to_an_install_whose_byte_code_cannot_be_written_says_so() -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, worker("w"))
    try:
        d.start()
        before = pids(d)
        # compiled but the HTTP parts, whose byte-code directory is a file
        new = install(tmp, "v2")
        shutil.rmtree(new / "corral" / "daemon" / "http" / "__pycache__", ignore_errors=True)
        (new / "corral" / "daemon" / "http" / "__pycache__").write_text("")
        r = d.cli("upgrade", "--pythonpath", str(new))
        assert r.returncode == 0, r.stderr + r.stdout
        assert pids(d) == before
        log = (d.state / "logs" / "corral.log").read_text()
        assert ("upgrading: the new install's byte-code cannot be written; the new image "
                "compiles its modules as it starts, while dispatch is held") in log, log
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def held(pid: int) -> dict[int, str]:
    """The pipes, sockets and lock files process `pid` holds: fd -> what."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            what = os.readlink(f"/proc/{pid}/fd/{fd}")
            if what.startswith(("pipe:", "socket:")) or what.endswith(".lock"):
                out[int(fd)] = what
    return out


def test_a_child_the_new_image_spawns_holds_none_of_the_handed_fds() -> None:
    """The fds kept open across the exec (keep_open) are closed on exec again in the
    image that takes them: the tracing exporter, the new image's first child (started
    before the handed processes are adopted, by uvloop, which ignores close_fds), held
    the MCP server's stdin, which then never read its end at shutdown (SIGTERM after
    10 s), and the control socket, its lock file and the HTTP listening socket."""
    tmp = shared_tmpdir()
    d = Daemon(tmp, NOTES + f'[http]\nlisten = "127.0.0.1:{free_port()}"\n')
    exporter: psutil.Process | None = None
    try:
        d.start()
        assert d.proc is not None
        server = mcp_rows(d)["notes#0"]
        assert server["state"] == "ready", server
        with d.config.open("a") as f:  # tracing on from the upgrade (a new user's trial)
            f.write("\n[tracing]\nsample = 1.0\n")
        r = d.cli("upgrade")
        assert r.returncode == 0, r.stderr + r.stdout
        assert "1 MCP server" in r.stdout, r.stdout

        def spawned() -> psutil.Process | None:
            assert d.proc is not None
            return next((p for p in psutil.Process(d.proc.pid).children()
                         if "corral.daemon.traceexport" in p.cmdline()), None)

        exporter = wait_until(spawned, what="the tracing exporter")
        assert mcp_rows(d)["notes#0"]["pid"] == server["pid"]  # kept, not started again
        # the daemon's fds but its stdio (the exporter's stdin and stdout are socket
        # pairs of its own, its stderr the daemon's, which uvloop's spawn dups too)
        ours = held(d.proc.pid)
        std = {ours.get(fd) for fd in (0, 1, 2)}
        shared = {fd: what for fd, what in held(exporter.pid).items()
                  if what in ours.values() and what not in std}
        assert shared == {}, f"the exporter holds {shared}; the daemon {ours}"
        # the MCP server ends on its own when the daemon stops: its stdin is at its end
        assert d.stop() == 0
        log = (d.state / "logs" / "notes.log").read_text()
        assert "terminated: supervisor shutting down" in log, log
        assert "SIGTERM after" not in log, log
    finally:
        d.close()
        if exporter is not None and exporter.is_running():
            exporter.kill()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.deadline(360)
async def test_what_a_kept_replica_read_in_calls_of_no_task_still_taints_it() -> None:
    """A kept process keeps what it read: the untrusted fetcher's output read over the
    worker link in a call of no task before the upgrade, the replica's sensitive call of
    no task at the gateway's /mcp after it asks a person, as it did before (the
    incarnation's labels ride the state file with its pipes)."""
    from .test_taint import FLEET, denied_at_the_gateway, read_in_no_task

    d = Daemon(shared_tmpdir(), FLEET + '\n[gateway]\nlisten = "127.0.0.1:0"\n')
    try:
        await read_in_no_task(d)
        before = await asyncio.to_thread(pids, d)
        # (its MCP server and SDK agent handed, the new image started: a loaded host's
        # upgrade took more than the CLI's default wait)
        r = await asyncio.to_thread(d.cli, "upgrade", timeout=120)
        assert r.returncode == 0, r.stderr + r.stdout
        assert await asyncio.to_thread(pids, d) == before  # (the same process)
        await denied_at_the_gateway(d)
    finally:
        await asyncio.to_thread(d.close)
