"""The state database: schema versions and migrations, file modes, and its faults at
start-up (locked, read-only, corrupt, too new) — each a clear error, never a reset."""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tomllib
import weakref
from pathlib import Path

import pytest

from corral.daemon import storeschema
from corral.daemon.store import StateStore
from corral.daemon.storeschema import SCHEMA_VERSION, StoreError, open_database

from .conftest import ROOT
from .daemon_harness import Daemon

# The schema as corral wrote it before schema versions existed (user_version 0)
UNVERSIONED_SCHEMA = """
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
"""


def tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _old(path: Path, layout: int) -> bytes:
    """A database as a corral of `layout` left it (WAL, as corral's own); its bytes."""
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(UNVERSIONED_SCHEMA)
    old.execute("INSERT INTO runtime_agents VALUES ('extra', '{\"command\": \"x\"}', 1.0)")
    old.execute(f"PRAGMA user_version = {layout}")
    old.close()
    return path.read_bytes()


@pytest.mark.parametrize("layout", [0, storeschema.OLDEST - 1])
def test_a_database_older_than_the_oldest_layout_is_refused_untouched(
        tmp_path: Path, layout: int) -> None:
    """Decision 1420: the migrations before layout OLDEST are squashed into storefresh.sql;
    a database of an older layout (0: from before layouts were numbered) is refused at
    start, naming its layout, the oldest upgraded and what to do, and is left as it was."""
    path = tmp_path / "corral.db"
    before = _old(path, layout)
    with pytest.raises(StoreError) as err:
        StateStore(path)
    assert str(err.value) == (
        f"state database {path}: its layout {layout} is older than layout 35, the oldest "
        "this corral upgrades (decision 1420); it was not changed. Start corral 0.1.0 at "
        "commit 53eaacf8 once on it (it upgrades every older layout to 35), then this one; "
        "or move it aside, with its -wal and -shm files, to start with an empty state")
    assert path.read_bytes() == before
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (layout,)
    assert tables(db) == {"runtime_agents", "agent_state", "audit"}
    assert db.execute("SELECT name FROM runtime_agents").fetchall() == [("extra",)]
    db.close()


def test_a_squash_makes_the_schema_the_migrations_leave(tmp_path: Path) -> None:
    """scripts/fresh_schema.py writes storefresh.sql as that file and the migrations after
    it leave a database: the same tables, indexes and SQL text; with none appended, the
    file as it is."""
    spec = importlib.util.spec_from_file_location("fresh_schema",
                                                  ROOT / "scripts" / "fresh_schema.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.squash(tmp_path / "same.sql") == SCHEMA_VERSION
    assert (tmp_path / "same.sql").read_text() == storeschema.FRESH.read_text()
    storeschema.MIGRATIONS.append("CREATE TABLE extra (x INTEGER);")
    try:
        stepped = open_database(tmp_path / "stepped.db")
        assert script.squash(tmp_path / "squashed.sql") == SCHEMA_VERSION + 1
    finally:
        storeschema.MIGRATIONS.pop()
    made = storeschema.connect(tmp_path / "made.db")
    for statement in storeschema._statements(
            (tmp_path / "squashed.sql").read_text().partition("\n")[2]):
        made.execute(statement)
    assert _master(made) == _master(stepped)
    assert "extra" in tables(made) and len(_master(made)) > 40
    made.close()
    stepped.close()


def test_a_new_migration_is_one_appended_entry_applied_once(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    open_database(path).close()
    more = [*storeschema.MIGRATIONS,
            "CREATE TABLE extra (x INTEGER);\nINSERT INTO extra VALUES (1);"]
    db = storeschema.connect(path)
    assert storeschema.migrate(db, more) == SCHEMA_VERSION + 1
    assert storeschema.migrate(db, more) == SCHEMA_VERSION + 1  # nothing left to apply
    assert db.execute("SELECT count(*) FROM extra").fetchone() == (1,)
    db.close()


def _master(db: sqlite3.Connection) -> list[tuple[str, str, str, str | None]]:
    return sorted(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))


def test_a_new_database_past_the_fresh_schema_is_migrated_step_by_step(
        tmp_path: Path) -> None:
    """A migration appended without making storefresh.sql again: a new database is still
    the newest schema (the migrations run), never the fresh schema short of one."""
    storeschema.MIGRATIONS.append("CREATE TABLE extra (x INTEGER);")
    try:
        db = open_database(tmp_path / "corral.db")
        assert storeschema.schema_version(db) == SCHEMA_VERSION + 1
        assert "extra" in tables(db) and "tasks" in tables(db)
        db.close()
    finally:
        storeschema.MIGRATIONS.pop()


def test_the_fresh_schema_is_package_data() -> None:
    """An installed corral (not a checkout) makes a new database at once too."""
    root = Path(storeschema.__file__).parent
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["corral.daemon"]
    assert root / "storefresh.sql" in {p for g in globs for p in root.glob(g)}


def test_a_failing_migration_leaves_the_previous_version_whole(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    open_database(path).close()
    broken = [*storeschema.MIGRATIONS, "CREATE TABLE half (x INTEGER);\nNOT SQL AT ALL;"]
    db = storeschema.connect(path)
    with pytest.raises(sqlite3.OperationalError, match="syntax error"):
        storeschema.migrate(db, broken)
    assert storeschema.schema_version(db) == SCHEMA_VERSION
    assert "half" not in tables(db)
    db.close()


def test_a_database_from_a_newer_corral_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    db = open_database(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 3}")
    db.close()
    with pytest.raises(StoreError) as err:
        open_database(path)
    assert str(err.value) == (
        f"state database {path}: its schema version {SCHEMA_VERSION + 3} is newer than this "
        f"corral knows ({SCHEMA_VERSION}): run the corral that wrote it, or a newer one")


def test_the_state_directory_is_0700_and_the_database_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    s = StateStore(state / "corral.db")
    s.save_state("a", 0, 1.0, {})
    try:
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in ("corral.db", "corral.db-wal", "corral.db-shm"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    finally:
        s.close()


def test_a_corrupt_page_is_reported_not_reset(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    s = StateStore(path)
    for i in range(300):
        s.save_state(f"agent{i}", 0, 1.0, {"pad": "x" * 200})
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page:len(data)] = b"\xa5" * (len(data) - 2 * page)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"is corrupt .*corral will not reset it"):
        StateStore(path).states()
    assert path.read_bytes() == bytes(data)


# -- through `corral daemon` ----------------------------------------------------------------
def daemon_error(d: Daemon) -> tuple[int, str]:
    d.start(wait_ready=False)
    assert d.proc is not None
    rc = d.proc.wait(30)
    assert d.proc.stderr is not None
    return rc, d.proc.stderr.read().decode()


def test_daemon_refuses_a_corrupt_database_naming_it(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.state.mkdir(mode=0o700)
    db = d.state / "corral.db"
    garbage = b"this is not an SQLite database\n" * 200
    db.write_bytes(garbage)
    try:
        rc, err = daemon_error(d)
    finally:
        d.close()
    assert rc == 1
    assert err.startswith(f"corral: state database {db} is corrupt (file is not a database): "
                          "corral will not reset it. Move it aside")
    assert db.read_bytes() == garbage


def test_daemon_refuses_a_database_locked_by_another_process(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    db = d.state / "corral.db"
    open_database(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys\n"
         f"db = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
         "db.execute('BEGIN EXCLUSIVE')\nprint('held', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        rc, err = daemon_error(d)
    finally:
        holder.kill()
        holder.wait()
        d.close()
    assert rc == 1
    assert err == (f"corral: state database {db} is locked by another process (database is "
                   "locked): is another corral daemon using the same state_dir? Stop it, or "
                   "give this daemon its own state_dir\n")


def unshare_reason() -> str | None:
    """Why a test cannot run the daemon in a mount namespace of its own here (to mount
    something only it sees), or None."""
    if os.geteuid() != 0:
        return "needs root to mount in a private mount namespace"
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    return None


def daemon_with_read_only(d: Daemon, directory: Path) -> subprocess.CompletedProcess[str]:
    """`corral daemon` run to its end with `directory` a read-only bind mount, in a mount
    namespace of the daemon's own (nothing changes outside it)."""
    script = 'mount --bind -o ro "$0" "$0" && exec "$1" -m corral daemon --config "$2"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
         str(directory), sys.executable, str(d.config)],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.skipif(unshare_reason() is not None, reason=str(unshare_reason()))
def test_daemon_refuses_a_read_only_database(tmp_path: Path) -> None:
    # root may write any file: the state directory is a read-only bind mount
    d = Daemon(tmp_path)
    db = d.state / "corral.db"
    open_database(db).close()
    # the logs elsewhere: a log directory that cannot be written stops the daemon first
    d.config.write_text(d.config.read_text().replace(f'log_dir = "{d.state}/logs"',
                                                     f'log_dir = "{tmp_path}/logs"'))
    proc = daemon_with_read_only(d, d.state)
    d.close()
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (
        f"corral: state database {db} is read-only (on a read-only file system): make the "
        "file and its directory writable by uid 0, or set [supervisor] state_dir to a "
        "writable directory\n")


def test_a_revision_says_each_key_changed_old_to_new() -> None:
    from corral.daemon.revisions import describe_change

    old = {"command": ["python3", "a.py"], "replicas": 3, "env": {"TOKEN": "s1", "A": "x"},
           "limits": {"memory_mb": 256}, "config": {"key": "secret"}}
    new = {"command": ["python3", "b.py"], "replicas": 2, "env": {"TOKEN": "s2", "B": "y"},
           "limits": {"memory_mb": 512, "cpu_seconds": 60}, "restart": "always"}
    assert describe_change(None, new) == "created"
    assert describe_change(new, new) == "no change"
    # nested tables key by key; env's and config's values are never shown
    assert describe_change(old, new) == (
        'command ["python3", "a.py"] -> ["python3", "b.py"], config.key removed, '
        "env.A removed, env.B added, env.TOKEN changed, limits.cpu_seconds 0 -> 60, "
        "limits.memory_mb 256 -> 512, replicas 3 -> 2, restart 'on-failure' -> 'always'")
    assert describe_change({"tools": ["x" * 60]}, {"tools": ["y" * 60]}) == "tools changed"


def _cursors_known(db: sqlite3.Connection) -> int:
    """The weak references to cursors `db` holds (CPython 3.11's sqlite3 keeps one for
    each cursor it made, the dead among them until every 200th cursor)."""
    return sum(isinstance(w, weakref.ReferenceType) for r in gc.get_referents(db)
               if isinstance(r, list) for w in r)


def test_the_stores_statements_make_no_cursor_each(tmp_path: Path) -> None:
    """Issue 55, decision 950: thousands of tasks suspended at once ran as many statements;
    a cursor each left up to 200 dead weak references a connection, scattered among the
    burst's short-lived objects, each keeping an arena of the allocator's."""
    db = open_database(tmp_path / "state.db")
    try:
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        known = _cursors_known(db)
        most = 0
        for k in range(300):
            db.execute("INSERT INTO t VALUES (?, ?)", (k, f"v{k}"))
            assert db.rows("SELECT v FROM t WHERE k = ?", (k,)) == [(f"v{k}",)]
            db.executemany("UPDATE t SET v = ? WHERE k = ?", [("w", k)])
            most = max(most, _cursors_known(db) - known)
        assert most <= 1
        # a cursor its caller holds is its own: the statements run meanwhile take another
        rows = db.execute("SELECT k FROM t WHERE k < 3 ORDER BY k")
        changed = db.execute("UPDATE t SET v = 'x' WHERE k < 5")
        db.execute("INSERT INTO t VALUES (1000, 'y')")
        assert (rows.fetchall(), changed.rowcount) == ([(0,), (1,), (2,)], 5)
        assert db.rows("SELECT count(*) FROM t") == [(301,)]
    finally:
        db.close()


SQLITE_HEAP = """
import ctypes, sqlite3, sys, _sqlite3
from pathlib import Path
from corral.daemon.storeschema import SQLITE_HEAP_BYTES, connect

used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used  # (found in what it links)
used.restype = ctypes.c_int64
path = Path(sys.argv[1])

def read_whole(dbs):
    assert all(db.execute("SELECT count(*), sum(length(v)) FROM t").fetchone()
               == (2000, 2000 * 4000) for db in dbs), "rows read back otherwise"
    return used()

plain = [sqlite3.connect(path) for _ in range(4)]
print("plain", read_whole(plain))
for db in plain:
    db.close()
if sys.argv[2] == "embedder":  # a program that embeds corral and set a limit of its own
    sqlite3.connect(":memory:").execute("PRAGMA soft_heap_limit = 123456789")
ours = [connect(path) for _ in range(4)]
print("ours", read_whole(ours), SQLITE_HEAP_BYTES)
print("limit", ours[0].execute("PRAGMA soft_heap_limit").fetchone()[0])
"""


@pytest.mark.parametrize("embedder", [False, True], ids=["daemon", "embedder"])
def test_the_stores_sqlite_memory_is_bounded_in_all_not_per_connection(
        tmp_path: Path, embedder: bool) -> None:
    """Issue 55, decision 1007: each connection's page cache grew to 2 MiB of rows read or
    written once (a wave of suspended tasks, their read-back at a restart): SQLite's heap
    in all is bounded by a soft limit, unless a program embedding corral set its own."""
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:  # 8 MB of rows: four connections reading it whole
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        db.executemany("INSERT INTO t VALUES (?, ?)", ((k, "x" * 4000) for k in range(2000)))
    db.close()
    r = subprocess.run([sys.executable, "-c", SQLITE_HEAP, str(path),
                        "embedder" if embedder else "daemon"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    out = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in r.stdout.splitlines()}
    (plain,), (ours, bound), (limit,) = out["plain"], out["ours"], out["limit"]
    assert plain > 2 * bound, r.stdout  # a cache a connection, past the bound
    if embedder:
        assert limit == 123456789 and ours > 2 * bound, r.stdout
    else:
        # a soft limit: a read in progress may pass it by the pages it holds at once
        assert ours < bound + 1024 * 1024 and limit == bound, r.stdout
