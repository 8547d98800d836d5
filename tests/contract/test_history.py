"""An agent's history and rollback, on each home (DESIGN 25; decision 1391): each change of
an agent's table is a numbered revision, listed oldest first, the newest `limit`; a rollback
restores a kept revision's table as a new revision (by default the one before the newest);
one not kept is refused naming those kept. The node's agent keeps them in its state
database, the cluster's agent (`placement = "cluster"`) in Redis, read at either node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY
from .home import Home

pytestmark = pytest.mark.timeout(120)


def agents(directory: Path) -> str:
    return ""


def added(home: Home, name: str) -> None:
    """A runtime agent of one replica: the node's own, or the cluster's."""
    table: dict[str, Any] = {"command": [PY, f"{EXAMPLES}/misbehave.py"],
                             "env": {"PYTHONPATH": str(ROOT)}, "stop_timeout": 5.0}
    if home.kind == "cluster":
        table["placement"] = "cluster"
    home.call("agents.add", {"agents": {name: table}})


def listed(home: Home, name: str, at: int = 1, **params: Any) -> tuple[Any, list[Any]]:
    h = home.call("agents.history", {"name": name, **params}, at)
    return h["current"], [(r["revision"], r["who"], r["change"]) for r in h["revisions"]]


def test_each_change_is_a_numbered_revision_listed_oldest_first(home: Home) -> None:
    added(home, "listed")
    home.call("agents.scale", {"name": "listed", "replicas": 2})
    current, revisions = listed(home, "listed")
    who = revisions[0][1]
    assert (current, revisions) == (2, [(1, who, "created"), (2, who, "replicas 1 -> 2")])
    # the newest `limit` of them
    for limit, numbers in ((1, [2]), (0, []), (9, [1, 2])):
        assert [r[0] for r in listed(home, "listed", limit=limit)[1]] == numbers
    home.call("agents.remove", {"names": ["listed"]})


def test_a_rollback_restores_a_kept_revision_as_a_new_one(home: Home) -> None:
    added(home, "back")
    home.call("agents.scale", {"name": "back", "replicas": 2})
    got = home.call("agents.rollback", {"name": "back"}, at=1)  # the one before the newest
    assert got == {"name": "back", "restored": 1, "revision": 3,
                   "change": "replicas 2 -> 1"}
    current, revisions = listed(home, "back", at=0)
    assert (current, revisions[-1][2]) == (3, "rollback to revision 1: replicas 2 -> 1")
    specs = [r["spec"] for r in home.call("agents.history", {"name": "back"})["revisions"]]
    assert specs[-1] == specs[0] != specs[1]
    # to a revision named: its table again, whatever came between
    got = home.call("agents.rollback", {"name": "back", "revision": 2})
    assert (got["restored"], got["revision"], got["change"]) == (2, 4, "replicas 1 -> 2")
    home.call("agents.remove", {"names": ["back"]})


def test_a_rollback_to_a_revision_not_kept_is_refused_naming_those_kept(home: Home) -> None:
    added(home, "kept")
    home.call("agents.scale", {"name": "kept", "replicas": 2})
    for revision, said in ((9, 9), (0, 0)):
        code, message = home.refusal("agents.rollback", {"name": "kept",
                                                         "revision": revision}, at=1)
        assert (code, message) == (jsonrpc.NOT_FOUND, (
            f"no revision {said} of kept (its revisions kept: 1..2; see `corral history "
            "kept`)"))
    assert listed(home, "kept")[0] == 2  # nothing changed
    home.call("agents.remove", {"names": ["kept"]})
