"""`corral stats` counts the restarts of the agents there are, as its rows do; those of
replicas no longer there (an agent removed, a replica scaled down) are said apart
(`supervisor.restarts_removed`), and the engine's total is kept on the wire."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from .daemon_harness import Daemon, hello, running_daemon
from .test_daemon_cli import wait_until


def crashed_and_back(d: Daemon, replica: str, restarts: int) -> None:
    os.kill(d.status()[replica]["pid"], signal.SIGKILL)
    wait_until(lambda: (s := d.status()[replica])["restarts"] == restarts
               and s["state"] == "ready", what=f"{replica} restarted")


def header(d: Daemon) -> str:
    r = d.cli("stats")
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()[0]


def restarts_said(d: Daemon) -> tuple[str, int, int]:
    """What the header says of restarts; the wire's total and removed ones'."""
    line = header(d)
    said = line[line.index("restarts ") + 9:line.index("  failures")]
    sup = d.json("stats")["supervisor"]
    return said, sup["restarts"], sup["restarts_removed"]


def test_stats_counts_restarts_of_the_agents_there_are(tmp_path: Path) -> None:
    with running_daemon(tmp_path, hello("gone") + hello("kept")) as d:
        assert restarts_said(d) == ("0", 0, 0)
        crashed_and_back(d, "gone#0", 1)
        assert restarts_said(d) == ("1", 1, 0)
        r = d.cli("remove", "gone")
        assert (r.returncode, r.stdout) == (0, "removed: gone\n"), r.stderr
        assert restarts_said(d) == ("0 (and 1 of removed agents and replicas)", 1, 1)
        assert "gone" not in d.json("stats")["agents"]
        # a replica scaled down takes its restarts with it; the agent's own stay counted
        assert d.cli("scale", "kept", "2").returncode == 0
        wait_until(lambda: d.status().get("kept#1", {}).get("state") == "ready")
        crashed_and_back(d, "kept#0", 1)
        crashed_and_back(d, "kept#1", 1)
        assert restarts_said(d) == ("2 (and 1 of removed agents and replicas)", 3, 1)
        assert d.cli("scale", "kept", "1").returncode == 0
        wait_until(lambda: "kept#1" not in d.status(), what="kept#1 gone")
        assert restarts_said(d) == ("1 (and 2 of removed agents and replicas)", 3, 2)
        row = next(line.split() for line in d.cli("stats").stdout.splitlines()
               if line.startswith("kept "))
        assert row[:3] == ["kept", "1/1", "1"], row
