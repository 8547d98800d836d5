"""A task's way through the daemon: accept -> commit -> acknowledge -> outcome, behind one
front chosen at start-up.

front.py      TaskFront, the protocol the command handlers call, and what every front
              checks of a listing
local.py      LocalFront: this node's engine and its journal
clustered.py  ClusterFront: the cluster's tasks in Redis, this node's for `local`
              (imported only where [cluster] is: it brings redis-py)
"""

from .front import TaskFront
from .local import LocalFront

__all__ = ["LocalFront", "TaskFront"]
