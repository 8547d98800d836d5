"""A task whose id a durable record (a workflow run's step, a team call's step) held before
the task existed: after a restart it is waited for where the engine has it, its outcome
read where it ended, and submitted under that id only where it never reached the task
journal, so that a step has one task whatever the crashes between."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...jsonrpc import RpcError
from ...taskviews import TaskInfo
from .model import TERMINAL, Task

if TYPE_CHECKING:
    from .manager import TaskManager


async def outcome(engine: TaskManager, task_id: str, submit: Callable[[], Task]
                  ) -> TaskInfo:
    """The recorded task to its end: waited for, read, or made by `submit` (which submits
    it under `task_id`) when the engine has never heard of it."""
    task = engine.active.get(task_id)
    if task is None:
        try:
            info = await engine.info(task_id)
        except RpcError:
            info = None
        if info is not None and info.status in TERMINAL:
            return info
        if info is None:
            task = submit()
            await engine.committed()
        else:  # pragma: no cover - a task the engine knows and has not ended is active
            task = engine.active[task_id]
    await asyncio.shield(task.done)
    return await engine.info(task_id)
