"""The retry policy: whether a task whose attempt ended badly runs again, and after how
long (as Celery's `autoretry_for`, `max_retries`, `retry_backoff`, `retry_backoff_max` and
`retry_jitter` say it).

An agent's policy names the outcomes of an attempt that are retried ("lost": its worker
died or the daemon stopped under it; "failed": the agent answered an error; "timed_out":
past its deadline), `retries` how many times. A task may carry its own policy from its
submission (taskoptions.RetryOptions). The n-th retry waits `retry_backoff * 2**(n-1)`
seconds, at most `retry_backoff_max`; with `retry_jitter` a random time between 0 and that
(full jitter, Celery's: retries of many tasks that failed together spread out rather than
return together). A cancelled task is never retried. Whether an attempt is retried is the
task's machine's rule (taskmachine.py); the backoff is here.

An attempt lost to infrastructure (its worker killed from outside or hung, the daemon
restarted, its node died) is retried by `retry_lost` first, no retry spent: a task may
have that many lost attempts and still run again (0: at most once).
"""

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
    """The attempts that ended lost, of every kind (a loss to infrastructure, a crash, a
    cap kill, a hand-over)."""
    return sum(1 for a in attempts if a.outcome == _LOST)


def retry_lost(task: Task, spec: Any) -> int:
    """The task's retry_lost: its own (its submission's retry options), else its agent's
    (`spec`, an AgentSpec)."""
    return (task.options.retry or AGENTS_RETRY).lost(spec)


def runs_again(task: Task, spec: Any) -> bool:
    """Whether an attempt of the task after the running one may come, were it to end
    badly: a retry left, or a loss to infrastructure still within its retry_lost (what
    its steps are journaled for: steps.py); `spec` None: its agent's is not known here."""
    return task.retries_left > 0 or (
        spec is not None and retry_lost(task, spec) > lost_attempts(task.attempts))
