"""A write of the state database: a function of the writer thread's connection
(storewriter.py runs it), here one statement's. A leaf: the modules whose tables are
storeschema.py's migrations make writes too."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

Write = Callable[[sqlite3.Connection], None]


def statement(sql: str, args: Any = ()) -> Write:
    def write(db: sqlite3.Connection) -> None:
        db.execute(sql, args)

    return write


def each(sql: str, rows: Iterable[Any]) -> Write:
    """One statement for each of `rows` (read now)."""
    kept = list(rows)

    def write(db: sqlite3.Connection) -> None:
        db.executemany(sql, kept)

    return write
