"""The labels link of a task submitted (DESIGN 28, docs/architecture.md "One door per
call"): the task is handed its caller's labels as it is accepted, whatever door the
submission came by. A person's token hands none; an anonymous caller's message is text
from no one, as an untrusted tool's output is, so its task is given the caller's own
label (its sensitive calls then wait for a person; its session's next turns hold it too)
and is recorded as started by it, apart from its labels, which are handed on (records.py
reads who started a task or a session, not who holds its label). A replica's call of an
agent of no task hands what the replica read (the tool chain's: supervisor/tasks/approvals.py)."""

from __future__ import annotations

import contextvars

from ..supervisor.labels import HANDED, STARTER
from .caller import Caller


class handing:  # (named as the function it was: `with handing(caller):`)
    """Within: a task accepted is handed the caller's labels (its own label, an anonymous
    caller's), beside any handed already, and an anonymous caller's is recorded as started
    by it (records.py `started`). (A class, not a generator: it is entered a submission.)"""

    __slots__ = ("_said", "_starter", "caller")
    _said: contextvars.Token[tuple[str, ...]] | None

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    def __enter__(self) -> None:
        caller = self.caller
        if caller.anonymous:
            held = HANDED.get()
            who = caller.who
            self._said = HANDED.set(held if who in held else (*held, who))
            self._starter = STARTER.set(who)
        else:
            self._said = None  # (what `__exit__` reads: the caller's property asked once)

    def __exit__(self, *_: object) -> None:
        said = self._said
        if said is not None:
            STARTER.reset(self._starter)
            HANDED.reset(said)
