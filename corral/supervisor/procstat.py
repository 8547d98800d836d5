"""A process's usage for the heartbeat's samples: one pread of /proc/PID/stat (CPU time,
RSS); and whether it is parked on its stdin, from /proc/PID/syscall. psutil's `oneshot()`
was most of the loop's idle work at a thousand agents. The files stay open (`open_proc`):
an open file names that process, never a later one with the same pid.
"""

from __future__ import annotations

import os
import time

from .containment import ProcStat, parse_stat

# The system calls a thread blocked reading a pipe sleeps in (read, readv), as
# /proc/PID/syscall numbers them: they differ by architecture. Elsewhere none: every
# quiet worker is pinged.
_READ_CALLS: dict[str, frozenset[int]] = {
    "x86_64": frozenset({0, 19}),
    "aarch64": frozenset({63, 65}),
}
READ_CALLS = _READ_CALLS.get(os.uname().machine, frozenset())
UNAVAILABLE = -2  # an fd of /proc that could not be opened: not tried again this life

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def since_start(start_time: int) -> float:
    """Seconds since a process started, by its stat's start time (ticks after boot)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_time / CLOCK_TICKS


def open_fds(pid: int) -> int | None:
    """Number of open file descriptors, or None if they cannot be listed."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def open_proc(pid: int, name: str) -> int:
    """An fd of /proc/PID/NAME, or UNAVAILABLE (gone, or not ours to read: /proc/PID/syscall
    needs the right to trace the process)."""
    try:
        return os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return UNAVAILABLE


def stat_at(fd: int, pid: int) -> ProcStat | None:
    """/proc/PID/stat read through its open fd; None once the process is gone."""
    try:
        data = os.pread(fd, 4096, 0)
    except OSError:
        return None
    return parse_stat(pid, data)


def reading_stdin(fd: int) -> bool:
    """Whether the process's main thread is asleep in read or readv of fd 0, from its
    /proc/PID/syscall ("NR ARG0 ..."; "running" while it runs)."""
    try:
        fields = os.pread(fd, 256, 0).split(None, 2)
        return len(fields) >= 2 and int(fields[0]) in READ_CALLS and fields[1] == b"0x0"
    except (OSError, ValueError):
        return False


def same_pipe(pid: int, fd: int) -> bool:
    """Whether the process's fd 0 is the pipe of which corral holds `fd` (the other end:
    a pipe's two ends are one inode)."""
    try:
        theirs = os.stat(f"/proc/{pid}/fd/0")
        ours = os.fstat(fd)
    except OSError:
        return False
    return (theirs.st_ino, theirs.st_dev) == (ours.st_ino, ours.st_dev)
