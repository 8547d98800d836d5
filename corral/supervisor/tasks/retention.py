"""What a finished task keeps (docs/tasks.md#memory): within a count and a byte budget, with
nothing the garbage collector must walk; every payload let go counted to memory.py's Releaser."""

from __future__ import annotations

from collections import OrderedDict, deque

import msgspec

from ..memory import Releaser
from .model import Task

KEEP_FINISHED = 10_000  # finished tasks kept in memory
KEEP_FINISHED_BYTES = 32 * 1024 * 1024  # their outputs, in bytes

_NO_INPUT = msgspec.Raw(b"")  # a finished task's input (let go)


class Retention:
    __slots__ = ("finished", "held_bytes", "holding", "kept", "kept_bytes", "memory")

    def __init__(self, kept: int = KEEP_FINISHED, kept_bytes: int = KEEP_FINISHED_BYTES
                 ) -> None:
        self.kept = kept
        self.kept_bytes = kept_bytes
        self.finished: OrderedDict[str, Task] = OrderedDict()  # in the order they ended
        # finished tasks still holding an output, in the order they ended, and their bytes
        self.holding: deque[Task] = deque()
        self.held_bytes = 0
        self.memory = Releaser()

    def keep(self, task: Task) -> None:
        freed = len(task.input)  # (told to the Releaser once, with the outputs dropped)
        task.input = _NO_INPUT
        task.replica = None
        out = task.out
        size = out.size if out is not None else 0
        finished, holding = self.finished, self.holding
        finished[task.id] = task
        if size:
            holding.append(task)
            self.held_bytes += size
        while self.held_bytes > self.kept_bytes and holding:
            freed += self._drop(holding.popleft())
        while len(finished) > self.kept:
            _, old = finished.popitem(last=False)
            if holding and holding[0] is old:
                holding.popleft()
                # (`_drop`, written out: every task's end past the first `kept`)
                out = old.out
                if out is not None:
                    self.held_bytes -= out.size
                    freed += out.size
                old.out, old.output_dropped = None, True
        self.memory.let_go(freed)

    def _drop(self, task: Task) -> int:
        size = task.out.size if task.out is not None else 0
        self.held_bytes -= size
        task.out, task.output_dropped = None, True
        return size
