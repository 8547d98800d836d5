"""Chaos: a grandchild that double-forked and called setsid() (so no process group of its
agent's holds it) is gone after `corral stop`, after a SIGKILL of its agent, and after
`corral shutdown`, through the CLI of a real daemon (no delegated cgroup: the subreaper)."""

from __future__ import annotations

import os
import re
import signal
import textwrap
from collections.abc import Iterator

import pytest

from corral.supervisor.containment import read_stat

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .procs import wait_until

AGENT = textwrap.dedent(f"""
    [agents.escaper]
    command = ["{PY}", "{EXAMPLES}/misbehave.py"]
    env = {{ PYTHONPATH = "{ROOT}", MISBEHAVE = "escape" }}
    backoff_initial = 0.05
    stop_timeout = 1.0
""")


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with running_daemon(shared_tmpdir(), AGENT, extra='cgroups = "off"') as d:
        yield d


def escapees(d: Daemon) -> list[int]:
    out = d.cli("logs", "escaper", "-n", "1000").stdout
    return [int(p) for p in re.findall(r"stderr: escaped (\d+)", out)]


def running(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.state != "Z"


def gone(pid: int) -> None:
    wait_until(lambda: not running(pid), 10, f"escapee {pid} to be gone")


def escaped(d: Daemon, count: int) -> int:
    """The newest escapee, once `count` of them were reported; checks it did escape."""
    wait_until(lambda: len(escapees(d)) >= count, 10, f"escapee #{count}")
    pid = escapees(d)[count - 1]
    st = read_stat(pid)
    assert d.proc is not None and st is not None
    agent_pid = d.status()["escaper#0"]["pid"]
    # re-parented to the daemon (the subreaper), in a session that is not its agent's
    assert st.ppid == d.proc.pid and st.sid != agent_pid
    return pid


@pytest.mark.timeout(60)
def test_an_escaped_grandchild_is_gone_after_stop_agent_sigkill_and_shutdown(
        daemon: Daemon) -> None:
    d = daemon
    first = escaped(d, 1)
    assert d.cli("stop", "escaper").returncode == 0
    gone(first)

    assert d.cli("start", "escaper").returncode == 0
    second = escaped(d, 2)
    os.kill(d.status()["escaper#0"]["pid"], signal.SIGKILL)
    gone(second)

    third = escaped(d, 3)  # the restarted agent's own
    assert running(third)
    info = d.json("info")["containment"]
    assert info["mode"] == "off" and info["cgroup"] is None and info["subreaper"] is True
    assert info["notice"] == "cgroups: off (configured); containment by subreaper and records"
    assert info["processes"] == 1 and info["orphans_killed"] >= 2
    # two exits, two or three passes each (now, next tick); none while idle
    assert 2 <= info["proc_passes"] <= 8, info
    assert d.cli("shutdown").returncode == 0
    assert d.proc is not None and d.proc.wait(20) == 0
    gone(third)
