"""`requires` and `fatal` (issue 57): an agent that requires another starts after it and
is stopped when it fails for good (systemd's Requires=); an agent that is fatal stops the
daemon, exit status 1, when it fails for good (a container's main program)."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

from .daemon_harness import Daemon, corral_run, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until

ROOT = Path(__file__).resolve().parent.parent
# up a moment, then fails; restarted once, then given up: failed for good
FAILS = textwrap.dedent("""
    command = ["sh", "-c", "sleep 1; exit 3"]
    protocol = "none"
    restart = "on-failure"
    max_restarts = 1
    backoff_initial = 0.05
""")


def test_an_agent_is_stopped_when_what_it_requires_fails_for_good() -> None:
    tmp = shared_tmpdir()
    agents = "[agents.db]\n" + FAILS + textwrap.dedent("""
        [agents.app]
        command = ["sleep", "1000"]
        protocol = "none"
        requires = ["db"]

        [agents.bystander]
        command = ["sleep", "1000"]
        protocol = "none"
        after = ["db"]
    """)
    with running_daemon(tmp, agents) as d:
        wait_until(lambda: d.status()["db#0"]["state"] == "failed", timeout=30,
                   what="db failed for good")
        wait_until(lambda: d.status()["app#0"]["state"] == "terminated",
                   what="app stopped with it")
        st = d.status()
        # what only waits for db (after) runs on
        assert st["bystander#0"]["state"] == "ready"
        logs = d.cli("logs", "app", "-n", "50").stdout
        assert "requires db, which failed" in logs
        # and app started after db was up: its first line after db's start
        first = d.cli("logs", "db", "app", "-n", "100").stdout.splitlines()
        starts = [ln.split(" ", 2)[1].split("[")[0] for ln in first if "-> starting" in ln]
        assert starts[:2] == ["db#0", "app#0"]


def test_an_agent_requiring_one_that_failed_before_it_started_is_never_started() -> None:
    tmp = shared_tmpdir()
    flag = tmp / "db-may-run"
    agents = textwrap.dedent(f"""
        [agents.db]
        command = ["sh", "-c", "[ -e {flag} ] && exec sleep 1000; exit 3"]
        protocol = "none"
        start_secs = 0.5
        start_retries = 0

        [agents.app]
        command = ["sleep", "1000"]
        protocol = "none"
        requires = ["db"]
    """)
    with running_daemon(tmp, agents) as d:
        wait_until(lambda: d.status()["db#0"]["state"] == "failed", timeout=30,
                   what="db failed to start, for good")
        # never started (with `after` alone it would start now: a failed agent is as far
        # up as it goes), and said
        wait_until(lambda: "agent app is not started: it requires db, which failed" in
                   d.cli("logs", "corral", "-n", "50").stdout, what="the line said")
        app = d.status()["app#0"]
        assert (app["state"], app["pid"]) == ("initial", None)
        assert "-> starting" not in d.cli("logs", "app", "-n", "20").stdout
        # db up again does not start it: its start waits for the operator, as any stop's
        flag.touch()
        d.cli("start", "db")
        wait_until(lambda: d.status()["db#0"]["state"] == "ready", what="db up")
        assert d.status()["app#0"]["state"] == "initial"
        d.cli("start", "app")
        wait_until(lambda: d.status()["app#0"]["state"] == "ready", what="app started")


def test_a_fatal_agent_that_fails_for_good_stops_the_daemon_exit_status_1() -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, "[agents.main]\n" + FAILS + "fatal = true\n" + textwrap.dedent("""
        [agents.side]
        command = ["sleep", "1000"]
        protocol = "none"
    """))
    try:
        d.start()
        assert d.proc is not None
        assert d.proc.wait(60) == 1
        log = (d.state / "logs" / "corral.log").read_text()
        assert "agent main failed for good and is fatal = true: stopping the daemon" in log
        assert "shutting down: stopping all agents" in log
    finally:
        d.close()


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return corral_run(["check-config", "--no-check", str(p)],
                      env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_check_config_names_requires_in_a_cycle_or_an_unknown_agent(tmp_path: Path) -> None:
    r = check(tmp_path, "[agents.a]\ncommand = 'true'\nrequires = ['b']\n"
                        "[agents.b]\ncommand = 'true'\nafter = ['a']\n")
    assert (r.returncode, r.stderr) == (
        1, f"corral: invalid config: {tmp_path}/c.toml: agents.a.requires: a cycle: "
           "a -> b -> a\n")
    r = check(tmp_path, "[agents.a]\ncommand = 'true'\nrequires = ['redis']\n")
    assert (r.returncode, r.stderr) == (
        1, f"corral: invalid config: {tmp_path}/c.toml: agents.a.requires: no agent redis "
           "is declared\n")
