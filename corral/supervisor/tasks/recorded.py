"""A task whose id a durable record (a workflow run's step, a team call's step) held before
the task existed: after a restart it is waited for where the engine has it, its outcome
read where it ended, and submitted under that id only where it never reached the task
journal, so that a step has one task whatever the crashes between."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ...jsonrpc import RpcError
from ...taskviews import TaskInfo
from .model import Task

if TYPE_CHECKING:
    from .manager import TaskManager


async def outcome(engine: TaskManager, task_id: str, submit: Callable[[], Task]
                  ) -> TaskInfo:
    """The recorded task to its end: waited for where the engine has it, read where it
    ended (memory or the task journal), or made by `submit` (which submits it under
    `task_id`) when the engine has never heard of it."""
    try:
        return await engine.info(task_id, wait=True)
    except RpcError:  # no such task: it never reached the task journal
        submit()
        await engine.committed()
        return await engine.info(task_id, wait=True)
