"""What a finished task keeps: only what `corral task ID` shows cheaply, within a count
and a byte budget, with nothing the garbage collector must walk.

Its input is dropped at once; outputs are held up to `kept_bytes` in all, and past that
the oldest are dropped from memory (read back from the journal when there is one, else
gone); at most `kept` finished tasks stay in memory (older ones are answered from the
journal). Every payload let go is counted to the Releaser, which hands the freed pages
back to the system (memory.py).
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from ..memory import Releaser
from .model import Task

FINISHED_KEPT = 10_000  # finished tasks kept in memory
FINISHED_KEPT_BYTES = 32 * 1024 * 1024  # their outputs, in bytes


class Retention:
    __slots__ = ("finished", "held_bytes", "holding", "kept", "kept_bytes", "memory")

    def __init__(self, kept: int = FINISHED_KEPT, kept_bytes: int = FINISHED_KEPT_BYTES
                 ) -> None:
        self.kept = kept
        self.kept_bytes = kept_bytes
        self.finished: OrderedDict[str, Task] = OrderedDict()  # in the order they ended
        # finished tasks still holding an output, and those outputs' bytes
        self.holding: OrderedDict[str, Task] = OrderedDict()
        self.held_bytes = 0
        self.memory = Releaser()

    def keep(self, task: Task) -> None:
        """A task that has just finished (and been handed to its journal)."""
        self.memory.let_go(len(task.input))
        task.input = msgspec.Raw(b"")
        task.replica = None
        size = task.out.size if task.out is not None else 0
        self.finished[task.id] = task
        if size:
            self.holding[task.id] = task
            self.held_bytes += size
        while self.held_bytes > self.kept_bytes and self.holding:
            _, old = self.holding.popitem(last=False)
            self.drop_output(old)
        while len(self.finished) > self.kept:
            _, old = self.finished.popitem(last=False)
            if self.holding.pop(old.id, None) is not None:
                self.drop_output(old)

    def drop_output(self, task: Task) -> None:
        size = task.out.size if task.out is not None else 0
        self.held_bytes -= size
        self.memory.let_go(size)
        task.out, task.output_dropped = None, True
