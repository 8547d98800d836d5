"""Operator experience, end to end through the CLI against a real daemon (issue 10)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.cli.client import Client
from corral.supervisor.process import STDERR_RECENT

from .conftest import EXAMPLES, ROOT
from .daemon_harness import (
    PY,
    Daemon,
    config_text,
    corral_popen,
    corral_run,
    hello,
    running_daemon,
    shared_tmpdir,
)
from .test_daemon_cli import wait_until


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


MISBEHAVE = f"""
[agents.misbehave]
command = ["{PY}", "{EXAMPLES}/misbehave.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
restart = "always"
backoff_initial = 0.05
stop_timeout = 2.0
[agents.misbehave.limits]
memory_mb = 256
"""


def test_an_exit_reason_is_about_its_own_process_not_an_earlier_one(tmp: Path) -> None:
    with running_daemon(tmp, MISBEHAVE) as d:
        leak = d.cli("run", "misbehave", "--input", '{"do": "leak"}')
        assert leak.returncode == 1
        # past the cap the SDK does not answer: the worker exits and the task is lost
        # with the reason naming the cap (the README's promise), never "failed: MemoryError"
        assert leak.stderr.endswith(
            " lost: worker exited: memory limit (RLIMIT_AS 256 MiB)\n"), leak.stderr
        wait_until(lambda: (s := d.status()["misbehave#0"])["state"] == "ready"
                   and s["last_exit"] == "memory limit (RLIMIT_AS 256 MiB)", what="restart")
        assert d.cli("restart", "misbehave").returncode == 0
        crash = d.cli("run", "misbehave", "--input", '{"do": "crash"}')
        assert crash.returncode == 1
        # a plain exit 3: no cap named, the process's own last stderr line carried
        assert crash.stderr.endswith(
            " lost: worker exited: exited with status 3: crashing on request\n"), crash.stderr
        wait_until(lambda: d.status()["misbehave#0"]["last_exit"]
                   == "exited with status 3: crashing on request", what="status")


def test_an_agent_that_cannot_import_shows_why_it_failed_in_status(tmp: Path) -> None:
    broken = f"""
[agents.broken]
command = ["{PY}", "-c", "import corral_no_such_module"]
max_restarts = 1
backoff_initial = 0.05
"""
    with running_daemon(tmp, broken) as d:
        st = wait_until(lambda: (s := d.status()["broken#0"])["state"] == "failed" and s,
                        what="failed")
        assert st["last_exit"] == ("exited with status 1: ModuleNotFoundError: No module "
                                   "named 'corral_no_such_module'")
        assert st["reason"] == "too many restarts (1 within 60 s); last exit: " + st["last_exit"]
        table = d.cli("status", "broken")
        assert "ModuleNotFoundError: No module named 'corral_no_such_module'" in table.stdout


def test_cli_habits_of_supervisorctl_and_systemctl(tmp: Path) -> None:
    with running_daemon(tmp, hello("hello", replicas=2) + hello("other")) as d:
        assert d.cli("status").returncode == 0
        # NAME#N targets one replica; status then exits 3, like `systemctl status`
        r = d.cli("stop", "hello#1")
        assert (r.returncode, r.stdout) == (0, "stopped: hello#1\n")
        st = d.status()
        assert (st["hello#0"]["state"], st["hello#1"]["state"]) == ("ready", "terminated")
        assert d.cli("status").returncode == 3
        assert d.cli("status", "other").returncode == 0
        assert d.cli("start", "hello#1").stdout == "started: hello#1\n"
        wait_until(lambda: d.status()["hello#1"]["state"] == "ready", what="hello#1 ready")
        # an agent of no package: said, not a table's header over nothing
        assert d.cli("releases", "other").stdout == (
            "other: no releases (an agent deployed from a package has them: corral deploy "
            "PATH); its revisions: corral history other\n")
        # `info NAME` is describe, as `pm2 info NAME`; bare `info`, the daemon's
        assert d.cli("info", "other").stdout == d.cli("describe", "other").stdout
        assert d.cli("info").stdout.startswith("version: ")
        # what already runs is said to, not "started" (supervisorctl: "already started")
        assert d.cli("start", "all").stdout == (
            "already running, not started again: hello, other\n")
        r = d.cli("stop", "hello#7")
        assert (r.returncode, r.stderr) == (1, "corral: no such replica: hello#7 (hello has "
                                               "2 replicas)\n")
        # pid
        pids = {k: v["pid"] for k, v in d.status().items()}
        assert d.cli("pid", "hello#1").stdout == f"{pids['hello#1']}\n"
        assert d.cli("pid", "hello").stdout == f"{pids['hello#0']}\n{pids['hello#1']}\n"
        r = d.cli("pid", "hello#x")
        assert r.returncode == 2 and "the replica after '#' must be a number" in r.stderr
        # signal
        r = d.cli("signal", "TERM", "hello#0")
        assert r.stdout == f"SIGTERM sent to hello#0 (pid {pids['hello#0']})\n"
        wait_until(lambda: (s := d.status()["hello#0"])["state"] == "ready"
                   and s["pid"] != pids["hello#0"], what="hello#0 restarted")
        r = d.cli("signal", "BOGUS", "hello")
        assert (r.returncode, r.stderr) == (1, "corral: unknown signal: BOGUS (use a name like "
                                               "HUP, TERM, USR1, or a number)\n")
        # `all` as --all
        assert d.cli("restart", "all").stdout == "restarted: hello, other\n"
        r = d.cli("stop", "all", "other")
        assert r.returncode == 2 and "`all` means every agent" in r.stderr
        wait_until(lambda: all(a["state"] == "ready" for a in d.status().values()),
                   what="all ready")
        # a restart asked for reads as what it was, not as a fault
        assert d.status()["other#0"]["last_exit"] == "restarted on request"
        assert "last exit: restarted on request" in d.cli("status", "other").stdout
        # logs of one replica; tail = logs -f
        lines = d.cli("logs", "hello#1", "-n", "5").stdout.splitlines()
        assert lines and all(" hello#1[" in ln for ln in lines)
        f = corral_popen(["--socket", str(d.sock), "tail", "other",
                          "-n", "1"], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert f.stdout is not None and " other#0[" in f.stdout.readline()
            f.send_signal(signal.SIGINT)  # Ctrl-C: quiet, 130
            assert f.wait(30) == 130
        finally:
            f.kill()
            f.wait()
        # version, describe, info
        v = d.cli("version").stdout.splitlines()
        assert v[0] == "corral 0.1.0" and v[1].startswith("daemon 0.1.0 (pid ")
        desc = d.cli("describe", "hello").stdout.splitlines()
        assert f"origin: file {d.config}" in desc
        assert f"command: {shlex.join([PY, f'{EXAMPLES}/hello.py'])}" in desc
        assert "env keys: PYTHONPATH" in desc
        assert "replicas: 2  autostart: true" in desc
        # every key in effect, not only with --json: warm, preload, health, autoscale...
        spec = d.json("describe", "hello")["spec"]
        shown = {ln.split(":", 1)[0] for ln in desc}
        hidden = set(spec) - shown - {"name", "command", "env", "restart", "max_queue",
                                      "max_concurrent_tasks", "release", "version",
                                      "autostart", "group"}
        assert not {k for k in hidden if f"{k} = " not in " ".join(desc)}, desc
        assert {"warm: false", "preload: -", "health: -", "autoscale: -"} <= set(desc), desc
        info = d.cli("info").stdout
        assert re.search(r"^uptime: \d+s$", info, re.M), info
        # `run` without --input gives the task null (decision 168), as --help says
        r = d.cli("run", "hello", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["output"]["greeting"] == (
            "hello, world"), r.stderr  # examples/hello.py greets the world for null
        assert "(default: null, for an agent that takes none)" in " ".join(
            d.cli("run", "--help").stdout.split())
        # top has a pane of recent log lines
        top = d.cli("top", "-n", "1", "-l", "3").stdout
        assert "\n-- last 3 log lines --\n" in top


def test_a_replicas_label_as_status_prints_it_names_that_replica(tmp: Path) -> None:
    """`NAME#N`, copied from `corral status`, logs or events: status shows that replica
    alone; a command that takes an agent says the label is a replica's and names the
    agent; a watch (of whole agents) says so rather than watch for an agent never there."""
    with running_daemon(tmp, hello("hello", replicas=2)) as d:
        wait_until(lambda: all(a["state"] == "ready" for a in d.status().values()),
                   what="all ready")
        r = d.cli("status", "hello#1")
        assert r.returncode == 0, r.stderr
        assert [ln.split()[0] for ln in r.stdout.splitlines()] == ["AGENT", "hello#1"]
        assert [a["replica"] for a in d.json("status", "hello#1", "hello#0")["agents"]] \
            == [0, 1]
        assert [a["replica"] for a in d.json("status", "hello", "hello#1")["agents"]] \
            == [0, 1]
        for command in ("status", "pid"):
            r = d.cli(command, "hello#7")
            assert (r.returncode, r.stderr) == (1, "corral: no such replica: hello#7 (hello "
                                                   "has 2 replicas)\n"), command
        assert d.cli("pid", "hello#1").stdout == f"{d.status()['hello#1']['pid']}\n"
        r = d.cli("status", "hello#x")
        assert (r.returncode, r.stderr) == (1, "corral: hello#x: the replica after '#' "
                                               "must be a number\n")
        for args in (["describe", "hello#1"], ["history", "hello#1"],
                     ["scale", "hello#1", "3"], ["run", "hello#1"]):
            r = d.cli(*args)
            assert (r.returncode, r.stderr) == (1, "corral: no such agent: hello#1 (hello#1 "
                                                   "is a replica of `hello`: name the "
                                                   "agent)\n"), args
        r = d.cli("status", "--watch", "hello#1")
        assert (r.returncode, r.stderr) == (1, "corral: hello#1: a watch is of whole "
                                               "agents: name hello\n")
        assert len(d.status()) == 2  # nothing was scaled


def test_check_config_and_add_refuse_a_command_that_is_not_an_executable(tmp: Path) -> None:
    def check(text: str, *flags: str) -> subprocess.CompletedProcess[str]:
        p = tmp / "c.toml"
        p.write_text(text)
        return corral_run(["check-config", str(p), *flags],
                          env={**os.environ, "PYTHONPATH": str(ROOT)})

    # (its agent runs as root: this interpreter and tmp are out of a dynamic uid's reach)
    r = check("[supervisor]\ndynamic_uids = []\n" + hello("a"))
    assert (r.returncode, r.stdout) == (0, f"{tmp}/c.toml: ok (1 agent, 0 MCP servers)\n")
    r = check("[agents.a]\ncommand = 'corral-no-such-program --x'\n")
    assert r.returncode == 1
    assert r.stderr.startswith(f"corral: invalid config: {tmp}/c.toml: agents.a.command: "
                               "corral-no-such-program: not an executable on PATH (")
    assert check("[agents.a]\ncommand = 'corral-no-such-program'\n", "--no-check"
                 ).returncode == 0
    r = check("[agents.a]\ncommand = './missing.py'\n")
    assert r.stderr == (f"corral: invalid config: {tmp}/c.toml: agents.a.command: "
                        f"./missing.py: no such file ({tmp}/missing.py)\n")
    (tmp / "plain.py").write_text("")
    r = check("[agents.a]\ncommand = ['./plain.py']\n")
    assert r.stderr.endswith(f"./plain.py: not executable ({tmp}/plain.py)\n")
    r = check(hello("a", extra='restart = "unless-stopped"\n'))
    assert r.stderr.endswith("agents.a.restart: Invalid enum value 'unless-stopped' (valid: "
                             "'always', 'never', 'on-failure')\n")
    (tmp / "d").mkdir()
    with running_daemon(tmp / "d", "") as d:
        r = d.cli("add", "--name", "ghost", "--command", "corral-no-such-program")
        assert r.returncode == 1
        assert r.stderr.startswith("corral: agents.add: agents.ghost.command: "
                                   "corral-no-such-program: not an executable on PATH (")
        assert r.stderr.endswith("(--no-check to add it anyway)\n")
        assert d.cli("status", "ghost").returncode == 1  # nothing was added
        r = d.cli("add", "--name", "ghost", "--command", "corral-no-such-program",
                  "--no-check")
        assert (r.returncode, r.stdout) == (0, "added: ghost\n")


def _events(text: str, name: str) -> list[tuple[int, str]]:
    """(pid, new state) of each lifecycle event line of `name` in `corral logs` output."""
    pat = re.compile(rf" {name}#\d+\[(\d+)\] event: \w+ -> (\w+)")
    return [(int(m.group(1)), m.group(2)) for m in map(pat.search, text.splitlines()) if m]


def _lines_until(proc: subprocess.Popen[str], done: Callable[[str], bool]) -> str:
    """What `proc` printed until `done` holds of it or its output ends; past a minute it is
    killed, so a line that never comes fails the test's assertions, not its run."""
    assert proc.stdout is not None
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    text = ""
    try:
        while not done(text) and (line := proc.stdout.readline()):
            text += line
    finally:
        watchdog.cancel()
    return text


def test_a_rolling_restart_under_load_keeps_replicas_serving_and_loses_no_task(
        tmp: Path) -> None:
    work = MISBEHAVE.replace("[agents.misbehave", "[agents.work").replace(
        'restart = "always"', "replicas = 2")
    with running_daemon(tmp, work) as d:
        before = {k: v["pid"] for k, v in d.status().items()}
        follower = corral_popen(
            ["--socket", str(d.sock), "logs", "work", "-f", "-n", "0"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            wait_until(lambda: d.ask("daemon.info")["followers"] == 1, what="follower attached")
            with Client(d.sock) as c:  # a steady load: more work queued than the rollout
                ids = [c.call("tasks.submit", {"agent": "work",
                                            "input": {"do": "sleep", "seconds": 0.05}}
                              )["task_id"] for _ in range(60)]
            r = d.cli("restart", "work", "--rolling")
            assert (r.returncode, r.stdout) == (0, "restarted: work\n"), r.stderr
            with Client(d.sock) as c:
                done = [c.call("tasks.get", {"task_id": i, "wait": True}) for i in ids]
            assert [t["status"] for t in done] == ["succeeded"] * 60
            # the restart's answer may come before the follower printed the old processes'
            # last events: read until each one's `shutting_down` is there
            seen = _lines_until(follower, lambda text: all(
                (old, "shutting_down") in _events(text, "work") for old in before.values()))
        finally:
            follower.send_signal(signal.SIGINT)
            try:
                out, _ = follower.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                # Ctrl-C's exit is test_logs_cli's to hold (it waits for 130); this test
                # reads the events the follower printed (one run out of many saw it outlive
                # its SIGINT by a minute, not reproduced since)
                follower.kill()
                out, _ = follower.communicate(timeout=60)
        out = seen + out
        after = {k: v["pid"] for k, v in d.status().items()}
        assert set(after) == set(before) and not set(after.values()) & set(before.values())
        serving = dict.fromkeys(before.values(), True)
        lowest = 2
        for pid, state in _events(out, "work"):
            serving[pid] = state in ("ready", "busy", "idle")
            lowest = min(lowest, sum(serving.values()))
        assert lowest >= 2 - 1
        assert sum(serving.values()) == 2
        # each new process was ready before the old one of its replica began to stop
        for old in before.values():
            stop_at = next(i for i, (p, s) in enumerate(_events(out, "work"))
                           if p == old and s == "shutting_down")
            assert sum(serving[p] for p in after.values()) == 2
            assert any(p in after.values() and s == "ready"
                       for p, s in _events(out, "work")[:stop_at])


V_AGENT = "import os\nfrom corral.worker import run\nrun(lambda t, ctx: os.environ['V'])\n"


def _work(v: str, replicas: int) -> str:
    return (f'[agents.work]\ncommand = ["{PY}", "v.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}", V = "{v}" }}\nreplicas = {replicas}\n'
            'backoff_initial = 0.05\nstop_timeout = 2.0\n')


def test_reload_rolls_or_scales_history_rollback_and_kept_scale(tmp: Path) -> None:
    (tmp / "v.py").write_text(V_AGENT)  # answers with $V: which spec it runs
    d = Daemon(tmp, _work("1", 2))
    try:
        d.start()

        def reconfigure(v: str, replicas: int) -> None:
            d.config.write_text(config_text(_work(v, replicas), d.sock, d.state))

        def pids() -> dict[str, int]:
            return {k: v["pid"] for k, v in d.status().items()}

        def env_v() -> set[str]:
            return {d.json("run", "work", "--input", "null")["output"] for _ in range(4)}

        first = pids()
        reconfigure("2", 2)
        r = d.cli("reload")
        assert r.stdout.splitlines()[1].split() == ["agent", "work", "changed"]
        second = pids()
        assert not set(second.values()) & set(first.values())
        assert env_v() == {"2"}
        reconfigure("2", 3)  # replicas alone: a scale, the running replicas untouched
        assert d.cli("reload").returncode == 0
        wait_until(lambda: d.status().get("work#2", {}).get("state") == "ready", what="#2")
        third = pids()
        assert {k: third[k] for k in second} == second
        hist = d.json("history", "work")
        assert [(r["revision"], r["change"]) for r in hist["revisions"]] == [
            (1, "created"), (2, "env.V changed"), (3, "replicas 2 -> 3")]
        assert hist["revisions"][0]["who"] == "config file"
        assert re.fullmatch(r"uid \d+ pid \d+", hist["revisions"][1]["who"])
        table = d.cli("history", "work").stdout.splitlines()
        assert table[-1].startswith("* 3 ") and table[-1].endswith(" replicas 2 -> 3")
        # rollback, rolling, to revision 1: V=1 and two replicas
        r = d.cli("rollback", "work", "1")
        assert r.stdout == ("work: rolled back to revision 1 (now revision 4): env.V changed, "
                            "replicas 3 -> 2\n"), r.stderr
        back = pids()
        assert set(back) == {"work#0", "work#1"}
        assert env_v() == {"1"}
        # what the rollback changed, as any change is told (env's values are not shown)
        assert d.json("history", "work")["revisions"][-1]["change"] == (
            "rollback to revision 1: env.V changed, replicas 3 -> 2")
        table = d.cli("history", "work").stdout.splitlines()
        assert table[-1].startswith("* 4 ") and table[-1].endswith(
            " rollback to revision 1: env.V changed, replicas 3 -> 2")
        r = d.cli("rollback", "work", "99")
        assert (r.returncode, r.stderr) == (1, "corral: no revision 99 of work (its "
                                               "revisions kept: 1..4; see `corral history work`)\n")
        # a scale is kept across a daemon restart
        assert d.cli("scale", "work", "4").returncode == 0
        assert d.stop() == 0
        d.start()
        assert sorted(d.status()) == ["work#0", "work#1", "work#2", "work#3"]
        entries = d.json("audit")["entries"]
        methods = [e["method"] for e in entries]
        assert {"config.reload", "agents.rollback", "agents.scale"} <= set(methods)
        assert any(e["outcome"].startswith("error: no revision 99") for e in entries)
        # the table names who acted, as revisions do (a socket peer: its uid and pid)
        table = d.cli("audit", "-n", "3").stdout.splitlines()
        assert table[0].split()[:5] == ["TIME", "WHO", "TENANT", "METHOD", "OUTCOME"]
        assert " agents.scale " in table[-1] and " uid 0 pid " in table[-1], table
        assert d.stop() == 0
    finally:
        d.close()


def test_a_kill_long_after_an_unrelated_error_line_is_explained_by_the_signal_alone(
        tmp: Path) -> None:
    """A worker that printed an error for a task, then was `kill -9`ed well after: its exit
    reason names SIGKILL, not that line (issue 78: the on-call chased a 502 printed by an
    unrelated task 20 s before the kill)."""
    script = tmp / "noisy.py"
    script.write_text(
        "import sys\nfrom corral.worker import run\n\n"
        "def handle(task, ctx):\n"
        "    print('upstream said 502 Bad Gateway', file=sys.stderr, flush=True)\n"
        "    return 'noted'\n\n"
        "run(handle)\n")
    agent = f"""
[agents.noisy]
command = ["{PY}", "{script}"]
env = {{ PYTHONPATH = "{ROOT}" }}
restart = "always"
backoff_initial = 0.05
"""
    with running_daemon(tmp, agent) as d:
        assert d.cli("run", "noisy").returncode == 0
        pid = d.status()["noisy#0"]["pid"]
        # the line is in the worker's log: written, and older than an exit's moment once
        # STDERR_RECENT has passed
        wait_until(lambda: "upstream said 502 Bad Gateway" in d.cli("logs", "noisy").stdout,
                   what="the error line logged")
        threading.Event().wait(STDERR_RECENT + 0.5)  # the line's age is the point
        os.kill(pid, signal.SIGKILL)
        st = wait_until(lambda: (s := d.status()["noisy#0"])["pid"] not in (None, pid)
                        and s, what="the restart")
        assert st["last_exit"] == "killed by SIGKILL", st


def test_check_config_looks_commands_up_on_the_daemons_path_not_the_callers(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon runs the commands, with its PATH: check-config from a plain shell said
    `uvx: not an executable on PATH` of what the daemon finds (issue 78). With a daemon
    answering, its PATH is the one, and said when it is not the caller's."""
    tools = tmp / "daemon-bin"
    tools.mkdir()
    (tools / "corral-test-tool").write_text("#!/bin/sh\nexec sleep 600\n")
    (tools / "corral-test-tool").chmod(0o755)
    checked = tmp / "check.toml"
    checked.write_text('[agents.t]\ncommand = ["corral-test-tool"]\nprotocol = "none"\n')
    yours = os.environ["PATH"]
    monkeypatch.setenv("PATH", f"{tools}:{yours}")
    d = Daemon(tmp, hello("h")).start()
    try:
        monkeypatch.setenv("PATH", yours)
        r = d.cli("check-config", str(checked))
        pid = d.ask("daemon.info")["pid"]
        assert (r.returncode, r.stdout) == (0, f"{checked}: ok (1 agent, 0 MCP servers)\n")
        assert r.stderr == (f"corral: commands looked up on the running daemon's (pid {pid}) "
                            f"PATH ({tools}:{yours}), not yours\n")
    finally:
        d.close()
    # no daemon answers: the caller's (or an installed unit's) PATH, which has no such tool
    r = corral_run(["--socket", str(d.sock), "check-config", str(checked)])
    assert r.returncode == 1
    assert "corral-test-tool: not an executable on PATH" in r.stderr, r.stderr
