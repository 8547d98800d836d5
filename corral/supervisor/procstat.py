"""A process's usage for the heartbeat's samples: one read of /proc/PID/stat.

psutil's `oneshot()` costs several file opens and Python objects per process; the
heartbeat samples every live process, so at a thousand agents that was most of the loop's
idle work. `/proc/PID/stat` (parsed once, in containment.read_stat) has CPU time and RSS.
The pid cannot be recycled under us: it is corral's unreaped child, or a zygote's child
watched by pidfd.
"""

from __future__ import annotations

import os

from .containment import read_stat

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_and_rss(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, user + system; resident bytes), or None if the process is gone."""
    st = read_stat(pid)
    if st is None:
        return None
    return st.cpu_ticks / CLOCK_TICKS, st.rss_pages * PAGE_SIZE


def open_fds(pid: int) -> int | None:
    """Number of open file descriptors, or None if they cannot be listed."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
