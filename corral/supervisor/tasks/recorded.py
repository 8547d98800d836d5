"""A task whose id a durable record (a workflow run's step, a team call's step) held before
the task existed: after a restart it is waited for where the engine has it, its outcome
read where it ended, and submitted under that id only where it never reached the task
journal, so that a step has one task whatever the crashes between.

A record is its tenant's (decision 443), and so is each task it submits: the agent that
holds the name when a later step is submitted (or resumed after a restart) may be another
tenant's, which took the name since the run or call began; such an agent is none to the
record, which is refused as its tenant's caller would be (decision 481)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from ...jsonrpc import RpcError
from ...taskviews import TaskInfo
from ..errors import NoSuchAgent
from .model import Task

if TYPE_CHECKING:
    from .manager import TaskManager


class RecordedTask(msgspec.Struct, frozen=True):
    """A step's task as its record names it: its id, its agent, and the tenant the record
    (run, call) was made for (None or "": of no one tenant, which runs whatever agents
    its definition names, as when it started)."""

    task_id: str
    agent: str
    tenant: str | None


async def outcome(engine: TaskManager, task: RecordedTask, submit: Callable[[], Task]
                  ) -> TaskInfo:
    """The recorded task to its end: waited for where the engine has it, read where it
    ended (memory or the task journal), or made by `submit` (which submits it under
    `task.task_id`) when the engine has never heard of it and its agent is still of the
    record's tenant (else NoSuchAgent)."""
    try:
        return await engine.info(task.task_id, wait=True)
    except RpcError:  # no such task: it never reached the task journal
        held = engine.sup.agents.get(task.agent)
        if held is not None and task.tenant and held.spec.tenant != task.tenant:
            raise NoSuchAgent(task.agent, None) from None
        submit()
        await engine.committed()
        return await engine.info(task.task_id, wait=True)
