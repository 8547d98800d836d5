"""A task's options as one value (corral/taskoptions.py, issue 53): kept by the journal in
one column (a database of the schema before converted), refused by name where a transport
does not carry one, and spelled in few files."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import msgspec
import pytest

from corral.supervisor.tasks.ids import new_id

from .conftest import ROOT
from .daemon_harness import in_process, sleeper
from .test_tokens import cli

# the journal's row as the code before options were one value wrote it (taskjournal.py's
# UPSERT then: a column per option, `retry_on` the task's own outcomes as JSON bytes)
OLD_ROW = """
INSERT INTO tasks (id, arrival, agent, priority, timeout, retries_left, created, started,
                   finished, status, tool_calls, input, output, error, attempts, progress,
                   usage, not_before, retry_on, tenant)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


@pytest.mark.deadline(120)
async def test_a_journal_of_the_column_per_option_schema_keeps_each_tasks_policy(
        tmp_path: Path) -> None:
    """A state database of the schema before a task's options were one column, holding a
    queued task whose own policy retries failures (`retry_on`) and a finished one with
    none: the migration makes the first's its retry policy, and the next daemon retries
    its failed first attempt by it (the agent's own policy retries nothing but lost
    attempts); the second shows no options."""
    from corral.daemon.storeschema import MIGRATIONS, migrate

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    before = next(i for i, step in enumerate(MIGRATIONS)
                  if isinstance(step, str) and "ADD COLUMN options" in step)
    db = sqlite3.connect(state / "corral.db", isolation_level=None)
    assert migrate(db, MIGRATIONS[:before]) == before
    queued, done, now = new_id(), new_id(), time.time()
    db.execute(OLD_ROW, (queued, 0, "w", 0, 30.0, 1, now, None, None, "queued", 0,
                         b'{"do": "until", "attempt": 2}', None, None, b"[]", None, None,
                         None, msgspec.json.encode(("failed",)), "default"))
    db.execute(OLD_ROW, (done, 1, "w", 0, 30.0, 0, now, now, now, "succeeded", 0, b"null",
                         b'{"output": 1}', None, b"[]", None, None, None, None, "default"))
    db.close()
    async with in_process(tmp_path, sleeper("w")) as d:
        rc, out, err = await cli(d, "task", queued, "--wait", "--json")
        assert rc == 0, err
        got = json.loads(out)
        assert (got["status"], len(got["attempts"]), got["options"]) == (
            "succeeded", 2, {"retry": {"retry_on": ["failed"]}})
        assert got["attempts"][0]["error"] == "attempt 1 failed on request"
        rc, out, err = await cli(d, "task", done, "--json")
        assert (rc, json.loads(out)["options"]) == (0, {})
        columns = {row[1] for row in d.services.store.db.execute("PRAGMA table_info(tasks)")}
        assert "options" in columns and "retry_on" not in columns


def test_retry_on_is_spelled_in_four_files_of_corral_at_most() -> None:
    """A task option is one field of one value: the retry outcomes' name is written where
    a task's are defined and read (taskoptions.py), where an agent's are (config.py), and
    in the schema's history (storeschema.py); it was in 12 files."""
    spelled = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "corral").rglob("*")
                     if p.is_file() and p.suffix in (".py", ".lua", ".js", ".html")
                     and re.search(r"retry_on", p.read_text(errors="replace")))
    assert len(spelled) <= 4, spelled
