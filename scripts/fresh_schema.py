"""Squash the state database's migrations (decision 1420): write
corral/daemon/storeschema.py's storefresh.sql as the schema that file and every entry of
`MIGRATIONS` leave, its first line naming that layout, and storefresh.db as that
schema made into a database (what a new state database is placed from, decision 2061).
Then, by hand, in storeschema.py:
`OLDEST` that layout, `MIGRATIONS` empty, and `BRIDGE` the commit before (a corral that
upgrades the layouts squashed); docs/operations.md#with-a-restart names them too.

    .venv/bin/python scripts/fresh_schema.py
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.daemon.storeschema import FRESH, FRESH_DB, _statements, migrate  # noqa: E402


def squash(out: Path) -> int:
    """storefresh.sql and the migrations made into one schema at `out`; its layout."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    layout = migrate(db)
    rows = [sql for (sql,) in db.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")]
    lines = [f"-- layout {layout} (storeschema.OLDEST): made by scripts/fresh_schema.py, "
             "not by hand"]
    lines += [f"{sql};\n" for sql in rows]
    out.write_text("\n".join(lines) + "\n")
    return layout


def prepare(sql: Path, out: Path) -> int:
    """The schema `sql` writes (a squash's) made into a database at `out`, in WAL mode
    (as the daemon opens it), its user_version the layout the file's first line names;
    that layout."""
    head, _, body = sql.read_text().partition("\n")
    layout = int(head.split()[2])  # "-- layout N (...)"
    for side in ("", "-wal", "-shm"):
        out.with_name(out.name + side).unlink(missing_ok=True)
    db = sqlite3.connect(out, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for statement in _statements(body):
        db.execute(statement)
    db.execute(f"PRAGMA user_version = {layout}")
    db.close()  # (the last connection's close checkpoints the WAL into the file)
    return layout


def main() -> int:
    layout = squash(FRESH)
    prepare(FRESH, FRESH_DB)
    print(f"{FRESH.relative_to(ROOT)}, {FRESH_DB.name}: layout {layout}; now set "
          f"storeschema.OLDEST = {layout}, empty MIGRATIONS and name the commit before in "
          "BRIDGE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
