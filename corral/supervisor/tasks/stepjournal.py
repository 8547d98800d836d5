"""A task's steps as they are kept: the record of one, and the protocol of the journal
that keeps them (the daemon's SQLite, a cluster's Redis); steps.py makes and reads them."""

from __future__ import annotations

from typing import NamedTuple, Protocol

CHECKPOINT_SEQ = -1  # the row of a task's checkpoint
NAMED_SEQ = 0  # the rows of named steps (keyed by name); tool calls count from 1


class Step(NamedTuple):
    """One journaled step: a tool call (seq from 1), a named step (NAMED_SEQ) or the task's
    checkpoint (CHECKPOINT_SEQ); `body` the result's JSON (None: none to give back)."""

    task_id: str
    seq: int
    name: str
    attempt: int
    args: bytes  # the arguments' hash (tool calls)
    body: bytes | None


class StepJournal(Protocol):
    """Where steps are made durable (the daemon's: corral.daemon.steps.StepsDB)."""

    def put(self, step: Step) -> bool | None:
        """Keep a step (a newer one with its key replaces it); does not block. True: it is
        durable as this returns, with everything put before it (`committed` would not
        wait); else `committed` says when."""

    def drop_from(self, task_id: str, seq: int) -> None:
        """Forget the task's tool-call steps from `seq` on (an attempt diverged there)."""

    async def committed(self, task_id: str | None = None) -> None:
        """Return once everything put so far (of `task_id`, or of all) is durable."""

    async def history(self, task_id: str) -> list[Step]: ...

    def ended(self, task_id: str) -> None:
        """The task ended: its steps are read by nobody until pruned."""
