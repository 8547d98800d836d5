"""What is running, as the chaos cases see it: processes by spawn token and by parent,
read straight from /proc (no help from the daemon under test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

import psutil

from corral.supervisor.containment import (
    ProcStat,
    read_stat,
    read_token,
    scan_processes,
    token_owner,
)


class PeakRss(threading.Thread):
    """A process's highest RSS (default: this one's), sampled every few milliseconds by a
    thread (the loop may be what is flooded) while the `with` block runs; `base` is its
    RSS as the block began."""

    def __init__(self, proc: psutil.Process | None = None) -> None:
        super().__init__(daemon=True)
        self.proc = proc or psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.done.set()
        self.join()


def by_owner(daemon_pid: int) -> dict[int, ProcStat]:
    """Every live process carrying a spawn token of the daemon with this pid."""
    out = {}
    for st in scan_processes():
        if st.state == "Z":
            continue
        token = read_token(st.pid)
        if token is not None and token_owner(token).startswith(f"{daemon_pid}-"):
            out[st.pid] = st
    return out


def still_alive(procs: dict[int, ProcStat]) -> list[ProcStat]:
    """Those of `procs` still running (same pid and start time, not a zombie)."""
    out = []
    for pid, old in procs.items():
        st = read_stat(pid)
        if st is not None and st.start_time == old.start_time and st.state != "Z":
            out.append(st)
    return out


def session_leaders_of(parent: int) -> set[int]:
    """Direct children of `parent` that lead their own session: the processes corral
    spawned (escaped descendants re-parented to it lead no session of their own)."""
    return {st.pid for st in scan_processes()
            if st.ppid == parent and st.sid == st.pid and st.state != "Z"}


def wait_until(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
