"""`corral daemon`'s start as the console script runs it (bench/bench_boot.py measures its
CPU): what its imports made is out of the collector's passes, and a new state database is
a prepared file's bytes placed, not SQLite's DDL run."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from corral.daemon import storeschema
from corral.daemon.store import StateStore
from corral.daemon.storeschema import open_database, place_fresh

ROOT = Path(__file__).resolve().parent.parent

# the daemon refused its config (its start ends before it freezes its own heap): what the
# collector still tracks at its exit, and what was frozen
_COLLECTOR = """
import atexit, gc, sys
atexit.register(lambda: print(gc.isenabled(), len(gc.get_objects()), gc.get_freeze_count(),
                              file=sys.__stdout__))
sys.argv = ["corral", *sys.argv[1:]]
from corral.cli.entry import main
main()
"""


def test_the_daemons_imports_are_frozen_as_the_clis(tmp_path: Path) -> None:
    """The daemon's modules are imported with the collector off and frozen, as the CLI's
    are (entry.long_lived_imports): its passes while importing found nothing to free, and
    were a share of a cold boot's CPU. What the collector still tracks is what was made
    after, a small part of what was frozen."""
    config = tmp_path / "corral.toml"
    config.write_text("bad = 1\n")
    r = subprocess.run([sys.executable, "-c", _COLLECTOR, "daemon", "--config", str(config)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (r.returncode, r.stderr) == (
        1, f"corral: invalid config: {config}: bad: unknown top-level key\n")
    enabled, tracked, frozen = r.stdout.split()
    assert enabled == "True"
    assert int(tracked) * 10 < int(frozen), r.stdout


# -- a new state database: storefresh.db's bytes placed (decision 2061) ---------------------
def _schema(db: sqlite3.Connection) -> tuple[int, list[tuple[str, str, str, str | None]]]:
    return (db.execute("PRAGMA user_version").fetchone()[0],
            sorted(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")))


def _made_by_statements() -> tuple[int, list[tuple[str, str, str, str | None]]]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    for statement in storeschema._statements(storeschema.FRESH.read_text().partition("\n")[2]):
        db.execute(statement)
    db.execute(f"PRAGMA user_version = {storeschema.OLDEST}")
    return _schema(db)


def test_the_placed_schema_is_storefresh_sqls_at_its_layout(tmp_path: Path) -> None:
    """storefresh.db is storefresh.sql's statements run, at layout OLDEST, in WAL mode,
    and scripts/fresh_schema.py makes it so again from the file."""
    placed = sqlite3.connect(f"file:{storeschema.FRESH_DB}?mode=ro&immutable=1", uri=True)
    assert _schema(placed) == _made_by_statements()
    assert len(_schema(placed)[1]) > 40
    placed.close()
    head = storeschema.FRESH_DB.read_bytes()[:20]
    assert head[:16] == b"SQLite format 3\0" and head[18:20] == b"\x02\x02"  # WAL
    spec = importlib.util.spec_from_file_location("fresh_schema",
                                                  ROOT / "scripts" / "fresh_schema.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.prepare(storeschema.FRESH, tmp_path / "again.db") == storeschema.OLDEST
    again = sqlite3.connect(tmp_path / "again.db")
    assert _schema(again) == _made_by_statements()
    again.close()


def test_a_new_state_database_is_placed_whole_and_the_daemons_alone(tmp_path: Path) -> None:
    """Placed in a new state directory: one name, 0600, WAL, migrated to this corral's
    layout; the state store opens it and writes to it."""
    path = tmp_path / "state" / "state.db"
    db = open_database(path)
    st = os.stat(path)
    assert (st.st_nlink, st.st_mode & 0o777) == (1, 0o600)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert storeschema.schema_version(db) == storeschema.SCHEMA_VERSION
    assert _schema(db)[1] == _made_by_statements()[1]
    db.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.db"]
    StateStore(path).close()


@pytest.mark.parametrize("there", ["", "-wal", "-journal"])
def test_a_database_is_placed_only_where_no_file_is(tmp_path: Path, there: str) -> None:
    """A file at the name (another process's, made meanwhile) is not replaced, nor is one
    placed beside a WAL or a journal SQLite would read into it."""
    path = tmp_path / "state.db"
    beside = tmp_path / f"state.db{there}"
    beside.write_bytes(b"another's")
    assert place_fresh(path) is False
    assert beside.read_bytes() == b"another's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [beside.name]


def test_a_file_system_of_no_unnamed_files_places_none(tmp_path: Path) -> None:
    """Where the file system makes no unnamed file (sysfs: O_TMPFILE is refused), nothing
    is placed and the database is made by storefresh.sql's statements, as before."""
    assert place_fresh(Path("/sys/corral-state.db")) is False
    assert not os.path.lexists("/sys/corral-state.db")


def test_the_placed_schema_is_package_data() -> None:
    """An installed corral (not a checkout) places a new database too."""
    root = Path(storeschema.__file__).parent
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["corral.daemon"]
    assert storeschema.FRESH_DB in {p for g in globs for p in root.glob(g)}
