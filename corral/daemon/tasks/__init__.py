"""A task's way through the daemon: accept -> commit -> acknowledge -> outcome, behind one
front chosen at start-up (LocalFront, or clustered.ClusterFront with [cluster])."""

from .front import TaskFront
from .local import LocalFront

__all__ = ["LocalFront", "TaskFront"]
