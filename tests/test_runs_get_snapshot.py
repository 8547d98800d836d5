"""`runs.get` reads a run in one snapshot of the state database: the run's row, its steps'
rows and their outputs are several statements, and a commit of the writer thread (a
cluster node's copy of a run from Redis, a prune) landed between two of them, so a
caller saw the halves of a commit that were never apart. The writer's commit is made
here by another connection of the same database, at the start of the view's second
statement, where the writer thread's lands at its own time."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import pytest

from .daemon_harness import PY, in_process
from .test_http_api import SOCKET

ROOT = Path(__file__).resolve().parent.parent


def fleet() -> str:
    return textwrap.dedent(f"""
        [agents.echo]
        command = ["{PY}", "{ROOT}/examples/hello.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        [workflows.one]
        [[workflows.one.steps]]
        name = "only"
        agent = "echo"
        input = "$input"
    """)


@pytest.mark.deadline(180)
async def test_a_commit_between_the_views_reads_is_seen_whole_or_not_at_all(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, fleet()) as d:
        ran = await d.dispatcher.call(SOCKET, "workflows.run", {
            "name": "one", "input": {"name": "a"}, "wait": 60})
        assert ran.status == "succeeded", ran
        db = d.services.store.db
        [(_, _, path)] = db.execute("PRAGMA database_list").fetchall()
        other = sqlite3.connect(path, isolation_level=None)
        statements: list[str] = []

        def commit_after_the_runs_row(sql: str) -> None:
            # at the view's first read of its steps, the run's row read before it (not at
            # another job's statement on the connection): a copy of the run, its error and
            # its output
            statements.append(sql)
            if "FROM call_steps" in sql and len(
                    [s for s in statements if "FROM call_steps" in s]) == 1:
                other.execute("BEGIN IMMEDIATE")
                other.execute("UPDATE calls SET error = 'copied' WHERE call_id = ?",
                              (ran.run_id,))
                other.execute("UPDATE call_steps SET output = '\"copied\"' WHERE "
                              "call_id = ?", (ran.run_id,))
                other.execute("COMMIT")

        db.set_trace_callback(commit_after_the_runs_row)
        try:
            view = await d.dispatcher.call(SOCKET, "runs.get", {"run_id": ran.run_id})
        finally:
            db.set_trace_callback(None)
            other.close()
        # (the commit was made within the view, after the run's row was read)
        steps = next(i for i, s in enumerate(statements) if "FROM call_steps" in s)
        assert any("FROM calls " in s for s in statements[:steps]), statements
        [step] = view.steps
        assert (view.error, step.output, view.output) in (
            (None, ran.output, ran.output), ("copied", "copied", "copied")), \
            (view.error, step.output, view.output, statements)
