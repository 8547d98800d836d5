"""Behaviours written once above the home, held by an AST walk of corral/ (issue 86's
"no per-store twin"): a submission's idempotency key (corral/taskkeys.py, decision 1390),
and history and rollback (corral/rollbacks.py, decision 1391). A store keeps keys (put if
absent, return what is there) and revisions; the rule that reads them, and its refusals'
words, is written in one module."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

from .trees import file_tree, walked

CORRAL = Path(__file__).resolve().parent.parent / "corral"
KEY_RULE = CORRAL / "taskkeys.py"
# what only the rule may do: a request's digest, the key's two refusals, a key's state read
KEY_RULING = frozenset({"digest", "other_request", "bound_reached"})
KEY_STATES = frozenset({"ACCEPTED", "CLAIMED"})
ROLLBACK_RULE = CORRAL / "rollbacks.py"
# a rollback's words, each followed by a number, the rule's alone (as is a history's answer)
ROLLBACK_WORDS = ("rollback to revision ", "no revision ", "revisions kept: ")
# each home's KeyStore
KEY_STORES = {CORRAL / "daemon" / "taskjournal.py": "TaskJournalDB",
              CORRAL / "cluster" / "submitkeys.py": "SubmitKeys"}


def _from_rule(tree: ast.Module) -> set[str]:
    """The names a module takes from the key's rule (`taskkeys` itself included)."""
    names = set()
    for node in walked(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("taskkeys"):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and any(a.name == "taskkeys"
                                                      for a in node.names):
            names.add("taskkeys")
    return names


def _name(node: ast.AST, taken: set[str]) -> str | None:
    """The rule's name `node` reads (`X` taken from it, or `taskkeys.X`), else None."""
    if isinstance(node, ast.Name) and node.id in taken:
        return node.id
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "taskkeys" and "taskkeys" in taken):
        return node.attr
    return None


def rulings(path: Path) -> list[str]:
    """Where `path` does what only the key's rule may: `line: what`."""
    tree = file_tree(path)
    taken = _from_rule(tree) if path != KEY_RULE else KEY_RULING | KEY_STATES
    found = []
    for node in walked(tree):
        if isinstance(node, ast.Call) and _name(node.func, taken) in KEY_RULING:
            found.append(f"{node.lineno}: calls {_name(node.func, taken)}")
        elif isinstance(node, ast.Compare) and {
                _name(n, taken) for n in (node.left, *node.comparators)} & KEY_STATES:
            found.append(f"{node.lineno}: compares a key's state")
    return found


def test_the_submission_keys_rule_is_written_once_above_the_home() -> None:
    ruled = {str(p.relative_to(CORRAL)): r for p in CORRAL.rglob("*.py")
             if p != KEY_RULE and (r := rulings(p))}
    assert ruled == {}
    # (the walk sees the rule where it is: a walk that found nothing there would pass
    # anything)
    assert {r.partition(": ")[2] for r in rulings(KEY_RULE)} == {
        "calls digest", "calls bound_reached", "calls other_request",
        "compares a key's state"}


def test_each_home_keeps_keys_by_the_stores_primitives_only() -> None:
    for path, name in KEY_STORES.items():
        (cls,) = [n for n in file_tree(path).body
                  if isinstance(n, ast.ClassDef) and n.name == name]
        methods = {n.name for n in cls.body if isinstance(n, ast.AsyncFunctionDef)}
        assert {"claim", "accepted", "release"} <= methods, (path, methods)


def rollback_rulings(path: Path) -> list[str]:
    """Where `path` formats a rollback's words or answers a history."""
    found = []
    for node in walked(file_tree(path)):
        if isinstance(node, ast.JoinedStr):
            found += [f"{node.lineno}: formats {a.value!r}" for a, b in itertools.pairwise(
                node.values) if isinstance(a, ast.Constant)
                and isinstance(b, ast.FormattedValue) and str(a.value).endswith(
                    ROLLBACK_WORDS)]
        elif isinstance(node, ast.Call) and (
                getattr(node.func, "attr", None) or getattr(node.func, "id", None)
        ) == "HistoryResult":
            found.append(f"{node.lineno}: answers a history")
    return found


def test_history_and_rollback_are_written_once_above_the_home() -> None:
    ruled = {str(p.relative_to(CORRAL)): r for p in CORRAL.rglob("*.py")
             if p != ROLLBACK_RULE and (r := rollback_rulings(p))}
    assert ruled == {}
    assert {r.partition(": ")[2] for r in rollback_rulings(ROLLBACK_RULE)} == {
        "formats 'rollback to revision '", "formats 'no revision '",
        "formats ' (its revisions kept: '", "answers a history"}
