"""The retry policy's backoff, as Celery's (docs/tasks.md#retries), with full jitter so the
retries of tasks that failed together spread out; whether to retry is taskmachine.py's."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ...taskoptions import AGENTS_RETRY
from .taskmachine import TaskStatus

if TYPE_CHECKING:
    from ...taskviews import Attempt
    from ..config import AgentSpec
    from .model import Task

_LOST = TaskStatus.LOST

# beyond this many doublings the backoff is retry_backoff_max whatever it is
_DOUBLINGS = 64


def backoff(spec: AgentSpec, retry: int, rand: Callable[[], float] = random.random
            ) -> float:
    """Seconds before retry number `retry` (1: the first), to the millisecond."""
    if spec.retry_backoff <= 0:
        return 0.0
    delay = min(spec.retry_backoff_max,
                spec.retry_backoff * 2.0 ** min(max(retry - 1, 0), _DOUBLINGS))
    if spec.retry_jitter:
        delay *= rand()
    return round(delay, 3)


def lost_attempts(attempts: Iterable[Attempt]) -> int:
    return sum(1 for a in attempts if a.outcome == _LOST)


def retry_lost(task: Task, spec: Any) -> int:
    """The task's retry_lost: its own, else its agent's."""
    return (task.options.retry or AGENTS_RETRY).lost(spec)


def runs_again(task: Task, spec: Any) -> bool:
    """Whether an attempt of the task after the running one may come, were it to end
    badly (what its steps are journaled for); `spec` None: its agent's is not known."""
    return task.retries_left > 0 or (
        spec is not None and retry_lost(task, spec) > lost_attempts(task.attempts))
