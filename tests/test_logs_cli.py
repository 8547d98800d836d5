"""`corral logs`: lines filtered by text and stream in the daemon, and a follow that goes
on across a restart of the daemon (issue 36, "Habits")."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from .conftest import ROOT
from .daemon_harness import Daemon, corral_popen, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_tasks_cli import misbehave


def crashed(d: Daemon) -> None:
    """work's replica crashes once on a task (a stderr line, then exit events)."""
    r = d.cli("run", "work", "--input", '{"do": "crash"}')
    assert r.returncode == 1
    wait_until(lambda: d.status()["work#0"]["restarts"] == 1
               and d.status()["work#0"]["state"] == "ready", what="work restarted")


def test_logs_are_filtered_by_text_and_stream_in_the_daemon() -> None:
    with running_daemon(shared_tmpdir(), misbehave("work")) as d:
        crashed(d)
        every = d.cli("logs", "work", "-n", "1000").stdout.splitlines()
        assert any(" stderr: crashing on request" in ln for ln in every), every
        assert any(" event: " in ln for ln in every), every
        errs = d.cli("logs", "work", "--stream", "stderr", "-n", "1000").stdout.splitlines()
        assert errs and all(" stderr: " in ln for ln in errs), errs
        events = d.cli("logs", "work", "--stream", "event", "-n", "1000").stdout.splitlines()
        assert events and all(" event: " in ln for ln in events), events
        both = d.cli("logs", "work", "--stream", "event", "--stream", "stderr", "-n",
                     "1000").stdout.splitlines()
        assert sorted(both) == sorted(errs + events)
        hit = d.cli("logs", "work", "--grep", "crashing on", "-n", "1000").stdout.splitlines()
        assert len(hit) >= 2 and all("crashing on" in ln for ln in hit), hit
        assert [ln for ln in every if "crashing on" in ln] == hit
        hit = d.cli("logs", "work", "--grep", "crashing on", "--stream", "stderr", "-n",
                    "1000").stdout.splitlines()
        assert [ln.split(": ", 1)[1] for ln in hit] == ["crashing on request"], hit
        # the text is looked for in the line as printed: who and pid too
        ours = d.cli("logs", "--grep", "work#0[", "-n", "1000").stdout.splitlines()
        assert ours and all(" work#0[" in ln for ln in ours), ours
        # -n counts the lines kept, not the lines read
        assert len(d.cli("logs", "--stream", "event", "-n", "2").stdout.splitlines()) == 2
        # a fixed string: no pattern for the daemon to backtrack on
        assert d.cli("logs", "--grep", "(a+)+$").stdout == ""
        r = d.cli("logs", "--stream", "stdin")
        assert r.returncode == 2 and "Invalid value for '--stream'" in r.stderr
        r = d.cli("logs", "--grep", "x" * 1001)
        assert r.returncode == 2 and "--grep" in r.stderr, r.stderr


def test_the_in_memory_tail_is_bounded_by_lines_and_bytes(tmp_path: Path) -> None:
    """[supervisor] log_tail_lines 5 and log_tail_bytes 300: a filter reads a source's
    last 5 lines; a source of longer lines keeps at most 300 bytes of its last ones (its
    oldest batches let go, a longer one cut to its end)."""
    go = tmp_path / "go"
    short = [f"line {i}" for i in range(10, 30)]  # 8 bytes each: 160 in all
    wide = [f"{ln} {'.' * 30}" for ln in short]  # 40 bytes each
    agents = ""
    for name, said in (("short", short), ("wide", wide)):
        # (each says its lines once both are ready: after its last event)
        script = (f"while [ ! -e '{go}' ]; do sleep 0.05; done; "
                  + "".join(f"echo '{ln}'; " for ln in said) + "exec sleep 3600")
        agents += (f'[agents.{name}]\ncommand = ["sh", "-c", "{script}"]\n'
                   'protocol = "none"\n')
    with running_daemon(tmp_path, agents,
                        extra="log_tail_lines = 5\nlog_tail_bytes = 300") as d:
        wait_until(lambda: all(r["state"] == "ready" for r in d.status().values()),
                   what="both ready")
        go.touch()

        def said_by(*args: str) -> list[str]:
            return [ln.split(": ", 1)[1] for ln in
                    d.cli("logs", *args, "-n", "1000").stdout.splitlines()]
        wait_until(lambda: said_by("short")[-1:] == short[-1:]
                   and said_by("wide")[-1:] == wide[-1:], what="their last lines")
        assert said_by("short", "--grep", "line") == short[-5:]
        kept = said_by("wide")
        assert kept == wide[-len(kept):] and len(kept) * 40 <= 300, kept


def test_a_follow_goes_on_across_a_restart_of_the_daemon(tmp_path: Path) -> None:
    d = Daemon(shared_tmpdir(), misbehave("work"))
    follower = None
    try:
        d.start()
        follower = corral_popen(
            # its backlog holds the line too, however late the follow starts
            ["--socket", str(d.sock), "logs", "-f", "work", "--stream",
             "stderr", "--grep", "crashing on request", "-n", "1000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert follower.stdout is not None and follower.stderr is not None
        crashed(d)
        assert "crashing on request" in follower.stdout.readline()
        assert d.stop() == 0
        assert follower.stderr.readline() == "corral: lost the daemon; reconnecting\n"
        d.start()
        crashed(d)  # after the restart: the follow shows it, and not the earlier line again
        assert "crashing on request" in follower.stdout.readline()
        assert follower.poll() is None
        follower.send_signal(signal.SIGINT)
        assert follower.wait(30) == 130
        # a daemon that does not come back: the follow ends, exit 3, saying so
        follower = corral_popen(
            ["--socket", str(d.sock), "logs", "-f", "work",
             "--reconnect", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert follower.stdout is not None and follower.stderr is not None
        assert follower.stdout.readline()  # its backlog: it is following
        assert d.stop() == 0
        assert follower.wait(30) == 3
        assert follower.stderr.read().splitlines() == [
            "corral: lost the daemon; reconnecting",
            "corral: the daemon did not come back within 0.5 s"]
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait()
        d.close()
