"""Chaos: a daemon firing a schedule every second is SIGKILLed after some fires and
started again; each fire time ran its task at most once (the fire is written before its
task is submitted: a kill between the two loses that fire, never repeats it), the count
in the store went on from where it was, and the schedule fires on after the restart
(docs/workflows.md#schedules)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from ..daemon_harness import Daemon
from ..test_schedules import LEAF, counted, schedule
from .procs import wait_until


def fires(d: Daemon) -> int:
    r = d.cli("schedules", "--json")
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["schedules"][0]["fires"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("after", [2, 3])
def test_a_sigkilled_daemon_repeats_no_fire(tmp: Path, after: int) -> None:
    count = tmp / "count"
    # the fire's task at most once too (retry_lost = 0): a task the kill caught at work,
    # its run counted, would otherwise run again by the delivery contract, not by a fire
    d = Daemon(tmp, LEAF + "retry_lost = 0\n",
               schedule("tick", count, 1, 'every = "1s"\nmissed = "skip"\n'))
    try:
        d.start()
        wait_until(lambda: len(counted(count)) >= after, 30, f"{after} fires run")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d.start()
        before = fires(d)
        assert before >= after
        wait_until(lambda: fires(d) >= before + 2, 30, "two fires after the restart")
        d.cli("schedules", "pause", "tick")
        total = fires(d)
        # every fire's task has run (or was lost with the daemon): at most once each
        wait_until(lambda: len(counted(count)) >= total - 1, 30, "the fires' tasks")
        assert total - 1 <= len(counted(count)) <= total
    finally:
        d.close()
