"""A stop by hand lasts until a start by hand, across restarts, upgrades and crashes
(docs/operations.md). `corral stop` commits its marks before it stops any replica, and
`corral start` their removal before it starts any; any other start by hand is told by the
replica's transition (Cause.SPAWN) and written through the store's writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..supervisor.lifecycle import Cause
from ..supervisor.replicaparts import Transition
from .sqlwrites import Write, each, statement

Place = tuple[str, int]  # (agent, replica index)


class StopMark(NamedTuple):
    who: str  # as revisions and the audit log name a caller
    time: float  # unix time of the stop


class StopMarks:
    """The marks as the database holds them (kept in step by whoever commits a write)."""

    def __init__(self, db: sqlite3.Connection, submit: Callable[[Write, str], object]
                 ) -> None:
        """`submit`: a write through the store's writer, for a start that was not
        `corral start`'s."""
        self.submit = submit
        self.marks: dict[Place, StopMark] = {
            (agent, replica): StopMark(who, when) for agent, replica, who, when in
            db.execute("SELECT agent, replica, who, time FROM stopped")}

    def held(self, agent: str) -> frozenset[int]:
        return frozenset(i for (a, i) in self.marks if a == agent)

    def of(self, agent: str, replica: int) -> StopMark | None:
        return self.marks.get((agent, replica))

    @staticmethod
    def marking(places: Iterable[Place], mark: StopMark) -> Write:
        return each("INSERT OR REPLACE INTO stopped (agent, replica, who, time) "
                    "VALUES (?, ?, ?, ?)", ((a, i, mark.who, mark.time) for a, i in places))

    @staticmethod
    def unmarking(places: Iterable[Place]) -> Write:
        return each("DELETE FROM stopped WHERE agent = ? AND replica = ?", places)

    @staticmethod
    def forgetting(agent: str, from_replica: int = 0) -> Write:
        """Every mark of `agent` (from replica `from_replica` on: a scale down's)."""
        return statement("DELETE FROM stopped WHERE agent = ? AND replica >= ?",
                         (agent, from_replica))

    def marked(self, places: Iterable[Place], mark: StopMark) -> None:
        """`marking` was committed."""
        for place in places:
            self.marks[place] = mark

    def unmarked(self, places: Iterable[Place]) -> None:
        """`unmarking` was committed (or submitted)."""
        for place in places:
            self.marks.pop(place, None)

    def forgotten(self, agent: str, from_replica: int = 0) -> None:
        """`forgetting` was committed."""
        self.unmarked([p for p in self.marks if p[0] == agent and p[1] >= from_replica])

    def on_transition(self, e: Transition) -> None:
        """A start by hand of a marked replica, whoever asked for it: the mark goes."""
        if e.cause is Cause.SPAWN and self.marks and e.kind == "agent":
            place = (e.name, e.replica)
            if place in self.marks:
                del self.marks[place]
                self.submit(self.unmarking([place]), "stop mark")
