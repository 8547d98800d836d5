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
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import AgentSpec

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
