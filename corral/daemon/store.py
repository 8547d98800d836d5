"""The daemon's durable state: an SQLite database (WAL) in the state directory.

What must survive a restart of the daemon lives here: agents added at runtime (the TOML
file stays the operator's declaration), agent state checkpoints, the task journal
(`taskjournal.py` writes it), the audit log of control operations, and the records of every
process the daemon runs (a daemon that starts after a crash stops what the crashed one left
running: `supervisor/containment.py`). The state directory is
mode 0700 and the database file 0600 (SQLite gives its -wal and -shm files the same mode).

Schema versions. The database's schema version is SQLite's `PRAGMA user_version`: the
number of entries of `MIGRATIONS` that have been applied to it. At start-up `open_database`
applies the missing ones in order, each in its own transaction together with the new
version number, so a crash mid-migration leaves the previous version intact. To change the
schema, append ONE entry to `MIGRATIONS` (SQL, or a function of the connection for a data
migration) and never edit an entry that has landed: databases in the field have run it.

    MIGRATIONS.append(...)      # that is the whole procedure

A database written by a newer corral (a higher version than this code knows), one that is
locked by another process, read-only or corrupt stops the daemon at start-up with a
`StoreError` that names the file and what to do; nothing is ever reset silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec

from ..supervisor.containment import ProcessRecord
from ..supervisor.stream import Stream
from ..text import iso_time, plural
from .checkpointer import Checkpointer
from .history import MIGRATION as HISTORY_MIGRATION
from .revisions import MIGRATION as REVISIONS_MIGRATION

log = logging.getLogger("corral.store")

BUSY_TIMEOUT_MS = 2000  # another process's transaction may hold the write lock this long

Migration = str | Callable[[sqlite3.Connection], None]

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
    # 2: the task journal. `seq` is the engine's acceptance order (the queue's tie-break);
    # input, error, attempts and progress are JSON as the engine holds them; `output` is
    # the worker's task/run result as it sent it ({"output": ...}).
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
    # 3: containment. An incarnation is one run of the daemon, committed before it starts
    # anything and deleted at a clean shutdown; `processes` holds the record of each
    # process it runs (containment.ProcessRecord as JSON), deleted at its exit.
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
    # 5: the task journal keyed by the task id (ids are unique across processes: UUIDv7);
    # `arrival` is the order tasks were accepted in, across daemons (the old `seq`)
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
    # `scopes` a JSON list, `agents` a glob of the agent names it may see, `expires`
    # unix time or NULL; and who asked, on audit rows ("token NAME", or NULL: a socket
    # peer, whose uid and pid say it)
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
    # 8: the usage a task's worker reported (usage/report; tasks/budget.py), JSON: the
    # budgets' windows are rebuilt from it after a restart
    """
    ALTER TABLE tasks ADD COLUMN usage BLOB;
    """,
    # 9: tenants (daemon/tenants.py): those added or changed at runtime (`declared`: a
    # config tenant's table when it was changed, so that an edit of the file wins), the
    # tenant of a token, and the caller's tenant on audit rows
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
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The state database cannot be used; the message names the file and what to do."""


def _explain(path: Path, exc: sqlite3.Error) -> StoreError:
    """Turn SQLite's error into one an operator can act on."""
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


def row_limit(limit: int) -> int:
    """A count of rows asked for, as SQLite can take it: 0 to 2**62 (a larger one is
    all of them, not an overflow)."""
    return min(max(0, limit), 1 << 62)


def connect(path: Path, *, sync: str = "normal") -> sqlite3.Connection:
    """A connection with corral's settings (WAL, busy timeout, `sync` = normal | full)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                         timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
    except sqlite3.Error:
        db.close()
        raise
    return db


def open_database(path: Path, *, sync: str = "normal") -> sqlite3.Connection:
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
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise StoreError(f"state database {path} cannot be created ({exc.strerror}): set "
                         f"[supervisor] state_dir to a directory uid {os.geteuid()} may "
                         "write") from None
    try:
        db = connect(path, sync=sync)
    except sqlite3.Error as exc:
        raise _explain(path, exc) from None
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


Write = Callable[[sqlite3.Connection], None]

RETRY_EVERY = 1.0  # seconds between attempts while the database cannot be written
# WriterThread.run_here: a batch this small may be committed on the loop; a job there that
# took longer than HERE_SLOW (longer than the loop is usually kept off a core: the disk is
# slow) sends the next ones to the thread for HERE_PAUSE seconds, so a slow disk holds the
# loop up once in that time
HERE_MAX = 16
HERE_BYTES = 64 * 1024  # and a batch this large in all (a task's output, a checkpoint)
HERE_SLOW = 0.02
HERE_PAUSE = 10.0
MAX_KEPT = 10_000  # StoreWriter's writes kept in memory while it cannot write; then dropped
# SQLite's primary result codes of a write that may work when tried again: a full disk, an
# I/O error (EFBIG past a file size limit is one), a read-only file (a remount), a lock
TRANSIENT = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR,
                       sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
                       sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_PROTOCOL})


def transient(exc: BaseException) -> bool:
    """Whether a write that raised `exc` may work when tried again (the database cannot be
    written now), rather than being wrong (a constraint, a missing table). An error SQLite
    itself did not raise has no result code (a parameter Python cannot bind, a bug in the
    write): trying it again would fail the same way, so it is wrong, never an outage."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in TRANSIENT


def described(exc: BaseException) -> str:
    """SQLite's message as it is; any other exception with its type (it is a bug)."""
    return str(exc) if isinstance(exc, sqlite3.Error) else f"{type(exc).__name__}: {exc}"


def what_to_do() -> str:
    return (f"free space on its file system, or make it and its directory writable by uid "
            f"{os.geteuid()}")


class Outage:
    """A writer's failure to write, from the first failed attempt until one works: the
    task journal and StoreWriter share it, so both behave alike. `failed()` says whether
    this failure is the first (the one to tell); `recovered()` the wall time the outage
    began (the catch-up to tell), or None when there was none; `schedule()` the next
    attempt: this loop turn's end, or RETRY_EVERY after the last failure."""

    __slots__ = ("error", "retry_at", "since")

    def __init__(self) -> None:
        self.since: float | None = None  # wall time of the first failure
        self.retry_at = 0.0  # loop time of the next attempt
        self.error = ""  # the first failure's reason

    @property
    def failing(self) -> bool:
        return self.since is not None

    def failed(self, loop: asyncio.AbstractEventLoop, error: str) -> bool:
        self.retry_at = loop.time() + RETRY_EVERY
        if self.since is not None:
            return False
        self.since, self.error = time.time(), error
        return True

    def recovered(self) -> float | None:
        since, self.since = self.since, None
        return since

    def schedule(self, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]
                 ) -> asyncio.Handle:
        if self.since is None:
            return loop.call_soon(flush)
        return loop.call_at(self.retry_at, flush)


class WriterThread:
    """The state database's one writer: a thread with its own connection that runs jobs
    (functions of the connection) in the order given. The task journal's batches and
    prunes, StoreWriter's batches and the control commands' records (`commit`) all run
    here, so SQLite work never waits on the loop and two writers never contend for the
    database's write lock. A job's `done(error)` is called on the loop, with SQLite's
    message if the job raised (after a rollback). The writer's commits never checkpoint
    the WAL: a Checkpointer thread beside it does (checkpointer.py).

    `run_here(job)` runs a job on the loop instead, on the same connection, when that
    cannot hold the loop up for long or put a job out of order: nothing is queued or
    running here, a commit is not an fsync (sync "normal": only the one that starts the
    WAL again after a checkpoint copied all of it syncs the WAL's header), the last such
    job was quick, and another process holding the write lock makes it give way at once
    rather than wait. A small batch is then committed without the two hand-overs between
    the loop and this thread, each a wake-up that a busy host can delay by a scheduler
    tick (bench/RESULTS.md, "one hand-over fewer")."""

    def __init__(self, path: Path, *, sync: str = "normal") -> None:
        self.path = path
        self._loop = asyncio.get_running_loop()
        self._busy_ms = BUSY_TIMEOUT_MS  # what connect() gave the connection
        self._db = connect(path, sync=sync)
        try:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self.checkpointer = Checkpointer(connect(path, sync=sync), path)
        except sqlite3.Error:
            self._db.close()
            raise
        self.sync = sync
        self._jobs: queue.SimpleQueue[tuple[Write, Callable[[str | None], None] | None]
                                      | None] = queue.SimpleQueue()
        # jobs given to the thread and not yet finished: the loop runs one itself only at
        # 0, so the connection is never used by two threads and jobs keep their order
        self._unfinished = 0
        self._count_lock = threading.Lock()
        self._here_until = 0.0  # after a slow job on the loop: none there before this
        self._closing = False
        self.here = 0  # jobs run on the loop (tests read these)
        self.handed = 0  # and by the thread
        self._thread = threading.Thread(target=self._run, name="corral-store", daemon=True)
        self._thread.start()

    def run(self, job: Write, done: Callable[[str | None], None] | None = None) -> None:
        with self._count_lock:
            self._unfinished += 1
        self.handed += 1
        self._jobs.put((job, done))

    def run_here(self, job: Write) -> tuple[bool, str | None]:
        """Run `job` on the calling (loop) thread if it can be done without waiting (see
        the class doc): (True, its error or None), or (False, None) when it was not run
        and should be given to `run`, as when another connection holds the write lock."""
        if self.sync != "normal" or self._closing or time.monotonic() < self._here_until:
            return False, None
        with self._count_lock:
            if self._unfinished:
                return False, None
            self._unfinished += 1  # the thread's, until this job is done
        db = self._db
        began = time.monotonic()
        try:
            try:
                db.execute("PRAGMA busy_timeout = 0")
            except sqlite3.Error:
                return False, None  # the thread tries it, and says what is wrong
            try:
                job(db)
            except sqlite3.Error as exc:
                self._rollback(db)
                if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_BUSY,
                                                                   sqlite3.SQLITE_LOCKED):
                    return False, None  # the thread waits for the lock; the loop may not
                return True, described(exc)
            except Exception as exc:
                self._rollback(db)
                return True, self._failed(exc)
            finally:
                try:
                    db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                except sqlite3.Error as exc:  # the job's outcome stands; the thread's
                    # next wait for a lock is then shorter than it should be
                    log.error("state database %s: the busy timeout could not be set "
                              "again (%s)", self.path, exc)
                if time.monotonic() - began > HERE_SLOW:
                    self._here_until = time.monotonic() + HERE_PAUSE
        finally:
            with self._count_lock:
                self._unfinished -= 1
        self.here += 1
        self.checkpointer.wrote()
        return True, None

    async def commit(self, writes: Iterable[Write]) -> None:
        """Run `writes` in one transaction, now; StoreError, naming the file and the
        reason, if it is not committed. StateStore.commit puts it behind what StoreWriter
        holds."""
        batch = list(writes)
        done: asyncio.Future[str | None] = self._loop.create_future()

        def job(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            for write in batch:
                write(db)
            db.execute("COMMIT")

        self.run(job, done.set_result)
        error = await done
        if error is not None:
            raise StoreError(f"state database {self.path} cannot be written ({error})")

    def _run(self) -> None:
        db = self._db
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, done = item
            error: str | None = None
            try:
                job(db)
            except Exception as exc:  # the thread outlives any one job
                # (every command's record, the task journal and shutdown wait on it)
                error = self._failed(exc)
                self._rollback(db)
            with self._count_lock:
                self._unfinished -= 1
            if error is None:
                self.checkpointer.wrote()
            if done is not None:
                self._loop.call_soon_threadsafe(done, error)
            elif error is not None:
                log.error("state database %s: %s", self.path, error)

    def _failed(self, exc: Exception) -> str:
        if not isinstance(exc, sqlite3.Error):
            log.error("state database %s: a write failed", self.path, exc_info=exc)
        return described(exc)

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")

    async def close(self) -> None:
        """After the jobs given so far: stop the thread and the checkpointer's, close the
        connections."""
        self._closing = True
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self.checkpointer.close)
        self._db.close()


V = TypeVar("V")


class GroupCommit(Generic[V]):
    """Writes gathered on the loop and committed by the writer thread in one transaction a
    batch (group commit without a timer): one flush per loop turn hands what waits to the
    thread, and while it writes, the next batch gathers. A batch small enough is
    committed on the loop when the thread is idle (`WriterThread.run_here`). The task
    journal (its rows) and StoreWriter (its writes) are both one of these.

    Writes are keyed: one with the key of a waiting one takes its place, `merge`d with it
    (a task's newer snapshot, a superseded checkpoint). A batch that cannot be written
    (`Outage`) loses nothing: its writes wait again in front of the newer ones (merged
    under them) and are tried again every RETRY_EVERY seconds. `settled(batch, error)` is
    told on the loop after each attempt, once the writes are back in place if it failed;
    what waits on the batch (`committed()`) then resolves, or fails with `error_type`
    when there is one; `explain` turns SQLite's message into the one they all see.
    (`first_failure` says, while `settled` runs, whether a failure
    began an outage: it is told once.)"""

    def __init__(self, thread: WriterThread,
                 job: Callable[[sqlite3.Connection, list[V]], None],
                 settled: Callable[[list[V], str | None], None], *,
                 merge: Callable[[V, V], V] | None = None,
                 size: Callable[[V], int] | None = None,
                 error_type: Callable[[str], Exception] | None = None,
                 explain: Callable[[str], str] | None = None) -> None:
        self.thread = thread
        self._job = job
        self._settled = settled
        self._merge = merge
        self._size = size
        self._error_type = error_type
        self._explain = explain
        self._loop = asyncio.get_running_loop()
        self.pending: dict[Hashable, V] = {}  # in the order they came; replaced in place
        self.inflight: list[tuple[Hashable, V]] = []
        self.waiting_bytes = 0  # `size` of what is pending and in flight
        self._pending_done: asyncio.Future[None] | None = None
        self._inflight_done: asyncio.Future[None] | None = None
        self._flush_scheduled = False
        self.outage = Outage()
        self.first_failure = False  # the batch just settled failed, and began the outage
        self._retry: asyncio.Handle | None = None

    def put(self, key: Hashable, value: V) -> None:
        self._put(key, value)
        if not self._flush_scheduled and self._inflight_done is None:
            self._schedule()

    def _put(self, key: Hashable, value: V) -> None:
        prev = self.pending.get(key)
        if prev is not None:
            if self._merge is not None:
                value = self._merge(prev, value)
            if self._size is not None:
                self.waiting_bytes -= self._size(prev)
        if self._size is not None:
            self.waiting_bytes += self._size(value)
        self.pending[key] = value

    def _schedule(self) -> None:
        """The next flush: this loop turn's end, or the next attempt while failing."""
        self._flush_scheduled = True
        self._retry = self.outage.schedule(self._loop, self._flush)

    def retry_now(self) -> None:
        """While failing, try at once rather than at the next attempt's time."""
        if self.outage.failing and self._retry is not None:
            self.cancel_retry()
            self._flush_scheduled = True
            self._retry = self._loop.call_soon(self._flush)

    def cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
            self._flush_scheduled = False

    async def committed(self) -> None:
        """Until everything put so far has been tried (see the class doc for a failure)."""
        if self.pending:
            if self._pending_done is None:
                self._pending_done = self._loop.create_future()
            await asyncio.shield(self._pending_done)
        elif self._inflight_done is not None:
            await asyncio.shield(self._inflight_done)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._retry = None
        if self._inflight_done is not None or not self.pending:
            return
        items = list(self.pending.items())
        self.pending.clear()
        self.inflight = items
        batch = [v for _, v in items]
        done = self._pending_done or self._loop.create_future()
        self._pending_done = None
        self._inflight_done = done
        def job(db: sqlite3.Connection) -> None:
            self._job(db, batch)

        if (len(batch) <= HERE_MAX and not self.outage.failing
                and (self._size is None or sum(map(self._size, batch)) <= HERE_BYTES)):
            ran, error = self.thread.run_here(job)
            if ran:
                self._batch_done(done, items, batch, error)
                return
        self.thread.run(job, lambda error: self._batch_done(done, items, batch, error))

    def _batch_done(self, done: asyncio.Future[None], items: list[tuple[Hashable, V]],
                    batch: list[V], error: str | None) -> None:
        self._inflight_done = None
        self.inflight = []
        if self._size is not None:
            self.waiting_bytes -= sum(self._size(v) for v in batch)
        if error is not None and self._explain is not None:
            error = self._explain(error)
        try:
            if error is not None:
                newer, self.pending = self.pending, {}
                for key, value in items:
                    self._put(key, value)
                for key, value in newer.items():
                    if self._size is not None:
                        self.waiting_bytes -= self._size(value)
                    self._put(key, value)
                self.first_failure = self.outage.failed(self._loop, error)
            self._settled(batch, error)
        finally:  # whatever a callback did: committed() and the next batch never hang
            if error is None or self._error_type is None:
                done.set_result(None)
            else:
                done.set_exception(self._error_type(error))
                done.exception()  # retrieved here: nobody may be waiting
            if self.pending and not self._flush_scheduled:
                self._schedule()


class _Kept(NamedTuple):
    """One write waiting in StoreWriter: what it is (for the counts an operator reads),
    what runs after its commit, and the row it replaces whole (or None)."""
    write: Write
    kind: str
    then: Callable[[], None] | None
    key: Hashable | None
    size: int  # bytes it writes, where they may be many (GroupCommit's `size`)


class CaughtUp(NamedTuple):
    """The state database is written again after an outage that lost writes: how many of
    each kind, since when, and why (StateStore records the audit rows lost)."""

    dropped: dict[str, int]
    since: float
    reason: str


class StoreWriter:
    """Writes that are many, or must never hold up what caused them: process records at
    every spawn and exit, state checkpoints, audit rows, spec revisions the config file
    made. A thousand agents make a thousand of them in a few turns of the loop, and each
    synchronous SQLite commit (and now and then a WAL checkpoint with its fsyncs) was loop
    time. They are queued as functions of the connection and written by a GroupCommit, as
    the task journal's rows are, one transaction a batch. Order is kept: a record written
    and then deleted stays deleted. `committed()` resolves once everything queued so far
    has been tried (synchronous=NORMAL in WAL: a commit survives a crash of the daemon).

    When the database cannot be written (a full disk, an I/O error, a read-only remount,
    a lock held too long), nothing is lost and nothing waits on it: the batch's writes go
    back in front of the queue and are tried again every RETRY_EVERY seconds, as the task
    journal's are (`Outage`), up to `max_kept` of them; writes past that are dropped and
    counted by kind. The failure is told once to `on_error`, and the write that catches up
    once to `on_notice`, with what was kept and what was dropped. A write that is wrong
    rather than unlucky (a constraint, a missing table) is dropped alone and told: it runs
    in a savepoint of its own, so it never holds the others back."""

    def __init__(self, thread: WriterThread,
                 on_error: Callable[[str], None] | None = None,
                 on_notice: Callable[[str], None] | None = None,
                 max_kept: int = MAX_KEPT, stream: Stream | None = None) -> None:
        self.thread = thread
        self.stream = stream if stream is not None else Stream()  # CaughtUp goes on it
        self.on_error = on_error or (lambda msg: log.error("%s", msg))
        self.on_notice = on_notice or (lambda msg: log.warning("%s", msg))
        self.max_kept = max_kept
        self._group: GroupCommit[_Kept] = GroupCommit(thread, self._job, self._settle,
                                                      size=_kept_size)
        self.outage = self._group.outage
        self._unkeyed = itertools.count()  # keys for writes that replace nothing
        self._wrong: list[str] = []  # the batch in flight's dropped writes (one at a time)
        self.dropped: dict[str, int] = {}  # by kind, since the outage began
        self.lost = 0  # writes dropped since the writer opened (`corral stats`)
        self.batches = 0  # transactions committed
        self.writes = 0

    def submit(self, write: Write, kind: str = "write",
               then: Callable[[], None] | None = None, key: Hashable | None = None,
               size: int = 0) -> None:
        """Queue `write(connection)` for the next batch (never blocks the loop); `kind`
        names it in the counts told while the database cannot be written; `then` runs on
        the loop once it is committed. A write with a `key` replaces a waiting one of the
        same key (an upsert of the same row: a replica's state checkpoint), so writes that
        supersede each other do not fill what is kept during an outage. `size`: the bytes
        it writes, where they may be many (a batch of many is not committed on the loop:
        WriterThread.run_here)."""
        kept = _Kept(write, kind, then, key, size)
        slot: Hashable = ("keyed", key) if key is not None else next(self._unkeyed)
        if (self.outage.failing and len(self._group.pending) >= self.max_kept
                and slot not in self._group.pending):
            self._drop(kind)
            return
        self._group.put(slot, kept)

    async def committed(self) -> None:
        """Until everything submitted so far has been tried (committed, or kept again
        after a failure: see on_error)."""
        await self._group.committed()

    async def written(self) -> None:
        """Until everything submitted so far is committed, trying what is kept once more
        now; StoreError (the outage's reason) while it cannot be. What a command records
        waits for this: records are committed in the order the daemon made them, so a
        kept write never lands after (and undoes) a newer record."""
        self._group.retry_now()  # the command is waiting: try now, not at the next second
        await self.committed()
        if self.outage.failing:
            raise StoreError(f"state database {self.thread.path} cannot be written "
                             f"({self.outage.error})")

    def _job(self, db: sqlite3.Connection, batch: list[_Kept]) -> None:
        wrong = self._wrong
        wrong.clear()
        db.execute("BEGIN")
        for kept in batch:
            db.execute("SAVEPOINT one")
            try:
                kept.write(db)
            except Exception as exc:  # a wrong write is dropped alone
                if transient(exc):
                    raise
                db.execute("ROLLBACK TO one")
                why = (f"SQLite refused it ({exc})" if isinstance(exc, sqlite3.Error)
                       else f"it failed ({described(exc)})")
                wrong.append(f"one {kept.kind} dropped, {why}")
            db.execute("RELEASE one")
        db.execute("COMMIT")

    def _call(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        """A callback after a batch: one that raises is reported and the others still run."""
        try:
            fn(*args)
        except Exception:
            log.exception("state database %s: %s failed", self.thread.path, what)

    def _settle(self, batch: list[_Kept], error: str | None) -> None:
        if error is None:
            wrong, self._wrong = self._wrong, []
            self.batches += 1
            self.writes += len(batch) - len(wrong)
            for text in wrong:
                self._call("telling of a dropped write", self.on_error,
                           f"state database {self.thread.path}: {text}")
            self._caught_up(batch)
            for kept in batch:
                if kept.then is not None:
                    self._call(f"what follows the {kept.kind}", kept.then)
            return
        # past max_kept, the newest are dropped
        pending = self._group.pending
        while len(pending) > self.max_kept:
            self._drop(pending.pop(next(reversed(pending))).kind)
        if self._group.first_failure:
            self._call("telling of the failure", self.on_error,
                f"state database {self.thread.path} cannot be written ({error}): "
                f"{_counted(_kinds(list(pending.values())))} wait in memory and are "
                f"written when it can (tried every {RETRY_EVERY:g} s; at most "
                f"{self.max_kept} are kept, newer ones are dropped and counted): "
                f"{what_to_do()}")

    def _drop(self, kind: str) -> None:
        self.dropped[kind] = self.dropped.get(kind, 0) + 1
        self.lost += 1

    def stats(self) -> dict[str, Any]:
        """For `corral stats`: failing since (or None), writes waiting by kind, lost."""
        since = self.outage.since
        return {"failing_since": None if since is None else iso_time(since),
                "waiting": self.pending(), "lost": self.lost}

    def _caught_up(self, batch: list[_Kept]) -> None:
        since = self.outage.recovered()
        if since is None:
            return
        dropped, self.dropped = self.dropped, {}
        text = (f"state database {self.thread.path} is written again: "
                f"{_counted(_kinds(batch))} kept in memory since {iso_time(since)} are recorded")
        if dropped:
            text += f"; {_counted(dropped)} could not be kept and are lost"
        self._call("telling of the catch-up", self.on_notice, text)
        if dropped:
            self.stream.emit(CaughtUp(dropped, since, self.outage.error))

    def pending(self) -> dict[str, int]:
        """The writes not yet committed (kept while failing, being written, or waiting for
        the next batch), by kind."""
        return _kinds([v for _, v in self._group.inflight]
                      + list(self._group.pending.values()))

    def cancel_retry(self) -> None:
        self._group.cancel_retry()


def _kept_size(kept: _Kept) -> int:
    return kept.size


def _kinds(batch: list[_Kept]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kept in batch:
        counts[kept.kind] = counts.get(kept.kind, 0) + 1
    return counts


def _counted(counts: dict[str, int]) -> str:
    """{"audit row": 2, "process record": 1} -> "2 audit rows and 1 process record"."""
    parts = [plural(n, kind) for kind, n in counts.items()]
    if not parts:
        return "no writes"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class StateStore:
    """The small tables: runtime agents, spec revisions, state checkpoints, audit,
    incarnations and process records. Reads run on the loop's connection (`db`); writes
    run on the writer thread (`thread`, WriterThread, shared with the task journal), never
    on the loop once it is open:
    - what a control command changes that must outlive the daemon (runtime agents, kept
      scale counts, their revisions) is committed by the command before it acts
      (`commit`): a database that cannot be written refuses the command, nothing changed
      (decision 61);
    - what is many or must not hold up its cause (process records, checkpoints, audit
      rows, revisions the config file made) goes through `writer` (StoreWriter), batched,
      and kept and tried again while the database cannot be written."""

    def __init__(self, path: Path, *, sync: str = "normal",
                 stream: Stream | None = None) -> None:
        self.path = path
        self.stream = stream if stream is not None else Stream()  # the daemon's: the engine's
        self.stream.subscribe(self._audit_gap, CaughtUp)
        self.sync = sync
        self.db = open_database(path, sync=sync)
        # open_writer(), on the loop: the one writer thread, shared with the task journal
        self.thread: WriterThread | None = None
        self.writer: StoreWriter | None = None

    def open_writer(self, on_error: Callable[[str], None] | None = None,
                    on_notice: Callable[[str], None] | None = None) -> StoreWriter:
        self.thread = WriterThread(self.path, sync=self.sync)
        self.writer = StoreWriter(self.thread, on_error=on_error, on_notice=on_notice,
                                  stream=self.stream)
        return self.writer

    async def commit(self, writes: Iterable[Write]) -> None:
        """Commit `writes` in one transaction now, or raise StoreError (see WriterThread)."""
        if self.thread is None:  # before the writer is open (tests): on this connection
            with errors_named(self.path), self.db:
                self.db.execute("BEGIN IMMEDIATE")
                for write in writes:
                    write(self.db)
            return
        writes = list(writes)  # made now: behind what the writer holds, never ahead
        if self.writer is not None:
            await self.writer.written()
        await self.thread.commit(writes)

    def runtime_agents(self) -> dict[str, dict[str, Any]]:
        with errors_named(self.path):
            rows = self.db.execute("SELECT name, spec FROM runtime_agents ORDER BY added_at")
            return {name: msgspec.json.decode(spec) for name, spec in rows}

    @staticmethod
    def saving_runtime_agent(name: str, table: dict[str, Any]) -> Write:
        row = (name, msgspec.json.encode(table).decode(), time.time())

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO runtime_agents (name, spec, added_at) "
                       "VALUES (?, ?, ?)", row)

        return write

    @staticmethod
    def forgetting_runtime_agent(name: str) -> Write:
        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM runtime_agents WHERE name = ?", (name,))

        return write

    def save_state(self, name: str, replica: int, when: float, state: Any) -> None:
        """Through the writer when there is one (checkpoints come per agent)."""
        row = (name, replica, when, msgspec.json.encode(state).decode())

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO agent_state (name, replica, time, state) "
                       "VALUES (?,?,?,?)", row)

        if self.writer is not None:
            self.writer.submit(write, "checkpoint", key=("agent_state", name, replica),
                               size=len(row[3]))
        else:
            write(self.db)

    def states(self) -> dict[tuple[str, int], tuple[float, Any]]:
        with errors_named(self.path):
            rows = self.db.execute("SELECT name, replica, time, state FROM agent_state")
            return {(n, r): (t, msgspec.json.decode(s)) for n, r, t, s in rows}

    def audit(self, uid: int, pid: int, method: str, params: Any, outcome: str,
              who: str | None = None, tenant: str | None = None) -> None:
        """An audit row, through the writer: it never holds up, nor fails, what it records
        (kept while the database cannot be written; StoreWriter). `who`: a token's
        caller ("token NAME"); a socket peer is its uid and pid. `tenant`: the caller's."""
        self.audit_row((time.time(), uid, pid, method, msgspec.json.encode(params).decode(),
                        outcome), who, tenant)

    def audit_row(self, row: tuple[float, int, int, str, str, str],
                  who: str | None = None, tenant: str | None = None) -> None:
        full = (*row, who, tenant)

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO audit (time, uid, pid, method, params, outcome, who, "
                       "tenant) VALUES (?,?,?,?,?,?,?,?)", full)

        if self.writer is not None:
            self.writer.submit(write, "audit row", size=len(row[4]))
            return
        try:  # no writer (before it opens, after it closes): here, and never raised
            with self.db:
                write(self.db)
        except sqlite3.Error as exc:
            log.error("state database %s: an audit row could not be written (%s): %s",
                      self.path, exc, full)

    def _audit_gap(self, e: CaughtUp) -> None:
        """After a catch-up that lost audit rows: a row that says so, where they would be."""
        rows, since, reason = e.dropped.get("audit row", 0), e.since, e.reason
        if rows:
            self.audit_row((time.time(), os.geteuid(), os.getpid(), "audit.dropped",
                            msgspec.json.encode({"rows": rows, "since": iso_time(since)}
                                                ).decode(),
                            f"error: {plural(rows, 'audit row')} could not be recorded: "
                            f"the state database could not be written ({reason})"))

    def audit_log(self, limit: int = 100) -> list[tuple[Any, ...]]:
        rows = self.db.execute(
            "SELECT time, uid, pid, method, params, outcome, who, tenant FROM audit "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return list(reversed(rows.fetchall()))

    # -- containment: incarnations of the daemon and the processes they run --------------
    def begin_incarnation(self, owner: str, pid: int, start_time: int) -> None:
        """Written (and committed) before the daemon starts anything."""
        self.db.execute(
            "INSERT OR REPLACE INTO incarnations (owner, pid, start_time, started_at) "
            "VALUES (?, ?, ?, ?)", (owner, pid, start_time, time.time()))

    def incarnations(self) -> list[tuple[str, int, int]]:
        """(owner, daemon pid, daemon start time) of every incarnation not ended cleanly."""
        with errors_named(self.path):
            return list(self.db.execute("SELECT owner, pid, start_time FROM incarnations"))

    def process_records(self, owners: Iterable[str]) -> list[ProcessRecord]:
        owners = list(owners)
        with errors_named(self.path):
            rows = self.db.execute(
                f"SELECT record FROM processes WHERE owner IN ({','.join('?' * len(owners))})",
                owners)
            return [msgspec.json.decode(r, type=ProcessRecord) for (r,) in rows]

    @staticmethod
    def write_processes(started: Iterable[ProcessRecord], ended: Iterable[str]
                        ) -> Write:
        """A write (for StoreWriter) of spawns' records and exits'."""
        rows = [(r.token, r.owner, msgspec.json.encode(r).decode()) for r in started]
        gone = [(t,) for t in ended]

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO processes (token, owner, record) VALUES (?, ?, ?)",
                rows)
            db.executemany("DELETE FROM processes WHERE token = ?", gone)

        return write

    @staticmethod
    def ending_incarnations(owners: Iterable[str]) -> Write:
        """A write that forgets incarnations whose processes are all gone."""
        owners = list(owners)

        def write(db: sqlite3.Connection) -> None:
            for owner in owners:
                db.execute("DELETE FROM processes WHERE owner = ?", (owner,))
                db.execute("DELETE FROM incarnations WHERE owner = ?", (owner,))

        return write

    def end_incarnations(self, owners: Iterable[str]) -> None:
        """Forget incarnations whose processes are all gone (stopped or reclaimed)."""
        with self.db:
            self.db.execute("BEGIN")
            self.ending_incarnations(owners)(self.db)

    async def close_writer(self) -> None:
        """Commit what is queued, then stop the writer thread (after the journal's close:
        the thread is shared)."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            await writer.committed()  # while failing: one more attempt
            writer.cancel_retry()
            lost = writer.pending()
            for kind, n in writer.dropped.items():
                lost[kind] = lost.get(kind, 0) + n
            if lost:
                writer.on_error(f"state database {self.path}: not written before shutdown, "
                                f"lost: {_counted(lost)}")
        if self.thread is not None:
            thread, self.thread = self.thread, None
            await thread.close()

    def close(self) -> None:
        self.db.close()
