"""The view link of a submission answered by an earlier task of its idempotency key (its
replay; DESIGN 28's identity and view, for every door that takes a submission): that task
may be another caller's, so its outcome is shown only to a caller that may read tasks, as
tasks.get shows it (a `wait` needs tasks:read already); to any other, its id and status
alone (issue 88)."""

from __future__ import annotations

from .. import methods as m
from .caller import Caller


def seen(answer: m.TaskAccepted, caller: Caller) -> m.TaskAccepted:
    if answer.replayed is True and not caller.may("tasks:read"):
        return m.TaskAccepted(task_id=answer.task_id, status=answer.status, replayed=True)
    return answer
