"""The state database's schema and opening (SQLite, WAL, 0600 in a 0700 directory),
brought to this corral's layout (`PRAGMA user_version`) before anything reads it.

A new database is the schema at layout `OLDEST` at once (storefresh.db's bytes placed,
else storefresh.sql's statements run), then the entries of `MIGRATIONS` each in its own
transaction. To change the schema, append ONE entry and never edit one that has landed:
databases in the field have run it. To squash (move `OLDEST` up), run
`scripts/fresh_schema.py`. Nothing is ever reset or half-upgraded silently: an older,
newer, locked, read-only or corrupt database stops the daemon with a
`StoreError` saying what to do.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..statefiles import SQLITE_SIDES, check_database, open_file

BUSY_TIMEOUT_MS = 2000  # another process's transaction may hold the write lock this long
# SQLite's memory in all, past which its connections' page caches reuse their pages rather
# than grow: without it each connection keeps up to 2 MiB of pages, most of them rows read
# or written once (a wave of suspended tasks' writes, their read-back at start-up)
SQLITE_HEAP_BYTES = 4 * 1024 * 1024

# The layout storefresh.sql makes, the oldest this corral upgrades: the migrations to it
# are squashed into that file (decision 1420), as a release that is a required stop does
OLDEST = 35
# a corral that brings a database of any older layout to OLDEST
BRIDGE = "corral 0.1.0 at commit 53eaacf8"

# the tenant of the agent that holds the name `agent`: its newest revision's, `default`
# when that names none (a revision whose spec is not JSON is passed over: it must not stop
# a daemon's start)
HOLDER = ("COALESCE((SELECT json_extract(r.spec, '$.tenant') FROM revisions r "
          "WHERE r.agent = {agent} AND json_valid(r.spec) "
          "ORDER BY r.time DESC, r.revision DESC LIMIT 1), 'default')")

# layout OLDEST + 1 onwards, each entry SQL
MIGRATIONS: list[str] = []
SCHEMA_VERSION = OLDEST + len(MIGRATIONS)
FRESH = Path(__file__).parent / "storefresh.sql"
# storefresh.sql's schema made into a database (scripts/fresh_schema.py writes both): a new
# database is its bytes placed, not the statements run, SQLite's DDL being most of a first
# start's store
FRESH_DB = Path(__file__).parent / "storefresh.db"


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
        place_fresh(path)
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


def place_fresh(path: Path) -> bool:
    """A new database at `path`, FRESH_DB's schema, made whole before it has a name: its
    bytes written to an unnamed file of its directory (O_TMPFILE), then linked at `path`,
    which fails where a file is (one another process made meanwhile: nothing replaced,
    nothing opened half-written, nothing left behind). False where none was placed (a
    file is there or beside it, a WAL SQLite would read into it; or the file system makes
    no unnamed file): the database is then made by storefresh.sql's statements."""
    if any(os.path.lexists(f"{path}{side}") for side in SQLITE_SIDES):
        return False
    data = FRESH_DB.read_bytes()
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600, dir_fd=directory)
        try:
            with open(fd, "wb", closefd=False) as out:
                out.write(data)
            # (linkat of the unnamed file by its /proc name: following it needs no
            # privilege, where AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH)
            os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=directory,
                    follow_symlinks=True)
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        os.close(directory)
    return True


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, migrations: list[str] | None = None) -> int:
    """Apply the migrations the database has not had; its layout afterwards."""
    steps = MIGRATIONS if migrations is None else migrations
    newest = OLDEST + len(steps)
    # BEGIN IMMEDIATE: a daemon racing us waits here rather than migrating twice
    db.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(db)
        if version > newest:
            raise StoreError(
                f"its schema version {version} is newer than this corral knows "
                f"({newest}): run the corral that wrote it, or a newer one")
        if (version == 0
                and db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None):
            for statement in _statements(FRESH.read_text().partition("\n")[2]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {OLDEST}")
            version = OLDEST
        elif version < OLDEST:
            raise StoreError(
                f"its layout {version} is older than layout {OLDEST}, the oldest this corral "
                f"upgrades (decision 1420); it was not changed. Start {BRIDGE} once on it "
                f"(it upgrades every older layout to {OLDEST}), then this one; or move it "
                "aside, with its -wal and -shm files, to start with an empty state")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    for number in range(version + 1, newest + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(db) >= number:  # another process did it meanwhile
                db.execute("COMMIT")
                continue
            for statement in _statements(steps[number - OLDEST - 1]):
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


