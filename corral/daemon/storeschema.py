"""The state database's schema and opening (SQLite, WAL, 0600 in a 0700 directory),
brought to this corral's schema version (`PRAGMA user_version`: the entries of
`MIGRATIONS` applied, each in its own transaction) before anything reads it.

To change the schema, append ONE entry (SQL, or a function of the connection) and never
edit one that has landed: databases in the field have run it. Then run
`scripts/fresh_schema.py`: a new database is made at once from storefresh.sql only while the
`digest` it names matches these migrations. Nothing is ever reset silently: a newer, locked,
read-only or corrupt database stops the daemon with a `StoreError` saying what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..statefiles import check_database, open_file
from .history import MIGRATION as HISTORY_MIGRATION
from .revisions import MIGRATION as REVISIONS_MIGRATION
from .spawnmigration import carry_spawn_trees
from .stopmarks import MIGRATION as STOPMARKS_MIGRATION

BUSY_TIMEOUT_MS = 2000  # another process's transaction may hold the write lock this long
# SQLite's memory in all, past which its connections' page caches reuse their pages rather
# than grow: without it each connection keeps up to 2 MiB of pages, most of them rows read
# or written once (a wave of suspended tasks' writes, their read-back at start-up)
SQLITE_HEAP_BYTES = 4 * 1024 * 1024

Migration = str | Callable[[sqlite3.Connection], None]

# the tenant of the agent that holds the name `agent`: its newest revision's, `default`
# when that names none (a revision whose spec is not JSON is passed over: it must not stop
# a daemon's start)
HOLDER = ("COALESCE((SELECT json_extract(r.spec, '$.tenant') FROM revisions r "
          "WHERE r.agent = {agent} AND json_valid(r.spec) "
          "ORDER BY r.time DESC, r.revision DESC LIMIT 1), 'default')")

MIGRATIONS: list[Migration] = [
    # 1: the schema before versioning existed (IF NOT EXISTS: databases written then
    # already have these tables, at user_version 0)
    """
    CREATE TABLE IF NOT EXISTS runtime_agents (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        added_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS agent_state (
        name TEXT NOT NULL,
        replica INTEGER NOT NULL,
        time REAL NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (name, replica)
    );
    CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        uid INTEGER NOT NULL,
        pid INTEGER NOT NULL,
        method TEXT NOT NULL,
        params TEXT NOT NULL,
        outcome TEXT NOT NULL
    );
    """,
    # 2: the task journal; `output` is the worker's task/run result as it sent it
    """
    CREATE TABLE tasks (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        agent TEXT NOT NULL,
        priority INTEGER NOT NULL,
        timeout REAL NOT NULL,
        retries_left INTEGER NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        status TEXT NOT NULL,
        tool_calls INTEGER NOT NULL DEFAULT 0,
        input BLOB,
        output BLOB,
        error BLOB,
        attempts BLOB NOT NULL,
        progress BLOB
    );
    CREATE INDEX tasks_unfinished ON tasks (seq) WHERE finished IS NULL;
    CREATE INDEX tasks_finished ON tasks (finished) WHERE finished IS NOT NULL;
    CREATE INDEX tasks_created ON tasks (created);
    """,
    # 3: containment: an incarnation is one run of the daemon, committed before it starts
    # anything and deleted at a clean shutdown; the record of each process it runs
    """
    CREATE TABLE incarnations (
        owner TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        start_time INTEGER NOT NULL,
        started_at REAL NOT NULL
    );
    CREATE TABLE processes (
        token TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX processes_owner ON processes (owner);
    """,
    # 4: agents' spec revisions and kept scale counts (revisions.py)
    REVISIONS_MIGRATION,
    # 5: the task journal keyed by the task id; `arrival` is the order accepted, across
    # daemons
    """
    CREATE TABLE tasks_by_id (
        id TEXT PRIMARY KEY,
        arrival INTEGER,
        agent TEXT NOT NULL,
        priority INTEGER NOT NULL,
        timeout REAL NOT NULL,
        retries_left INTEGER NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        status TEXT NOT NULL,
        tool_calls INTEGER NOT NULL DEFAULT 0,
        input BLOB,
        output BLOB,
        error BLOB,
        attempts BLOB NOT NULL,
        progress BLOB
    );
    INSERT INTO tasks_by_id (id, arrival, agent, priority, timeout, retries_left, created,
                             started, finished, status, tool_calls, input, output, error,
                             attempts, progress)
        SELECT id, seq, agent, priority, timeout, retries_left, created, started, finished,
               status, tool_calls, input, output, error, attempts, progress
        FROM tasks ORDER BY seq;
    DROP TABLE tasks;
    ALTER TABLE tasks_by_id RENAME TO tasks;
    CREATE INDEX tasks_arrival ON tasks (arrival);
    CREATE INDEX tasks_unfinished ON tasks (arrival) WHERE finished IS NULL;
    CREATE INDEX tasks_finished ON tasks (finished) WHERE finished IS NOT NULL;
    CREATE INDEX tasks_created ON tasks (created);
    """,
    # 6: the HTTP API's bearer tokens (tokens.py): a token's SHA-256, never the token;
    # and who asked, on audit rows ("token NAME", or NULL: a socket peer)
    """
    CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        agents TEXT,
        created REAL NOT NULL,
        expires REAL
    );
    ALTER TABLE audit ADD COLUMN who TEXT;
    """,
    # 7: the metrics history (history.py): samples, per-minute and per-hour roll-ups
    HISTORY_MIGRATION,
    # 8: the usage a task's worker reported: the budgets' windows are rebuilt from it
    """
    ALTER TABLE tasks ADD COLUMN usage BLOB;
    """,
    # 9: tenants added or changed at runtime (`declared`: a config tenant's table when it
    # was changed, so that an edit of the file wins); a token's and an audit row's tenant
    """
    CREATE TABLE runtime_tenants (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        declared TEXT,
        time REAL NOT NULL
    );
    ALTER TABLE tokens ADD COLUMN tenant TEXT;
    ALTER TABLE audit ADD COLUMN tenant TEXT;
    """,
    # 10: tasks' steps (steps.py): each result once by its content hash (`ref`: a file,
    # past a size); a tool call (seq from 1), a named step (0) or the checkpoint (-1)
    """
    CREATE TABLE step_results (
        hash BLOB PRIMARY KEY,
        size INTEGER NOT NULL,
        body BLOB,
        ref TEXT
    ) WITHOUT ROWID;
    CREATE TABLE steps (
        task_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        args BLOB NOT NULL,
        result BLOB,
        PRIMARY KEY (task_id, seq, name)
    ) WITHOUT ROWID;
    CREATE INDEX steps_result ON steps (result);
    """,
    # 11: a queued task's earliest start, and its own retry policy's outcomes
    """
    ALTER TABLE tasks ADD COLUMN not_before REAL;
    ALTER TABLE tasks ADD COLUMN retry_on TEXT;
    """,
    # 12: workflow runs, each with the definition it started on, and each step's row (a
    # map step's at -1, one per item from 0); a step's task id is written before the
    # task is submitted
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        definition BLOB NOT NULL,
        input BLOB NOT NULL,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        ended REAL,
        deadline REAL,
        error TEXT
    );
    CREATE INDEX runs_status ON runs (status);
    CREATE TABLE run_steps (
        run_id TEXT NOT NULL,
        step TEXT NOT NULL,
        item INTEGER NOT NULL,
        task_id TEXT,
        status TEXT NOT NULL,
        started REAL,
        ended REAL,
        output BLOB,
        error TEXT,
        PRIMARY KEY (run_id, step, item)
    ) WITHOUT ROWID;
    """,
    # 13: sessions: each live session, its state and `gen`, the life of it its rows
    # belong to (an ended session's name may begin another); the tasks of each
    """
    CREATE TABLE sessions (
        agent TEXT NOT NULL,
        session TEXT NOT NULL,
        gen INTEGER NOT NULL,
        created REAL NOT NULL,
        last_used REAL NOT NULL,
        tasks INTEGER NOT NULL,
        holder TEXT,
        state BLOB,
        PRIMARY KEY (agent, session)
    ) WITHOUT ROWID;
    CREATE TABLE session_tasks (
        task_id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        session TEXT NOT NULL,
        gen INTEGER NOT NULL
    );
    CREATE INDEX session_tasks_of ON session_tasks (agent, session, gen);
    """,
    # 14: definitions changed at runtime (spec NULL: a removal; definitions.py); a run's
    # revision of its workflow (NULL: the config file's) and the agents it may run
    """
    CREATE TABLE definitions (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        revision INTEGER NOT NULL,
        time REAL NOT NULL,
        who TEXT NOT NULL,
        tenant TEXT,
        change TEXT NOT NULL,
        spec TEXT,
        PRIMARY KEY (kind, name, revision)
    ) WITHOUT ROWID;
    ALTER TABLE runs ADD COLUMN revision INTEGER;
    ALTER TABLE runs ADD COLUMN agents TEXT;
    """,
    # 15: teams' calls, each with the definition it started on, and each step's row, its
    # task's id written before the task is submitted
    """
    CREATE TABLE team_calls (
        call_id TEXT PRIMARY KEY,
        team TEXT NOT NULL,
        tenant TEXT NOT NULL,
        definition BLOB NOT NULL,
        input BLOB NOT NULL,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        ended REAL,
        output BLOB,
        error TEXT,
        traceparent TEXT,
        tracestate TEXT
    );
    CREATE INDEX team_calls_status ON team_calls (status);
    CREATE TABLE team_steps (
        call_id TEXT NOT NULL,
        key TEXT NOT NULL,
        task_id TEXT,
        status TEXT NOT NULL,
        started REAL,
        ended REAL,
        output BLOB,
        error TEXT,
        PRIMARY KEY (call_id, key)
    ) WITHOUT ROWID;
    """,
    # 16: schedules: each one's last fire time accounted for (fired or skipped)
    """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        last_fire REAL NOT NULL,
        fires INTEGER NOT NULL DEFAULT 0,
        last_started TEXT,
        paused INTEGER
    ) WITHOUT ROWID;
    """,
    # 17: a workflow run's parent trace context (a caller's, a nested step's), so that a
    # run resumed by the next daemon stays in its trace (daemon/workflows/runtraces.py)
    """
    ALTER TABLE runs ADD COLUMN traceparent TEXT;
    ALTER TABLE runs ADD COLUMN tracestate TEXT;
    """,
    # 18: a session is its owner's: its rows keyed by the tenant its agent
    # was of when it began, so that another tenant's agent of the same name addresses
    # rows of its own. A row written before reads as the tenant of the agent that held
    # the name then: its newest revision's (`default` when it names none)
    f"""
    CREATE TABLE owned_sessions (
        tenant TEXT NOT NULL,
        agent TEXT NOT NULL,
        session TEXT NOT NULL,
        gen INTEGER NOT NULL,
        created REAL NOT NULL,
        last_used REAL NOT NULL,
        tasks INTEGER NOT NULL,
        holder TEXT,
        state BLOB,
        PRIMARY KEY (tenant, agent, session)
    ) WITHOUT ROWID;
    INSERT INTO owned_sessions SELECT {HOLDER.format(agent="s.agent")}, s.agent, s.session,
        s.gen, s.created, s.last_used, s.tasks, s.holder, s.state FROM sessions s;
    DROP TABLE sessions;
    ALTER TABLE owned_sessions RENAME TO sessions;
    ALTER TABLE session_tasks ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
    UPDATE session_tasks SET tenant = {HOLDER.format(agent="session_tasks.agent")};
    DROP INDEX session_tasks_of;
    CREATE INDEX session_tasks_of ON session_tasks (tenant, agent, session, gen);
    """,
    # 19: whose a workflow run and a definition's revision are (NULL: the operator's);
    # '?' marks the rows from before, told whose by the next daemon (definitions.UNSTAMPED)
    """
    ALTER TABLE runs ADD COLUMN tenant TEXT DEFAULT '?';
    UPDATE definitions SET tenant = '?' WHERE tenant IS NULL;
    """,
    # 20: whose a task and an agent's revision are: the tenant its agent was of when it
    # was made, so that a tenant taking a freed name is never shown what its earlier
    # holder left. A task's row from before reads as the name's holder's (HOLDER); a
    # revision's is its own table's, numbered within its agent's tenant.
    f"""
    ALTER TABLE tasks ADD COLUMN tenant TEXT;
    UPDATE tasks SET tenant = {HOLDER.format(agent="tasks.agent")};
    CREATE TABLE revisions_of_tenants (
        agent TEXT NOT NULL,
        tenant TEXT NOT NULL DEFAULT 'default',
        revision INTEGER NOT NULL,
        time REAL NOT NULL,
        who TEXT NOT NULL,
        change TEXT NOT NULL,
        spec TEXT NOT NULL,
        PRIMARY KEY (agent, tenant, revision)
    );
    INSERT INTO revisions_of_tenants
        SELECT agent, CASE WHEN json_valid(spec)
                      THEN coalesce(json_extract(spec, '$.tenant'), 'default')
                      ELSE 'default' END, revision, time,
               who, change, spec FROM revisions;
    DROP TABLE revisions;
    ALTER TABLE revisions_of_tenants RENAME TO revisions;
    """,
    # 21: whose an agent's metrics history row is: its agent's tenant when sampled, so
    # that a tenant taking a freed name is not shown its earlier holder's figures
    f"""
    ALTER TABLE metrics_history ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
    UPDATE metrics_history SET tenant = {HOLDER.format(agent="metrics_history.agent")}
        WHERE agent != '';
    """,
    # 22: a task's options as its submitter asked, one JSON value (taskoptions.py) in
    # place of a column each
    """
    ALTER TABLE tasks ADD COLUMN options BLOB;
    UPDATE tasks SET options = json_object('retry', json_object(
        'retry_on', json(CAST(retry_on AS TEXT))))
        WHERE retry_on IS NOT NULL AND json_valid(CAST(retry_on AS TEXT));
    ALTER TABLE tasks DROP COLUMN retry_on;
    """,
    # 23: one durable engine (calljournal.py): a workflow's runs and a team's calls are
    # calls of a kind, kept in one pair of tables, their rows carried over
    """
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        tenant TEXT,
        definition BLOB NOT NULL,
        input BLOB NOT NULL,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        ended REAL,
        deadline REAL,
        output BLOB,
        error TEXT,
        revision INTEGER,
        agents TEXT,
        traceparent TEXT,
        tracestate TEXT
    );
    CREATE INDEX calls_status ON calls (kind, status);
    CREATE INDEX calls_named ON calls (kind, name);
    CREATE TABLE call_steps (
        call_id TEXT NOT NULL,
        step TEXT NOT NULL,
        item INTEGER NOT NULL,
        task_id TEXT,
        status TEXT NOT NULL,
        started REAL,
        ended REAL,
        output BLOB,
        error TEXT,
        PRIMARY KEY (call_id, step, item)
    ) WITHOUT ROWID;
    INSERT INTO calls SELECT run_id, 'workflow', workflow, tenant, definition, input,
        status, created, ended, deadline, NULL, error, revision, agents, traceparent,
        tracestate FROM runs;
    INSERT INTO call_steps SELECT run_id, step, item, task_id, status, started, ended,
        output, error FROM run_steps;
    INSERT INTO calls SELECT call_id, 'team', team, tenant, definition, input, status,
        created, ended, NULL, output, error, NULL, NULL, traceparent, tracestate
        FROM team_calls;
    INSERT INTO call_steps SELECT call_id, key, -1, task_id, status, started, ended,
        output, error FROM team_steps;
    DROP TABLE run_steps;
    DROP TABLE runs;
    DROP TABLE team_steps;
    DROP TABLE team_calls;
    """,
    # 24: tasks' live output (outputjournal.py): a row a chunk, at its position
    """
    CREATE TABLE task_output (
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        n INTEGER NOT NULL,
        data TEXT NOT NULL,
        truncated INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (task_id, attempt, n)
    ) WITHOUT ROWID;
    """,
    # 25: the inbox of asks (inboxjournal.py), keyed within a task by the call it holds;
    # `outcome` NULL while it is pending
    """
    CREATE TABLE asks (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        tenant TEXT,
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        agent TEXT NOT NULL,
        key TEXT NOT NULL,
        subject BLOB NOT NULL,
        created REAL NOT NULL,
        deadline REAL,
        outcome TEXT,
        ended REAL,
        decided_by TEXT,
        data BLOB,
        UNIQUE (task_id, key)
    );
    CREATE INDEX asks_pending ON asks (created) WHERE outcome IS NULL;
    """,
    # workflow runs' signals (workflows/signals.py), each taken by the step row it became
    # the output of; `key`: the sender's, a second send of which is the first
    """
    CREATE TABLE call_signals (
        call_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        key TEXT,
        data BLOB NOT NULL,
        sent REAL NOT NULL,
        sender TEXT,
        taken_by TEXT,
        PRIMARY KEY (call_id, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX call_signals_key ON call_signals (call_id, key) WHERE key IS NOT NULL;
    """,
    # spawn trees are durable calls (supervisor/tasks/spawntree.py): carried out of the
    # step journal into the calls' tables (spawnmigration.py)
    carry_spawn_trees,
    # submissions' idempotency keys (corral/taskkeys.py), written in the transaction of
    # their task's first row; `tenant` '' for none
    """
    CREATE TABLE idempotency_keys (
        tenant TEXT NOT NULL,
        key TEXT NOT NULL,
        task_id TEXT NOT NULL,
        digest TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (tenant, key)
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_keys_held ON idempotency_keys (tenant, created);
    CREATE INDEX idempotency_keys_age ON idempotency_keys (created);
    """,
    # stops by hand kept across daemon restarts, who and when (stopmarks.py)
    STOPMARKS_MIGRATION,
    # when an agent of a tenant was removed, or first found gone, for its retention
    # (retention.py); its row goes with its records, or once it is an agent again
    """
    CREATE TABLE removed_agents (
        agent TEXT NOT NULL,
        tenant TEXT NOT NULL,
        removed REAL NOT NULL,
        PRIMARY KEY (agent, tenant)
    ) WITHOUT ROWID;
    """,
    # whose an agent state checkpoint is: the tenant of its agent when it was saved, given
    # back only to an agent of that tenant holding the name
    f"""
    ALTER TABLE agent_state ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
    UPDATE agent_state SET tenant = {HOLDER.format(agent="agent_state.name")};
    """,
    # whose a kept `corral scale` is (revisions.py): its agent's tenant, applied to no
    # other tenant's agent of the name
    f"""
    ALTER TABLE scaled ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
    UPDATE scaled SET tenant = {HOLDER.format(agent="scaled.agent")};
    """,
    # labels (supervisor/labels.py): the untrusted tools whose output a task (`key` its
    # id) or a session ("session:TENANT:AGENT:NAME") read, `seq` the order first marked
    """
    CREATE TABLE labels (
        key TEXT NOT NULL,
        label TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (key, label)
    ) WITHOUT ROWID;
    """,
    # the tools' pins (mcp/pins.py, toolpins.py), each a Pin in JSON; once one JSON file
    # beside the database, moved in at the first start
    """
    CREATE TABLE tool_pins (
        server TEXT NOT NULL,
        tool TEXT NOT NULL,
        pin BLOB NOT NULL,
        PRIMARY KEY (server, tool)
    ) WITHOUT ROWID;
    """,
    # the A2A door's push configs (daemon/a2a/push.py), a record per config of a task,
    # `seq` the order first kept; once a JSON file per task beside the database, moved in
    # at the first start
    """
    CREATE TABLE push_configs (
        task_id TEXT NOT NULL,
        config_id TEXT NOT NULL,
        record BLOB NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (task_id, config_id)
    ) WITHOUT ROWID;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The state database cannot be used; the message names the file and what to do."""


def _explain(path: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        return StoreError(
            f"state database {path} is locked by another process ({text}): is another "
            "corral daemon using the same state_dir? Stop it, or give this daemon its own "
            "state_dir")
    if code == sqlite3.SQLITE_READONLY or "readonly" in text or "read-only" in text:
        return StoreError(
            f"state database {path} is read-only ({text}): make the file and its directory "
            f"writable by uid {os.geteuid()}, or set [supervisor] state_dir to a writable "
            "directory")
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT) or (
            "not a database" in text or "malformed" in text):
        return StoreError(
            f"state database {path} is corrupt ({text}): corral will not reset it. Move it "
            "aside (with its -wal and -shm files) to start with an empty state, or restore "
            "it from a backup; `sqlite3 FILE .recover` may save its contents")
    if code == sqlite3.SQLITE_CANTOPEN or "unable to open" in text:
        return StoreError(
            f"state database {path} cannot be opened ({text}): check that its directory "
            f"exists and is writable by uid {os.geteuid()}")
    return StoreError(f"state database {path}: {text}")


@contextlib.contextmanager
def errors_named(path: Path) -> Iterator[None]:
    """SQLite errors of start-up reads become StoreErrors naming the file."""
    try:
        yield
    except sqlite3.Error as exc:
        raise _explain(path, exc) from None


def prepare_state_dir(directory: Path) -> None:
    """The state directory exists and only its owner may enter it (0700)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        directory.chmod(0o700)


class StoreConnection(sqlite3.Connection):
    """A connection whose `execute` and `executemany` run a statement that reads no rows
    on a cursor it keeps, made anew only while a caller still holds the last one. A
    query's cursor is the caller's alone: dropped, it ends its read at once.

    CPython's sqlite3 keeps a weak reference to each cursor a connection makes and drops
    the dead ones only once every 200 cursors: a burst of statements leaves up to 200
    dead references, long-lived objects among the burst's short-lived ones, each able to
    keep a 1 MiB arena of the allocator's from going back (bench/RESULTS.md)."""

    _reusable: sqlite3.Cursor | None = None

    def _cursor(self) -> sqlite3.Cursor:
        cur = self._reusable
        # 3 references: the attribute, `cur` and getrefcount's argument; one more is a
        # caller's, which may read it yet (a statement's rows, its rowcount)
        if cur is None or sys.getrefcount(cur) > 3:
            cur = self._reusable = self.cursor()
        return cur

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        cur = self._cursor().execute(sql, parameters)
        if cur.description is not None:
            self._reusable = None
        return cur

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        cur = self._cursor().executemany(sql, parameters)
        if cur.description is not None:
            self._reusable = None
        return cur

    def rows(self, sql: str, parameters: Any = (), /) -> list[Any]:
        """A query's rows, all read (its statement ended): on the kept cursor."""
        return self._cursor().execute(sql, parameters).fetchall()


def connect(path: Path, *, sync: str = "normal") -> StoreConnection:
    """A connection with corral's settings (WAL, busy timeout, `sync` = normal | full)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                         timeout=BUSY_TIMEOUT_MS / 1000, factory=StoreConnection)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        if not db.rows("PRAGMA soft_heap_limit")[0][0]:  # an embedding program's is its own
            db.execute(f"PRAGMA soft_heap_limit = {SQLITE_HEAP_BYTES}")
    except sqlite3.Error:
        db.close()
        raise
    return db


def open_database(path: Path, *, sync: str = "normal") -> StoreConnection:
    """Open (creating it 0600 if new) and migrate the database; StoreError if it cannot."""
    try:
        prepare_state_dir(path.parent)
    except OSError as exc:
        raise StoreError(f"state directory {path.parent} cannot be created or used "
                         f"({exc.strerror}): set [supervisor] state_dir to a directory "
                         f"uid {os.geteuid()} may write") from None
    # SQLite would open an unwritable file read-only and fail at the first write: say so
    # now, and about the directory too (WAL needs its -wal and -shm files beside the file)
    for what, target in (("state database", path), ("state directory", path.parent)):
        if target.exists() and not os.access(target, os.W_OK, effective_ids=True):
            why = ("on a read-only file system" if os.statvfs(target).f_flag & os.ST_RDONLY
                   else f"not writable by uid {os.geteuid()}")
            raise StoreError(
                f"{what} {target} is read-only ({why}): make "
                f"the file and its directory writable by uid {os.geteuid()}, or set "
                "[supervisor] state_dir to a writable directory")
    try:
        # SQLite follows links: the file and the ones it makes beside it are looked at
        # first, and a link in any one's place refused (statefiles.py)
        check_database(path)
        os.close(open_file(path, os.O_RDWR | os.O_CREAT))
    except OSError as exc:
        raise StoreError(f"state database {path} cannot be created ({exc.strerror}): set "
                         f"[supervisor] state_dir to a directory uid {os.geteuid()} may "
                         "write") from None
    with errors_named(path):
        db = connect(path, sync=sync)
    try:
        migrate(db)
    except sqlite3.Error as exc:
        db.close()
        raise _explain(path, exc) from None
    except StoreError as exc:
        db.close()
        raise StoreError(f"state database {path}: {exc}") from None
    return db


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, migrations: list[Migration] | None = None) -> int:
    """Apply the migrations the database has not had; its schema version afterwards."""
    steps = MIGRATIONS if migrations is None else migrations
    # BEGIN IMMEDIATE: a daemon racing us waits here rather than migrating twice
    db.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(db)
        if version > len(steps):
            raise StoreError(
                f"its schema version {version} is newer than this corral knows "
                f"({len(steps)}): run the corral that wrote it, or a newer one")
        if (version == 0 and migrations is None
                and db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None
                and (statements := fresh_schema(steps)) is not None):
            for statement in statements:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(steps)}")
            version = len(steps)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    for number in range(version + 1, len(steps) + 1):
        step = steps[number - 1]
        db.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(db) >= number:  # another process did it meanwhile
                db.execute("COMMIT")
                continue
            if callable(step):
                step(db)
            else:
                for statement in _statements(step):
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return schema_version(db)


def fresh_schema(steps: list[Migration]) -> list[str] | None:
    """The statements of storefresh.sql (scripts/fresh_schema.py writes it, its first line
    the digest of the migrations it ran), or None when it was made from other migrations."""
    made, _, body = (Path(__file__).parent / "storefresh.sql").read_text().partition("\n")
    if made.removeprefix("-- ").partition(":")[0] != digest(steps):
        return None
    return _statements(body)


def digest(steps: list[Migration]) -> str:
    """What a fresh schema is made from: each step's SQL, or its function's name."""
    h = hashlib.sha256()
    for step in steps:
        text = f"{step.__module__}.{step.__qualname__}" if callable(step) else step
        h.update(text.encode() + b"\0")
    return h.hexdigest()


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit midway)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out


