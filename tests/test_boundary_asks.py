"""Asks per task are bounded on a node's home (issue 74; [supervisor] max_asks_per_task,
docs/approvals.md#bounds): each ask is a row of the state database kept for its task's
life, pending or ended, so a task that asks without end is refused by the bound's name
once it has made that many — counted from the database, so a restart does not reset it —
while a retry asking again for a call it asked before finds that ask, and another task
is not touched. The inbox on the daemon's real state database (as test_inbox_store.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from corral import jsonrpc
from corral.askviews import AskEnd
from corral.daemon.storeschema import open_database
from corral.daemon.taskjournal import TaskJournalDB
from corral.jsonrpc import RpcError
from corral.supervisor.tasks.inbox import Decision, InboxBounds, decide

from .test_inbox_store import Opened, _approval


async def test_a_tasks_asks_past_max_asks_per_task_are_refused_by_name(
        tmp_path: Path) -> None:
    opened = Opened(tmp_path / "corral.db")
    try:
        await _bounded(opened)
    finally:
        await opened.close()
    # the database opened again (a restart): the count is the database's
    reopened = Opened(tmp_path / "corral.db")
    try:
        reopened.inbox.load(reopened.inbox.store, InboxBounds(per_task=2))
        with pytest.raises(RpcError) as e:
            await reopened.inbox.ask(_approval("t-1", key="tool:4"))
        assert e.value.message.startswith("task t-1 has made 2 asks of a person")
    finally:
        await reopened.close()


async def _bounded(opened: Opened) -> None:
    inbox = opened.inbox
    inbox.load(inbox.store, InboxBounds(per_task=2))
    first = await inbox.ask(_approval("t-1", key="tool:1"))
    await decide(inbox, Decision(first.id, AskEnd.APPROVED, "uid 0"))
    await inbox.ask(_approval("t-1", key="tool:2"))
    with pytest.raises(RpcError) as e:
        await inbox.ask(_approval("t-1", key="tool:3"))
    assert (e.value.code, e.value.message) == (
        jsonrpc.QUOTA_EXCEEDED, "task t-1 has made 2 asks of a person, its bound "
                                "(max_asks_per_task 2): nothing more is asked")
    # a retry's ask of a call it asked before is that ask, not one more
    again = await inbox.ask(_approval("t-1", key="tool:1", attempt=2))
    assert (again.id, again.end) == (first.id, AskEnd.APPROVED)
    assert (await inbox.ask(_approval("t-2", key="tool:1"))).pending
    assert [a.key for a in inbox.waiting_for("t-1")] == ["tool:2"]


async def test_a_replicas_ended_asks_go_by_their_own_age_and_count(db_path: Path) -> None:
    """No task's row takes a replica's asks with it (their owner is an incarnation): the
    journal's prune takes its ended ones past max_age, and past the newest max_tasks;
    a pending one, and a task's, stay."""
    now = time.time()
    db = open_database(db_path)
    rows = [("old", "replica:a#0:00000000", now - 7200), ("r1", "replica:a#0:00000000", now - 3),
            ("r2", "replica:a#0:11111111", now - 2), ("r3", "replica:b#0:22222222", now - 1),
            ("pending", "replica:b#0:22222222", None), ("tasks", "t-1", now - 7200)]
    for ask_id, owner, ended in rows:
        db.execute("INSERT INTO asks (id, kind, tenant, task_id, attempt, agent, key, subject,"
                   " created, outcome, ended, decided_by) VALUES (?, 'approval', NULL, ?, 0,"
                   " 'a', ?, X'7b7d', ?, ?, ?, ?)",
                   (ask_id, owner, f"tool:{ask_id}", now - 9000,
                    None if ended is None else "denied", ended,
                    None if ended is None else "uid 0"))
    db.commit()
    db.close()
    journal = TaskJournalDB(db_path, max_tasks=2, max_age=3600)
    journal.start_pruning()  # a pass at once: close() lets the writer finish it
    await journal.close()
    db = open_database(db_path)
    kept = sorted(r[0] for r in db.execute("SELECT id FROM asks"))
    db.close()
    assert kept == ["pending", "r2", "r3", "tasks"]
