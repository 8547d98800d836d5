"""Chaos: an orchestrator that has spawned 20 of its 50 children has its daemon
SIGKILLed; the next daemon retries it, its first 20 spawns answered from the step journal
with the same children, and each of the 50 children runs once (tests/test_spawn.py has
the worker's own SIGKILL; docs/workflows.md#spawn)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from ..daemon_harness import Daemon
from ..test_spawn import counted, fleet
from .procs import wait_until


@pytest.mark.timeout(120)
def test_a_sigkilled_daemon_resumes_the_orchestrator_with_no_child_twice(tmp: Path) -> None:
    d = Daemon(tmp, fleet())
    marker, count = tmp / "marker", tmp / "count"
    try:
        d.start()
        task = {"children": 50, "stop_after": 20, "how": "hang", "marker": str(marker),
                "count": str(count)}
        r = d.cli("run", "orch", "--detach", "--input", json.dumps(task))
        assert r.returncode == 0, r.stderr
        task_id = r.stdout.strip()
        wait_until(lambda: marker.exists() and len(counted(count)) == 20, 30,
                   "20 children spawned and run")
        # a leaf appends to `count` before it answers: the kill must come after the
        # daemon has kept the 20 answers, else the 20th is lost with its daemon (no retry)
        wait_until(lambda: len(d.json("tasks", "--agent", "leaf", "--status", "succeeded",
                                      "--limit", "100")["tasks"]) == 20, 30,
                   "the 20 children's answers kept")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d.start()
        r = d.cli("task", task_id, "--wait", "--json")
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["status"] == "succeeded", info
        assert info["output"] == [i * 2 for i in range(50)]
        assert counted(count) == list(range(50))
        first, second = info["attempts"]
        assert first["outcome"] == "lost" and first["error"] == "daemon restarted"
        assert second["outcome"] == "succeeded" and second["replayed"] == 20
    finally:
        d.close()
