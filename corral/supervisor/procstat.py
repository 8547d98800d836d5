"""Usage of one process read straight from /proc: one open and one read per sample.

psutil's `oneshot()` costs several file opens and Python objects per process; the
heartbeat samples every live process, so at a thousand agents that was most of the loop's
idle work. `/proc/PID/stat` alone has CPU time and RSS. The pid cannot be recycled under
us: every process sampled is corral's own unreaped child (its exit is seen by pidfd and
reaped by corral), so the pid stays its own until corral reaps it.
"""

from __future__ import annotations

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
