"""A manual clock ([supervisor] manual_clock = true) is the clock of every wait for a
person, not only `suspend_after` (issue 72): an approval's `approve_timeout` and a
question's `timeout` do not end by the wall's seconds under it, and `corral clock
--advance` past them times them out with the message the wall's clock would have given.
The manual clock stands still between moves.

Real processes: the daemon (a subprocess), SDK workers (tests/asking_agent.py), a real
MCP server that counts its calls (tests/servers/counting_mcp.py)."""

from __future__ import annotations

import json
import sqlite3
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc

from .conftest import ROOT
from .daemon_harness import PY, Daemon, shared_tmpdir
from .test_daemon_cli import wait_until

HERE = Path(__file__).parent
TIMEOUT = 1  # the asks' own timeouts: a second of the wall passes them in the test


def fleet(tmp: Path) -> str:
    asker = textwrap.dedent(f"""
        command = ["{PY}", "{HERE}/asking_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["counting__*"]
    """)
    return (f"[agents.asker]{asker}\n"
            f"[agents.approver]{asker}approve = [\"counting__bump\"]\n"
            f"approve_timeout = {TIMEOUT}\n\n"
            f'[mcp_servers.counting]\ncommand = ["{PY}", "{HERE}/servers/counting_mcp.py", '
            f'"{tmp}/server-count"]\n')


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    d = Daemon(tmp, fleet(tmp), extra="manual_clock = true")
    try:
        d.start()
        yield d
    finally:
        d.close()


def clock(d: Daemon) -> dict[str, Any]:
    shown = d.cli("clock", "--json")
    assert shown.returncode == 0, shown.stderr
    moved: dict[str, Any] = json.loads(shown.stdout)
    return moved


def pending_past_its_deadline_by_the_wall(d: Daemon, task_id: str) -> dict[str, Any]:
    """The task's one ask, once the wall has passed its deadline by a second: still
    pending, the clock where it stood."""
    ask = wait_until(lambda: d.ask("approvals.list")["asks"], 30, "the task's ask")[0]
    assert ask["task_id"] == task_id
    before = clock(d)
    assert ask["deadline"] == pytest.approx(ask["created"] + TIMEOUT)
    wait_until(lambda: time.time() > ask["deadline"] + 1, 10, "the wall past the deadline")
    wait_until(lambda: time.time() > before["time"] + TIMEOUT + 1, 10, "the wall past it")
    assert d.ask("approvals.get", {"id": ask["id"]})["end"] is None
    assert d.ask("tasks.get", {"task_id": task_id})["status"] == "waiting"
    assert clock(d) == before  # (standing still: nothing moved it)
    return dict(ask)


def advance_past(d: Daemon, ask: dict[str, Any]) -> None:
    moved = d.cli("clock", "--advance", f"{TIMEOUT + 1}s")
    assert moved.returncode == 0, moved.stderr
    assert f"(manual, moved {TIMEOUT + 1} s)" in moved.stdout, moved.stdout
    wait_until(lambda: d.ask("approvals.get", {"id": ask["id"]})["end"] == "timed_out", 30,
               "the ask timed out")


@pytest.mark.deadline(120)
def test_an_approval_times_out_by_the_manual_clock_not_the_wall(daemon: Daemon) -> None:
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "approver", "input": {"calls": 1}})["task_id"]
    ask = pending_past_its_deadline_by_the_wall(d, task_id)
    advance_past(d, ask)
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    assert done["output"]["bumped"] == [
        f"tool call counting__bump was not approved within {TIMEOUT} s "
        f"(approve_timeout; ask {ask['id']})"]
    assert not (d.dir / "server-count").exists()  # never made


@pytest.mark.deadline(120)
def test_a_question_times_out_by_the_manual_clock_not_the_wall(daemon: Daemon) -> None:
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "asker", "input": {
        "prompt": "Still there?", "timeout": TIMEOUT}})["task_id"]
    ask = pending_past_its_deadline_by_the_wall(d, task_id)
    advance_past(d, ask)
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    assert done["output"] == {"refused": f"task/ask: question {ask['id']} had no answer "
                                         f"within {TIMEOUT}s", "code": jsonrpc.REQUEST_TIMEOUT}


@pytest.mark.deadline(120)
def test_an_ended_tasks_withdrawal_the_store_refused_is_tried_again_a_bounded_while(
        daemon: Daemon) -> None:
    """A task cancelled while its question is pending, the asks' table renamed from under
    the daemon (the withdrawal's write fails): said, the ask pending, and the withdrawal
    tried again by the manual clock, 1 s later, then 2 s, 4, 8; a fifth failure leaves
    it pending (until the next start's sweep: test_approvals.py) and says so. Tried again
    once the store takes it, the ask is withdrawn by corral without a restart."""
    from .test_http_adversary import stderr_until

    assert daemon.proc is not None and daemon.proc.stderr is not None
    fd = daemon.proc.stderr.fileno()
    side = sqlite3.connect(daemon.state / "corral.db", isolation_level=None)

    def refused(task_id: str, then: str) -> None:
        said = stderr_until(fd, f"the asks of task {task_id} could not be withdrawn (")[-1]
        assert said.endswith(f"(no such table: asks)); {then}"), said

    def ended(prompt: str) -> tuple[str, dict[str, Any]]:
        task_id = daemon.ask("tasks.submit", {"agent": "asker",
                                              "input": {"prompt": prompt}})["task_id"]
        [ask] = wait_until(lambda: [a for a in daemon.ask("approvals.list")["asks"]
                                    if a["task_id"] == task_id], 30, "its ask")
        side.execute("ALTER TABLE asks RENAME TO asks_away")
        daemon.ask("tasks.cancel", {"task_id": task_id})
        assert daemon.ask("tasks.get", {"task_id": task_id, "wait": True})["status"] \
            == "cancelled"
        refused(task_id, "trying again in 1 s")
        return task_id, dict(ask)

    try:
        task_id, ask = ended("Still there?")
        for waited, then in ((1, "2 s"), (2, "4 s"), (4, "8 s")):
            assert daemon.cli("clock", "--advance", f"{waited}s").returncode == 0
            refused(task_id, f"trying again in {then}")
        assert daemon.cli("clock", "--advance", "8s").returncode == 0
        refused(task_id, "pending until their deadlines or the next start")
        side.execute("ALTER TABLE asks_away RENAME TO asks")
        assert daemon.cli("clock", "--advance", "1h").returncode == 0
        assert daemon.ask("approvals.get", {"id": ask["id"]})["end"] is None  # (no more)

        task_id, ask = ended("And now?")
        side.execute("ALTER TABLE asks_away RENAME TO asks")
        assert daemon.cli("clock", "--advance", "1s").returncode == 0
        gone = wait_until(lambda: (a := daemon.ask("approvals.get", {"id": ask["id"]}))[
            "end"] is not None and a, 30, "the ask withdrawn")
        assert (gone["end"], gone["by"]) == ("withdrawn", "corral"), gone
    finally:
        side.close()
