"""Which task attempt a call through corral's gateways belongs to: the one lookup of the
tool gateway's and the model gateway's (the rules: docs/gateway.md, "Calls of a task").

A named attempt not running on the credential's replica is refused in one text whatever
the reason, so that the address alone opens nothing and tells nothing. The mark is not a
secret: it adds which of the replica's own attempts a call is for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.tasks.chain import sole_task

if TYPE_CHECKING:
    from ..supervisor.tasks.model import Task

TASK_PARAM = "task"
ATTEMPT_PARAM = "attempt"


class AttemptMark(NamedTuple):
    """The attempt a call's address names."""

    task_id: str
    attempt: int


def mark_of(query: Mapping[str, str]) -> AttemptMark | None:
    """The attempt a request's query names (None: none); ValueError when named badly."""
    task_id, attempt = query.get(TASK_PARAM), query.get(ATTEMPT_PARAM)
    if task_id is None and attempt is None:
        return None
    if not task_id or attempt is None:
        raise ValueError(f"an attempt's address names both {TASK_PARAM} and "
                         f"{ATTEMPT_PARAM} (?{TASK_PARAM}=ID&{ATTEMPT_PARAM}=N)")
    if not attempt.isdecimal() or int(attempt) < 1:
        raise ValueError(f"{ATTEMPT_PARAM} {attempt!r:.40} is not an attempt's number "
                         "(1, 2, ...)")
    return AttemptMark(task_id, int(attempt))


class Attribution:
    """The running task a replica's call is for, from the engine's tasks in flight."""

    def __init__(self, active: Mapping[str, Task]) -> None:
        self.active = active

    def task_of(self, replica: Any, mark: AttemptMark | None) -> Task | None:
        """The task whose running attempt a call of `replica` is (None: unattributed)."""
        if mark is not None:
            task = self.active.get(mark.task_id)
            if task is None or task.replica is not replica or not task.running or \
                    task.attempt != mark.attempt:
                raise RpcError(jsonrpc.NOT_FOUND, f"attempt {mark.attempt} of task "
                                                  f"{mark.task_id:.64} is not running on "
                                                  f"{replica.label}: a call at its address "
                                                  "is not made (it ended, or is not this "
                                                  "replica's)")
            return task
        return sole_task(self.active, replica)  # the chain's rule, for the model gateway too
