"""Retention, on each home (DESIGN 20, 25): finished tasks' records are kept up to their
home's bound, the newest, and the older are pruned — by a node's journal at its start
and every minute (`journal_max_tasks`), by a cluster's beat (`[cluster] keep_tasks`); a
pruned task is no task to anyone, the newest are read whole. Both homes keep two here."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from corral import jsonrpc
from corral.cli.client import CallFailed

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY
from .home import Home, wait_until

pytestmark = pytest.mark.timeout(120)

SUPERVISOR = "journal_max_tasks = 2\nkeep_tasks = 2\n"
CLUSTER = "keep_tasks = 2\n"


def agents(directory: Path) -> str:
    del directory
    return textwrap.dedent(f"""
        [agents.echo]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 5.0
    """)


def pruned(home: Home, task_id: str) -> bool:
    """The task is no task (at the other entry), with its words."""
    try:
        home.task(task_id, at=1)
    except CallFailed as e:
        assert (e.code, e.message) == (jsonrpc.NOT_FOUND, f"no such task: {task_id}")
        return True
    return False


def test_a_finished_tasks_record_past_its_bound_is_pruned_the_newest_kept(home: Home
                                                                        ) -> None:
    ids = [home.run("echo", {"do": "echo", "n": n}, at=n)["task_id"] for n in range(4)]
    # the home's retention run (a node's at its start, a cluster's at a beat)
    home.restart()
    for old in ids[:2]:
        wait_until(f"task {old} pruned", lambda old=old: pruned(home, old))
    for kept in ids[2:]:
        got = home.task(kept, at=1)
        assert (got["status"], got["output"]["n"]) == ("succeeded", ids.index(kept))
    listed = [t["task_id"] for t in home.call("tasks.list", {"agent": "echo"})["tasks"]]
    assert listed == ids[2:]
