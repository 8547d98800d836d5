"""A task whose id a durable record (a workflow's or a team call's step) held before the
task existed: after a restart it is waited for where the engine has it, and submitted under
that id only where it never reached the task journal (one task a step, whatever the crashes).
A record is its tenant's: an agent of the name now another tenant's is none to it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from ...taskviews import TaskInfo
from ..errors import NoSuchAgent
from .model import Task

if TYPE_CHECKING:
    from .manager import TaskManager


class RecordedTask(msgspec.Struct, frozen=True):
    """A step's task as its record names it (`tenant` None or "": of no one tenant)."""

    task_id: str
    agent: str
    tenant: str | None


async def outcome(engine: TaskManager, task: RecordedTask, submit: Callable[[], Task],
                  *, fresh: bool = False) -> TaskInfo:
    """The recorded task to its end, made by `submit` (under `task.task_id`) when the
    engine has never heard of it and its agent is still of the record's tenant. `fresh`:
    its id was made and recorded just now, so no task of it can exist and the journal is
    not asked (a read on the loop a step, after every commit of another connection)."""
    if not fresh and engine.knows(task.task_id):
        return await engine.info(task.task_id, wait=True)
    # no such task: it never reached the task journal
    held = engine.sup.agents.get(task.agent)
    if held is not None and task.tenant and held.spec.tenant != task.tenant:
        raise NoSuchAgent(task.agent, None)
    submit()
    await engine.committed()
    return await engine.info(task.task_id, wait=True)
