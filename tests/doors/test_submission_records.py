"""The audit link of a task submitted (DESIGN 28: "a task submitted" and "an A2A message"
are calls; decision 1250): a submission accepted is one audit row, `task.submitted`,
naming who asked, the door it came by, its agent and its task, at every door that takes
one (REST with a token, A2A with a token and with none at an `[a2a] anonymous` agent,
`/mcp/corral` of no task with the replica's own token), on both homes, written by the
entry the submission came to. The doors and their submissions are
tests/doors/test_submissions.py's."""

from __future__ import annotations

from typing import Any

import pytest

from ..test_daemon_cli import wait_until
from .conftest import Entry
from .test_doors import PATIENCE
from .test_submissions import ANONYMOUS, Submitted

# each door as the row names it (daemon/submitted.py), and who its row says asked
RECORDED = {"REST": ("REST", "token sub-"), "A2A": ("A2A", "token sub-"),
            "A2A anonymous": ("A2A", ANONYMOUS),
            "/mcp/corral idle": ("/mcp/corral", "gateway client caller#")}
DONE = {"calls": []}  # the mailer's task that makes no call: it ends at once


def mailers(d: Entry) -> set[str]:
    return {t["task_id"] for t in d.ask("tasks.list", {"agent": "mailer",
                                                       "limit": 1000})["tasks"]}


def submitted_rows(d: Entry, task_id: str) -> list[dict[str, Any]]:
    """Every entry's `task.submitted` rows of the task."""
    return [e for at in range(len(d.home.entries))
            for e in d.home.call("audit.list", {"limit": 1000}, at=at)["entries"]
            if e["method"] == "task.submitted" and isinstance(e["params"], dict)
            and e["params"].get("task") == task_id]


@pytest.mark.deadline(240)
@pytest.mark.parametrize("door", RECORDED)
def test_a_submission_accepted_is_one_audit_row_naming_who_its_door_agent_and_task(
        daemon: Entry, door: str) -> None:
    d = daemon
    before = mailers(d)
    sent = Submitted(d, door, DONE)
    sent.outcome()
    task_id = sent.task_id or wait_until(lambda: next(iter(mailers(d) - before), None),
                                         PATIENCE, "the submitted task")
    named, who = RECORDED[door]
    # (written before the submission was answered; audit.list waits for its commit)
    rows = submitted_rows(d, task_id)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["params"] == {"door": named, "agent": "mailer", "task": task_id}
    assert row["outcome"] == "ok"
    assert row["who"].startswith(who), row
