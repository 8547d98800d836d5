"""Usage of one process read straight from /proc: one open and one read per sample.

psutil's `oneshot()` costs several file opens and Python objects per process; the
heartbeat samples every live process, so at a thousand agents that was most of the loop's
idle work. `/proc/PID/stat` alone has CPU time and RSS. The pid cannot be recycled under
us: every process sampled is corral's own unreaped child (its exit is seen by pidfd and
reaped by corral), so the pid stays its own until corral reaps it.
"""

from __future__ import annotations

import asyncio
import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_and_rss(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, user + system; resident bytes), or None if the process is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 1024)
    except OSError:
        return None
    finally:
        os.close(fd)
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2:].split()
    if len(fields) < 22:
        return None
    # fields here start at field 3 (state): utime is field 14, stime 15, rss 24
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, int(fields[21]) * PAGE_SIZE


def open_fds(pid: int) -> int | None:
    """Number of open file descriptors, or None if they cannot be listed."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def parent_map() -> dict[int, list[int]]:
    """Every process's children, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            data = os.read(fd, 512)
        except OSError:
            continue
        finally:
            os.close(fd)
        fields = data[data.rfind(b")") + 2:].split(None, 2)
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append(int(name))
    return children


class ProcessTree:
    """Descendants of processes, from at most one scan of /proc per turn of the event loop:
    stopping a thousand agents in one turn scans the host once, not a thousand times."""

    def __init__(self) -> None:
        self._children: dict[int, list[int]] | None = None

    def descendants(self, pid: int) -> set[int]:
        children = self._children
        if children is None:
            children = parent_map()
            try:
                asyncio.get_running_loop().call_soon(self._forget)
                self._children = children
            except RuntimeError:  # no loop: no turn to share the scan with
                pass
        return _walk(children, pid)

    def _forget(self) -> None:
        self._children = None


def _walk(children: dict[int, list[int]], pid: int) -> set[int]:
    out: set[int] = set()
    stack = list(children.get(pid, ()))
    while stack:
        p = stack.pop()
        if p not in out:
            out.add(p)
            stack.extend(children.get(p, ()))
    return out


TREE = ProcessTree()
