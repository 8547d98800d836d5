"""Write corral/daemon/storefresh.sql: the state database's schema as the migrations of
corral/daemon/storeschema.py leave it, which a new database is made from at once
(decision 927). Run it after appending a migration (tests/test_store.py says when):

    .venv/bin/python scripts/fresh_schema.py
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.daemon.storeschema import MIGRATIONS, digest, migrate  # noqa: E402

OUT = ROOT / "corral" / "daemon" / "storefresh.sql"


def main() -> int:
    db = sqlite3.connect(":memory:", isolation_level=None)
    migrate(db, MIGRATIONS)  # the list given: step by step, never from this file
    rows = [sql for (sql,) in db.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")]
    # the digest first, each statement as SQLite keeps it (the test compares the texts)
    lines = [f"-- {digest(MIGRATIONS)}: made by scripts/fresh_schema.py, not by hand"]
    lines += [f"{sql};\n" for sql in rows]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{OUT.relative_to(ROOT)}: {len(rows)} statements, version {len(MIGRATIONS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
