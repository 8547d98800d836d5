"""A worker that floods corral with requests and never reads the answers (issue 26): the
daemon's memory stays bounded, the worker is restarted as hung on its stdin, and an agent
beside it keeps answering throughout."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from corral.cli.client import Client

from ..conftest import ROOT
from ..daemon_harness import PY, hello, running_daemon
from .procs import PeakRss, by_owner, wait_until

MiB = 1024 * 1024
FLOODER = ROOT / "tests" / "flood_worker.py"
UNREAD = re.compile(r"hung: \d+ bytes sent to it unread for 2 s")


@pytest.mark.timeout(60)
def test_a_worker_that_floods_and_never_reads_is_bounded_and_restarted(tmp: Path) -> None:
    agents = hello("hello") + f"""
[agents.flooder]
command = ["{PY}", "{FLOODER}"]
env = {{ FLOOD_REQUESTS = "1000000" }}
max_restarts = 1000
backoff_initial = 0.05
backoff_max = 0.2
stop_timeout = 1.0
"""
    pid = -1
    try:
        with running_daemon(tmp, agents) as d, Client(d.sock, timeout=10) as c:
            assert d.proc is not None
            pid = d.proc.pid
            flood_and_check(d.proc.pid, c)
    finally:
        # a daemon killed after a failure leaves its agents running (their own sessions)
        for st in by_owner(pid):
            os.kill(st.pid, signal.SIGKILL)


def flood_and_check(pid: int, c: Client) -> None:
    """The flood, a task every 50 ms on the healthy agent beside it, and the checks."""
    daemon = psutil.Process(pid)

    def status() -> dict[str, dict[str, object]]:
        return {a["name"]: a for a in c.call("agents.status", {})["agents"]}

    wait_until(lambda: status()["hello"]["state"] == "ready", 20, "hello to be ready")
    answered, slowest = 0, 0.0
    with PeakRss(daemon) as peak:
        # tasks one after the other on the healthy agent until the flooder has been
        # taken down three times (each flood fills corral's budget in milliseconds,
        # then the heartbeat timeout of 2 s runs out)
        deadline = time.monotonic() + 30
        while (flooder := status()["flooder"])["restarts"] < 3:
            assert time.monotonic() < deadline, f"the flooder was not restarted: {flooder}"
            t0 = time.monotonic()
            res = c.call("tasks.run", {"agent": "hello", "input": {"name": answered}})
            slowest = max(slowest, time.monotonic() - t0)
            assert res["status"] == "succeeded" and \
                res["output"]["greeting"] == f"hello, {answered}", res
            answered += 1
            time.sleep(0.05)  # a steady trickle: the flood's cost is what is measured
    base = peak.base
    # measured: +9 MiB; before the budget, +550 MiB per flood, 230 MiB kept after
    assert peak.peak - base < 64 * MiB, (base, peak.peak)
    assert answered >= 40 and slowest < 2.0, (answered, slowest)  # measured: 0.2-0.5 s, loaded
    assert UNREAD.fullmatch(str(flooder["last_exit"])), flooder
    restarts = c.call("stats.get", {})["supervisor"]["restarts_by_cause"]
    assert restarts.get("unread", 0) >= 3 and set(restarts) == {"unread"}, restarts
    hello_status = status()["hello"]
    assert hello_status["state"] in ("ready", "idle") and hello_status["restarts"] == 0
    # the flooder gone, what its floods cost is given back (or never taken)
    c.call("agents.stop", {"names": ["flooder"]})
    wait_until(lambda: status()["flooder"]["state"] == "terminated", 20,
               "the flooder to stop")
    assert daemon.memory_info().rss - base < 16 * MiB, (base, daemon.memory_info().rss)
