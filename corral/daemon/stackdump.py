"""SIGUSR1: what the daemon is waiting on, written to its log (docs/operations.md): every
asyncio task's chain of awaits down to the future it waits for, and every thread's stack.
Tasks with the same stack are one line with their count; at most STACK_DUMP_LINES lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import traceback
import types
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

STACK_DUMP_LINES = 200  # lines a dump writes, past which its stacks are counted


def _frame(frame: types.FrameType) -> str:
    code = frame.f_code
    where = "/".join(code.co_filename.rsplit("/", 2)[-2:])  # package/module.py
    return f"{where}:{frame.f_lineno} in {code.co_qualname}"


def awaits(task: asyncio.Task[Any]) -> str:
    """A task's chain of awaits as one line: each coroutine's frame, outermost first,
    and the future the task waits on."""
    parts: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = (getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                 or getattr(coro, "ag_frame", None))
        if frame is not None:
            parts.append(_frame(frame))
        coro = (getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                or getattr(coro, "ag_await", None))
    # the one place a task keeps what it waits on (asyncio's own, in C and in Python)
    waited = getattr(task, "_fut_waiter", None)
    if waited is not None:
        parts.append(f"awaiting {waited!r:.200}")
    return " > ".join(parts) or "(not started)"


def _thread(frame: types.FrameType) -> str:
    return " > ".join(reversed([_frame(f) for f, _ in traceback.walk_stack(frame)]))


def stacks() -> list[str]:
    """The lines of one dump: its heading, each distinct task stack with its count and
    a task's name, each thread's stack."""
    tasks = asyncio.all_tasks()
    seen: Counter[str] = Counter()
    named: dict[str, str] = {}
    for task in tasks:
        stack = awaits(task)
        seen[stack] += 1
        named.setdefault(stack, task.get_name())
    names = {t.ident: t.name for t in threading.enumerate()}
    threads = [f"thread {names.get(ident, ident)}: {_thread(frame)}"
               for ident, frame in sys._current_frames().items()
               if ident != threading.get_ident()]
    lines = [f"stack dump (SIGUSR1): {len(tasks)} tasks ({len(seen)} distinct stacks), "
             f"{len(threads)} other threads"]
    lines += [f"{n} x task {named[stack]}: {stack}" for stack, n in seen.most_common()]
    lines += threads
    if len(lines) > STACK_DUMP_LINES:
        cut = len(lines) - STACK_DUMP_LINES + 1
        lines = [*lines[:STACK_DUMP_LINES - 1],
                 f"{cut} more lines not written (STACK_DUMP_LINES = {STACK_DUMP_LINES})"]
    return lines


def dump(say: Callable[[str], None]) -> None:
    for line in stacks():
        say(line)


@contextlib.contextmanager
def on_signal(say: Callable[[str], None]) -> Iterator[None]:
    """SIGUSR1 dumps the stacks through `say` for as long as this is entered (without
    it, SIGUSR1's default ends the process)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump, say)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
