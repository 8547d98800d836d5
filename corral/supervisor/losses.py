"""What kind of loss a worker's end was, for the task's retry rule (tasks/taskmachine.py):
a loss to infrastructure is retried by default (`retry_lost`); a cap kill, the worker's
own death and a stop by hand are not. The replica decides it at the reap (launch.py) and
hands it to the requests in flight on their error's `data`, never in the reason's words.
"""

from __future__ import annotations

import enum
import signal
from typing import Any

from .lifecycle import Cause


class Loss(enum.StrEnum):
    # killed from outside: a signal it did not raise, a hang kill, a stop, corral's own
    # error, a daemon restart, a drain's hand-over, its node's death
    INFRA = "infra"
    CAP = "cap"  # a cap, named as the exit's reason (RLIMIT_*, memory.max, a soft limit)
    # of its own doing: an exit status, or a signal its own fault raised
    CRASH = "crash"
    STOPPED = "stopped"  # an operator's stop (stop, scale down, remove, shutdown)


# signals a process raises on itself by a fault of its own (SIGSEGV, abort(), a CPU or
# file-size limit no cap of corral's set); any other kills it from outside
_OWN = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                  signal.SIGABRT, signal.SIGSYS, signal.SIGTRAP, signal.SIGXCPU,
                  signal.SIGXFSZ})
_KEY = "loss"
_NAMES = frozenset(loss.value for loss in Loss)


def of_exit(status: int, capped: bool) -> Loss:
    """A process corral did not take down ended with `status` (negative: the signal that
    killed it); `capped`: its reason names a cap."""
    if capped:
        return Loss.CAP
    if status < 0 and -status not in _OWN:
        return Loss.INFRA
    return Loss.CRASH


def of_take_down(cause: Cause) -> Loss:
    """corral took the process down for `cause`: a cap's, an operator's stop, else no
    fault of its own (a hang, a channel unread, a failed health check, corral's error)."""
    if cause is Cause.CAP:
        return Loss.CAP
    return Loss.STOPPED if cause is Cause.STOP else Loss.INFRA


def data(loss: Loss) -> dict[str, str]:
    """What the requests in flight carry on their error (RpcError.data)."""
    return {_KEY: loss.value}


def of_error(error_data: Any) -> Loss:
    """The kind of loss an error's data names; none named (a peer closed by corral for
    its own reasons, an upgrade that could not adopt it): no fault of the worker's."""
    named = error_data.get(_KEY) if isinstance(error_data, dict) else None
    return Loss(named) if named in _NAMES else Loss.INFRA
