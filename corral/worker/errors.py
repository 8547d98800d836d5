"""What the SDK raises and answers: the protocol's error codes, the handler's exceptions,
and which failures end the worker's process."""

from __future__ import annotations

import errno

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ~2 ms to import
if TYPE_CHECKING:
    from typing import Any

# Mirrors of corral.jsonrpc's codes; the SDK must not import msgspec (start-up cost).
# tests/test_worker_sdk.py checks they agree.
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
PEER_CLOSED = -32001
REQUEST_TIMEOUT = -32002
REQUEST_CANCELLED = -32003
TASK_FAILED = -32030

# A handler that hits one of these has hit a resource cap; its process is not trusted to
# go on (leaked memory, no fds left), so the worker exits and the supervisor restarts it,
# naming the cap from the error on stderr.
_FATAL_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.EFBIG, errno.ENOMEM, errno.EAGAIN}
FATAL_EXIT_STATUS = 70


class TaskError(Exception):
    """Raise from a handler to fail the task with this message (and optional data)."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class TaskCancelled(Exception):
    """Raised by `ctx.check_cancelled()` once the supervisor has cancelled the task."""


class RequestError(Exception):
    """An error answer from the supervisor to a request the worker made."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


# its former name: agents that catch it by that name keep working
RpcError = RequestError


def print_exc() -> None:
    import traceback  # only on the error path: ~2 ms at start-up saved

    traceback.print_exc()


def exc_text(exc: BaseException) -> str:
    """"Name: message", or just the name when the message is empty (a MemoryError has
    none): never a dangling colon."""
    name = type(exc).__name__
    text = str(exc)
    return f"{name}: {text}" if text else name


def is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, OSError) and exc.errno in _FATAL_ERRNOS
    )
