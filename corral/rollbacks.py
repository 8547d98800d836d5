"""History and rollback, written once above the home (decision 1391): what an agent's or a
definition's history keeps is numbered revisions, oldest first; a rollback restores a kept
revision's table as a new revision, by default the one before the newest, and says so in
that revision's change; a revision not kept is refused naming those kept. Each home keeps
the revisions (the node's state database: daemon/revisions.py, daemon/definitions.py; a
cluster's Redis: cluster/specs.py) and writes the restored table as its next revision; what
only the node has (a release to go back to, a kept scale) is its own, around this rule."""

from __future__ import annotations

from collections.abc import Collection

import msgspec

from . import jsonrpc, redact
from .jsonrpc import RpcError
from .results import HistoryResult, ScalingDecision
from .views import Revision


def listed(name: str, kept: list[Revision], limit: int,
           scaling: list[ScalingDecision] | None = None) -> HistoryResult:
    """An agent's history: the newest `limit` of its `kept` revisions (oldest first), each
    table as the redaction rule shows it (the home keeps the real values: a rollback runs
    them); `scaling`: the node's autoscaler's last changes, its own."""
    return HistoryResult(name=name, current=kept[-1].revision if kept else None, revisions=[
        msgspec.structs.replace(r, spec=redact.table(r.spec))
        for r in kept[max(0, len(kept) - limit):]], scaling=scaling or [])


def restored(kept: Collection[int], revision: int | None, what: str, history: str) -> int:
    """The revision a rollback of `what` restores: `revision`, else the one before the
    newest of `kept` (its revisions' numbers); `history`: the command that lists them."""
    newest = max(kept, default=0)
    target = revision if revision is not None else newest - 1
    if target not in kept:
        raise RpcError(jsonrpc.NOT_FOUND, f"no revision {target} of {what} (its revisions "
                                          f"kept: {min(kept, default=1)}..{newest}; see "
                                          f"`{history}`)")
    return target


def rolled_back(target: int) -> str:
    """What made the revision a rollback writes (its change, what differs, follows)."""
    return f"rollback to revision {target}"


def change_of(made: str, target: int) -> str:
    """What a rollback changed, from its revision's change."""
    return made.removeprefix(f"{rolled_back(target)}: ")
