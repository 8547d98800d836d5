"""A restart on a schedule (issue 57): `restart_cron` restarts an agent at each minute
its cron fields match, gracefully (a protocol agent rolling, a plain program stopped and
started), a replica stopped by hand left stopped; a cron corral cannot read is refused at
load; PM2's cron_restart is imported as it."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

from .daemon_harness import corral_run, hello, running_daemon, shared_tmpdir
from .forkserver import interpreter_settings
from .test_daemon_cli import wait_until

ROOT = Path(__file__).resolve().parent.parent
# a CLI's own environment, with this interpreter's settings: forked from the fork server
# (tests/forkserver.py), not started and its modules imported anew
BARE = {**interpreter_settings(os.environ), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}


def fleet(cron: str) -> str:
    return hello("chat", extra=f'restart_cron = "{cron}"\n') + textwrap.dedent(f"""
        [agents.plain]
        command = ["sleep", "600"]
        protocol = "none"
        restart_cron = "{cron}"

        [agents.held]
        command = ["sleep", "600"]
        protocol = "none"
        restart_cron = "{cron}"
    """)


def test_each_matching_minute_restarts_the_agent_gracefully_but_one_stopped_by_hand(
        ) -> None:
    # the daemon's clock is a manual one, and the minute matched half an hour away: only
    # the test's move of the clock reaches it, not the wall's
    at = time.gmtime(time.time() + 30 * 60)
    cron = f"{at.tm_min} {at.tm_hour} * * *"
    with running_daemon(shared_tmpdir(), fleet(cron), extra="manual_clock = true") as d:
        wait_until(lambda: all(s["state"] == "ready" for s in d.status().values()),
                   what="all ready")
        assert d.cli("stop", "held").returncode == 0
        before = {k: s["pid"] for k, s in d.status().items()}
        said = d.state / "logs" / "corral.log"
        assert "restarting on its schedule" not in said.read_text()
        assert d.cli("clock", "--advance", "31m").returncode == 0
        wait_until(lambda: all((s := d.status()[k])["state"] == "ready"
                               and s["pid"] not in (None, before[k])
                               for k in ("chat#0", "plain#0")),
                   what="chat and plain restarted on their schedule")
        st = d.status()
        assert (st["held#0"]["state"], st["held#0"]["pid"]) == ("terminated", None)
        for name in ("chat", "plain"):
            assert f"{name}: restarting on its schedule (restart_cron {cron})" in said.read_text()
        assert "held: restarting on its schedule" not in said.read_text()
        # not a failure: the restart policy's count is untouched
        assert (st["chat#0"]["restarts"], st["plain#0"]["restarts"]) == (0, 0)


def test_a_cron_corral_cannot_read_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        '[agents.a]\ncommand = "sleep 1"\nprotocol = "none"\nrestart_cron = "0 3 * *"\n')
    r = corral_run(["check-config", "--no-check", "c.toml"], env=BARE, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ('corral: invalid config: c.toml: agents.a: restart_cron: cron '
                        '"0 3 * *": expected 5 fields (minute hour day month weekday), '
                        "got 4\n")


def test_pm2s_cron_restart_is_imported_as_restart_cron(tmp_path: Path) -> None:
    (tmp_path / "eco.json").write_text(
        '{"apps": [{"name": "nightly", "script": "job.sh", "cron_restart": "0 3 * * *"},'
        ' {"name": "secs", "script": "job.sh", "cron_restart": "*/30 * * * * *"}]}')
    r = corral_run(["import", "eco.json"], env=BARE, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'restart_cron = "0 3 * * *"' in r.stdout.split("[agents.secs]")[0]
    assert "restart_cron" not in r.stdout.split("[agents.secs]")[1]
    assert r.stderr == (
        'corral import: eco.json: apps[1] (secs): cron_restart: "*/30 * * * * *": not '
        'carried: cron "*/30 * * * * *": expected 5 fields (minute hour day month '
        "weekday), got 6 (corral's restart_cron is five fields, minutes first)\n")


def test_an_imported_pm2_cron_restart_restarts_the_app_when_the_manual_clock_passes_it(
        ) -> None:
    """PM2's cron_restart as `corral import` writes it, the daemon's clock a manual one
    moved past the time by `corral clock --advance`: the app is restarted then."""
    tmp = shared_tmpdir()
    at = time.gmtime(time.time() + 3 * 3600)
    (tmp / "eco.json").write_text(
        '{"apps": [{"name": "nightly", "script": "sleep", "args": ["600"], '
        f'"cron_restart": "{at.tm_min} {at.tm_hour} * * *"}}, '
        '{"name": "once", "script": "sleep", "args": ["600"], "autorestart": false, '
        '"instances": 2, "min_uptime": 1000, '
        f'"cron_restart": "{at.tm_min} {at.tm_hour} * * *"}}]}}')
    r = corral_run(["import", "eco.json"], env=BARE, cwd=tmp)
    assert r.returncode == 0, r.stderr
    (tmp / "d").mkdir()
    with running_daemon(tmp / "d", r.stdout, extra="manual_clock = true") as d:
        wait_until(lambda: d.status()["nightly#0"]["state"] == "ready", what="started")
        pid = d.status()["nightly#0"]["pid"]
        assert d.cli("clock", "--advance", "1d").returncode == 0
        wait_until(lambda: d.status()["nightly#0"]["pid"] not in (None, pid)
                   and d.status()["nightly#0"]["state"] == "ready", what="restarted")
        # every replica, a PM2 app that is never restarted by its policy among them, each
        # saying why it was (no failure counted)
        wait_until(lambda: all(s["last_exit"] == "restarted on request (restart_cron)"
                               and s["pid"] is not None for s in d.status().values()),
                   what="each replica restarted on the schedule")
        assert [s["restarts"] for s in d.status().values()] == [0, 0, 0]
