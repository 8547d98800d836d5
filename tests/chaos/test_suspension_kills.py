"""Chaos: tasks waiting for a person through SIGKILLs of their daemon, suspended and
resumed by replay (docs/approvals.md#waiting-without-a-process). Twelve tasks each make
two counted tool calls and ask a question; the daemon is SIGKILLed while they wait (their
attempts lost, retried, asking again), the test's clock moved past suspend_after (every
worker given back), half the questions answered and the daemon SIGKILLed at once (some
resumed attempts mid-flight), the rest answered by the next daemon. The invariants: every
task has exactly one outcome, succeeded with its own answer; every counted call was made
exactly once; no ask is left pending; no process of either daemon is left."""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ROOT
from ..daemon_harness import PY, Daemon
from .procs import by_owner, wait_until

HERE = Path(__file__).parent.parent
TASKS = 12


def fleet(tmp: Path) -> str:
    return textwrap.dedent(f"""
        [agents.asker]
        command = ["{PY}", "{HERE}/asking_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["counting__*"]
        suspend_after = 300
        retries = 2
        max_concurrent_tasks = {TASKS}
        stop_timeout = 2.0

        [mcp_servers.counting]
        command = ["{PY}", "{HERE}/servers/counting_mcp.py", "{tmp}/server-count"]
    """)


def pending(d: Daemon) -> dict[str, dict[str, Any]]:
    return {a["task_id"]: a for a in d.ask("approvals.list")["asks"]}


def answer(d: Daemon, ask_id: str, data: str) -> None:
    r = d.cli("approvals", "answer", ask_id, "--data", json.dumps(data))
    assert r.returncode == 0, r.stderr


def kill(d: Daemon) -> None:
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)


@pytest.mark.timeout(240)
def test_waiting_tasks_survive_kills_suspended_and_resumed_with_nothing_twice(
        tmp: Path) -> None:
    d = Daemon(tmp, fleet(tmp), extra="manual_clock = true")
    pids: list[int] = []
    try:
        d.start()
        assert d.proc is not None
        pids.append(d.proc.pid)
        ids = [d.ask("tasks.submit", {"agent": "asker", "input": {
            "prompt": f"q{j}", "calls": 2, "base": 10 * j}})["task_id"]
            for j in range(TASKS)]
        wait_until(lambda: len(pending(d)) == TASKS, 60, "every task's question")
        asks = {tid: a["id"] for tid, a in pending(d).items()}

        kill(d)  # while every task waits, on its worker
        d.start()
        pids.append(d.proc.pid)
        # each retried, its calls answered from the journal, waiting on the same ask
        wait_until(lambda: all(d.ask("tasks.get", {"task_id": t})["status"] == "waiting"
                               for t in ids), 60, "every retry waiting again")
        assert {t: a["id"] for t, a in pending(d).items()} == asks

        moved = d.cli("clock", "--advance", "10m")
        assert moved.returncode == 0, moved.stderr
        wait_until(lambda: all(d.ask("tasks.get", {"task_id": t})["status"] == "suspended"
                               for t in ids), 60, "every task suspended")
        for j, t in enumerate(ids[:TASKS // 2]):
            answer(d, asks[t], f"a{j}")
        kill(d)  # some resumed attempts mid-flight, others queued, the rest suspended
        d.start()
        pids.append(d.proc.pid)
        for j, t in enumerate(ids):
            if j >= TASKS // 2:
                answer(d, asks[t], f"a{j}")
        for j, t in enumerate(ids):
            done = d.ask("tasks.get", {"task_id": t, "wait": True})
            assert done["status"] == "succeeded", done
            assert done["output"]["answer"] == f"a{j}", done
        counted = sorted(int(x) for x in (tmp / "server-count").read_text().split())
        assert counted == sorted(10 * j + i for j in range(TASKS) for i in range(2))
        assert pending(d) == {}
        assert d.stop() == 0
        for pid in pids:
            wait_until(lambda p=pid: not by_owner(p), 15, f"no process of daemon {pid} left")
    finally:
        d.close()
