"""Chaos: a task making 10 tool calls has its daemon SIGKILLed after call k; the next
daemon retries it, answering calls 1..k from the step journal (SQLite), and the MCP
server has seen exactly 10 calls. The same for `ctx.step` around a counted function.
(The worker's own SIGKILL is tests/test_durable.py's; docs/durable.md.)"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from ..daemon_harness import Daemon
from ..test_durable import fleet, lines
from .procs import wait_until


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("k", "named"), [(1, False), (5, False), (9, False), (5, True)])
def test_a_sigkilled_daemon_retries_the_task_with_no_call_made_twice(
        tmp: Path, k: int, named: bool) -> None:
    d = Daemon(tmp, fleet(tmp))
    marker, counter = tmp / "marker", tmp / "counter"
    try:
        d.start()
        task = {"calls": 10, "stop_after": k, "how": "hang", "marker": str(marker),
                "named": named, "counter": str(counter)}
        r = d.cli("run", "durable", "--detach", "--input", json.dumps(task))
        assert r.returncode == 0, r.stderr
        task_id = r.stdout.strip()
        wait_until(marker.exists, 30, f"the worker past call {k}")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d.start()
        r = d.cli("task", task_id, "--wait", "--json")
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["status"] == "succeeded", info
        counted = lines(counter if named else tmp / "server-count")
        assert counted == [str(i) for i in range(1, 11)]
        first, second = info["attempts"]
        assert first["outcome"] == "lost" and first["error"] == "daemon restarted"
        assert second["outcome"] == "succeeded" and second["replayed"] == k
        assert "diverged" not in second
        # and `corral task ID` says so
        shown = d.cli("task", task_id).stdout
        assert f"{k} steps replayed" in shown, shown
    finally:
        d.close()
