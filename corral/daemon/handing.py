"""The labels link of a task submitted (DESIGN 28, docs/architecture.md "One door per
call"): the task is handed its caller's labels as it is accepted, whatever door the
submission came by. A person's token hands none; an anonymous caller's message is text
from no one, as an untrusted tool's output is, so its task is given the caller's own
label (its sensitive calls then wait for a person; its session's next turns hold it too)
and is recorded as started by it, apart from its labels, which are handed on (records.py
reads who started a task or a session, not who holds its label). A replica's call of an
agent of no task hands what the replica read (the tool chain's: supervisor/tasks/approvals.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..supervisor.labels import HANDED, STARTER
from .caller import Caller


def own(caller: Caller) -> tuple[str, ...]:
    """The labels of what the caller says (its own label, an anonymous caller's)."""
    return (caller.who,) if caller.anonymous else ()


@contextmanager
def handing(caller: Caller) -> Iterator[None]:
    """Within: a task accepted is handed the caller's labels, beside any handed already,
    and an anonymous caller's is recorded as started by it (records.py `started`)."""
    mine = own(caller)
    if not mine:
        yield
        return
    said = HANDED.set((*HANDED.get(), *(x for x in mine if x not in HANDED.get())))
    starter = STARTER.set(caller.who)
    try:
        yield
    finally:
        STARTER.reset(starter)
        HANDED.reset(said)
