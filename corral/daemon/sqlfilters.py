"""A listing's filters as SQL: the clauses of the values given (None: no filter) and their
arguments, for the pages of tasks (taskjournal.py) and of runs (workflows/runstore.py)."""

from __future__ import annotations

from typing import Any


def given(*filters: tuple[str, Any]) -> tuple[list[str], list[Any]]:
    """(`column = ?`-like clause, value) pairs: the clauses whose value is not None, to be
    joined by AND, and their arguments in the same order (more may be appended to both)."""
    kept = [(clause, value) for clause, value in filters if value is not None]
    return [clause for clause, _ in kept], [value for _, value in kept]
