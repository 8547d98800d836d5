"""A stop by hand lasts until a start by hand (DESIGN 26): an agent (or one replica)
stopped with `corral stop` stays stopped across a graceful restart of the daemon, a
SIGKILL of it and an upgrade in place, `corral status` names who stopped it and when,
and `corral start` starts it and takes the mark away, so that the next daemon starts it
too."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from .daemon_harness import Daemon, hello
from .test_daemon_cli import wait_until
from .test_store_faults import caught_up, disk_full


def replicas(d: Daemon) -> dict[str, dict[str, object]]:
    return d.status()


def stopped_by_hand(d: Daemon, label: str, since: float, until: float) -> str:
    """The replica `label` is down, held by a stop by hand from this test's CLI made
    between `since` and `until`; returns who stopped it."""
    st = replicas(d)[label]
    assert st["state"] == "terminated", st
    assert st["pid"] is None, st
    who, when = st["stopped_by"], st["stopped_at"]
    assert isinstance(who, str) and who.startswith(f"uid {os.getuid()} pid "), st
    assert isinstance(when, float) and since <= when <= until, st
    return who


@pytest.mark.timeout(180)
def test_a_stop_by_hand_is_kept_across_a_restart_and_a_sigkill_until_a_start(
        tmp_path: Path) -> None:
    d = Daemon(tmp_path, hello("web", replicas=2) + hello("db", replicas=2))
    try:
        d.start()
        before = time.time()
        r = d.cli("stop", "web")
        assert r.returncode == 0, r.stderr
        r = d.cli("stop", "db#1")
        assert r.returncode == 0, r.stderr
        after = time.time()
        marks = {label: stopped_by_hand(d, label, before, after)
                 for label in ("web#0", "web#1", "db#1")}
        shown = replicas(d)
        assert (shown["db#0"]["state"], shown["db#0"]["stopped_by"]) == ("ready", None)
        # the table names who and when, in the reason's place
        text = d.cli("status").stdout
        line = next(x for x in text.splitlines() if x.startswith("web#0 "))
        assert f"stopped by {marks['web#0']} at " in line, text

        for how in (signal.SIGTERM, signal.SIGKILL):
            rc = d.stop(how)
            assert rc == (0 if how == signal.SIGTERM else -signal.SIGKILL)
            d.start()
            now = replicas(d)
            for label in ("web#0", "web#1", "db#1"):
                # held down, it reads as stopped, with why: not as never started
                assert (now[label]["state"], now[label]["pid"], now[label]["reason"]) == (
                    "terminated", None, "stopped by hand"), now
                assert (now[label]["stopped_by"], now[label]["stopped_at"]) == (
                    shown[label]["stopped_by"], shown[label]["stopped_at"]), now
            assert now["db#0"]["state"] == "ready", now
            line = next(x for x in d.cli("status").stdout.splitlines()
                        if x.startswith("web#0 "))
            assert line.split()[1] == "terminated" and \
                f"stopped by {marks['web#0']} at " in line, line
        # an upgrade in place: the running process is kept, the stopped ones stay so
        running = replicas(d)["db#0"]["pid"]
        r = d.cli("upgrade")
        assert r.returncode == 0, r.stderr + r.stdout
        now = replicas(d)
        assert (now["db#0"]["state"], now["db#0"]["pid"]) == ("ready", running), now
        for label in ("web#0", "web#1", "db#1"):
            assert (now[label]["state"], now[label]["pid"]) == ("terminated", None), now
            assert (now[label]["stopped_by"], now[label]["stopped_at"]) == (
                shown[label]["stopped_by"], shown[label]["stopped_at"]), now

        # a start by hand: it runs, the mark is gone, and the next daemon starts it
        r = d.cli("start", "web", "db#1")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: all(s["state"] == "ready" for s in replicas(d).values()),
                   what="all ready")
        assert all(s["stopped_by"] is None for s in replicas(d).values())
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        d.start()
        wait_until(lambda: all(s["state"] == "ready" for s in replicas(d).values()),
                   what="all ready after the SIGKILL")
        assert all(s["stopped_by"] is None for s in replicas(d).values())
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.timeout(180)
def test_a_stop_while_the_database_cannot_be_written_is_done_and_kept_once_it_can(
        tmp_path: Path) -> None:
    """A stop is never refused for want of the database (an operator stops a runaway
    agent on a full disk): it stops, and its mark is written once the database can be,
    so a SIGKILLed daemon's successor keeps it stopped."""
    d = Daemon(tmp_path, hello("w"), extra="task_journal = false")
    try:
        d.start()
        before = time.time()
        with disk_full(d):
            r = d.cli("stop", "w")
            assert (r.returncode, r.stdout, r.stderr) == (0, "stopped: w\n", "")
            assert d.status()["w#0"]["state"] == "terminated"
        after = time.time()
        caught_up(d)
        who = stopped_by_hand(d, "w#0", before, after)
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        d.start()
        assert stopped_by_hand(d, "w#0", before, after) == who
        assert d.status()["w#0"]["state"] == "terminated"
        assert d.stop() == 0
    finally:
        d.close()
