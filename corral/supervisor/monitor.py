"""The look at a live process: what it writes (its protocol's channel on stdout, its log
on stderr), and the heartbeat's visit (a hang: no heartbeat, or bytes for it unread; its
usage sampled from /proc against its soft caps). A part of the process replica
(process_replica.py): what it sees that must end the life, it takes down.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ..jsonrpc import LineBlock, Peer
from . import procstat
from .containment import ProcStat
from .lifecycle import Cause
from .replicaparts import ReplicaParts

# consecutive heartbeat samples above cpu_percent before it counts as a breach
CPU_PERCENT_SAMPLES = 5
# what a process may write on stdout before its channel is made, kept for it
EARLY_MOST = 16 * 1024 * 1024
# without a ping (the stateless MCP revision has none), this many requests in a row that
# time out, with nothing at all read from the process meanwhile, mark it hung
HUNG_AFTER_TIMEOUTS = 3


class Monitor(ReplicaParts):
    """The heartbeat's and the channel's members of a process replica."""

    garbage_is = "a stdout line"  # what its channel reads a message from

    def _monitor_init(self) -> None:
        # the lines read before its channel existed (its spawn not returned yet: on a loaded
        # host the loop reads what it wrote first before the spawn's coroutine resumes), fed
        # to the channel once made (`_early_lines`), at most EARLY_MOST bytes of them
        self._early: list[bytes] | None = None
        self._early_size = 0
        self._last_pong = 0.0
        self._ping_out = False
        self._heard = False  # a line arrived since the heartbeat last looked
        # the process's /proc files, open while it lives (procstat.open_proc), and its CPU
        # ticks when the heartbeat last found it parked on its stdin (-1: not yet)
        self._stat_fd = self._syscall_fd = self._parked_ticks = -1
        # when (listening clock) a look last found it parked, and until when it is not looked
        # at again (its next turn of the fleet's looks) while it stays undisturbed (nothing
        # asked of it, nothing heard from it since: `_quiet_sent` is the requests sent then)
        self._parked_at: float | None = None
        self.quiet_until = 0.0
        self._quiet_sent = 0
        # what the last look read of it, and when, not yet sampled
        self._looked: tuple[float, ProcStat] | None = None
        self._prev_cpu: tuple[float, float] | None = None
        self._cpu_over = 0
        self._oversize = 0
        # since when (listening clock) corral has had bytes for the process that it did not
        # take, none of them read (past the heartbeat timeout it is hung on its stdin:
        # Cause.UNREAD), and how many there were when the heartbeat last looked
        self._unread_since: float | None = None
        self._unread_left = 0

    def _stdio(self) -> dict[str, Any]:
        """ChildProcess.attach's callbacks: stdout the protocol's channel, stderr its log."""
        return {"on_stdout_line": self._on_stdout_line,
                "on_stderr_lines": self._on_stderr_lines,
                "on_oversize": self._on_oversize,
                "max_line": self.max_line}

    # -- channel --------------------------------------------------------------------------
    def _on_stdout_line(self, line: bytes) -> None:
        self._heard = True
        if self.peer is not None:
            self.peer.feed_line(line)
            return
        early = self._early
        if early is None:
            early = self._early = []
        self._early_size += len(line)
        if self._early_size <= EARLY_MOST:
            early.append(line)
        elif self._early_size - len(line) <= EARLY_MOST:
            self.note(f"discarded what it wrote on stdout past {EARLY_MOST} bytes before "
                      "its channel was made")

    def _early_lines(self, peer: Peer | None) -> None:
        early, self._early, self._early_size = self._early, None, 0
        if early is not None and peer is not None:
            for line in early:
                peer.feed_line(line)

    def _on_stderr_lines(self, lines: LineBlock) -> None:
        self._log("stderr", lines)

    @property
    def max_line(self) -> int:
        return self.host.max_line

    def _on_oversize(self, size: int, head: bytes, tail: bytes) -> None:
        self._oversize += 1
        self.note(f"discarded a {size}-byte line on stdout (limit {self.max_line} bytes)")
        # the answer to a request: that request fails now, not at its timeout
        if self.peer is not None:
            self.peer.oversized(size, head, tail, self.max_line)

    def _unread_too_long(self, now: float, timeout: float) -> bool:
        """corral has had bytes for the process past its stdin pipe, none read for the
        heartbeat timeout: hung on its stdin whatever it writes, and taken down (one that
        reads, if slowly, is not: a ping behind that backlog could not be answered sooner)."""
        proc = self.process
        left = proc.stdin_backlog if proc is not None else 0
        if not left:
            self._unread_since = None
            return False
        if self._unread_since is None or left < self._unread_left:
            self._unread_since = now
        self._unread_left = left
        if now - self._unread_since <= timeout:
            return False
        self.take_down(f"hung: {left} bytes sent to it unread for {timeout:g} s",
                       graceful=False, cause=Cause.UNREAD)
        return True

    def _on_garbage(self, line: bytes, why: str) -> None:
        preview = line[:120].decode("utf-8", "replace")
        self.note(f"discarded {self.garbage_is} that is not JSON-RPC ({why}): {preview!r}")

    @property
    def garbage_lines(self) -> int:
        return (self.peer.garbage_lines if self.peer else 0) + self._oversize

    # -- heartbeat ------------------------------------------------------------------------
    def heartbeat(self, now: float, timeout: float, sample: bool, sample_fds: bool) -> None:
        """One visit of the heartbeat. `now` is the supervisor's listening clock
        (listening.py): silence during its stalls is not the worker's."""
        if not self.machine.takes_work or self.peer is None:
            if self.machine.starting and self.process is not None and sample:
                self._sample(sample_fds)
            return  # (a start has its own timeout, whatever it reads meanwhile)
        if self._unread_too_long(now, timeout):
            return
        if self.pings:
            # silence counts only while corral could and would read the pipe (not while it
            # holds the requests or has bytes unread by the process: a ping would wait
            # behind them), and not while the process is excused
            if self._heard or self.silence_excused or self._unread_since is not None or \
                    self.peer.held is not None:
                self._heard = False
                self._last_pong = now
                self._parked_at, self.quiet_until = None, 0.0
            parked_at = self._parked_at
            if parked_at is not None:
                # found parked, and undisturbed since: a large fleet's quiet workers are
                # looked at in turn at a bounded rate (heartbeat.py), not each every
                # timeout/2 (the kernel tells of a death by its pidfd)
                if now < self.quiet_until and self.undisturbed():
                    if sample:
                        self._sample(sample_fds)
                    return
                # its turn, or work was given to it: silence counts from the look, or from
                # timeout/2 ago where the look is older (its look, or a ping, is then due)
                self._parked_at, self.quiet_until = None, 0.0
                self._last_pong = max(parked_at, now - timeout / 2)
            silent = now - self._last_pong
            if silent > timeout:
                self.take_down(f"hung: no heartbeat for {timeout:g} s", graceful=False,
                               cause=Cause.HANG)
                return
            # a worker that spoke within half the timeout needs no ping: an idle fleet
            # costs a ping per worker every timeout/2, a busy one none, and a hang is still
            # seen `timeout` after the last sign of life
            if not self._ping_out and silent >= timeout / 2:
                if self._parked():
                    self._last_pong = self._parked_at = now
                    self.quiet_until = now + max(timeout / 2,
                                                 self.host.heartbeat_work.look_every)
                    self._quiet_sent = self.peer.sent
                    self.host.heartbeat_work.parked += 1
                else:
                    self._ping_out = True
                    self.host.heartbeat_work.pings += 1
                    _, fut = self.peer.request_future(*self.liveness_request())
                    fut.add_done_callback(self._pong)
        elif self.peer.silent_timeouts >= HUNG_AFTER_TIMEOUTS:  # no ping (stateless MCP)
            self.take_down(f"hung: {self.peer.silent_timeouts} requests in a row timed out "
                           "with no word from it", graceful=False, cause=Cause.HANG)
            return
        if sample:
            self._sample(sample_fds)

    def undisturbed(self) -> bool:
        """Nothing asked of it (a task, a ping, a call) and nothing heard from it since a
        look found it parked: the heartbeat's round passes it by until its next look."""
        peer = self.peer
        return (peer is not None and peer.sent == self._quiet_sent and not self._heard
                and not self.tasks_running)

    @property
    def pings(self) -> bool:
        return True

    def liveness_request(self) -> tuple[str, dict[str, Any]]:
        return "ping", {}

    @property
    def silence_excused(self) -> bool:
        """Whether missed pings are not a hang now (an MCP server in a call)."""
        return False

    def _parked(self) -> bool:
        """Whether the process shows, unwoken, that it would answer a ping now: its main
        thread asleep reading its stdin, nothing of corral's on it, and no CPU used since
        the last such look or its handshake (a thread spinning while it holds the
        interpreter would keep a ping from being answered). Else, or /proc mute: pinged."""
        proc = self.process
        if (proc is None or self.tasks_running or self.peer is None or self.peer.in_flight
                or proc.stdin_backlog or not procstat.READ_CALLS):
            return False
        pid = self._measured_pid(proc)
        if pid is None:
            return False
        if self._syscall_fd == -1:
            self._syscall_fd = procstat.UNAVAILABLE
            pipe = proc.stdin.get_extra_info("pipe") if proc.stdin is not None else None
            if pipe is not None and procstat.same_pipe(pid, pipe.fileno()):
                self._syscall_fd = procstat.open_proc(pid, "syscall")
        if self._syscall_fd < 0 or not procstat.reading_stdin(self._syscall_fd):
            self._parked_ticks = -1
            return False
        st = self._proc_stat(pid)
        if st is None or st.state != "S":  # (a stopped process shows its read too)
            return False
        # the dear read of a look (the kernel sums the threads' times) is the usage sample
        # too, when the replica's sampling turn comes
        self._looked = time.monotonic(), st
        before, self._parked_ticks = self._parked_ticks, st.cpu_ticks
        return before == st.cpu_ticks

    def _proc_stat(self, pid: int) -> ProcStat | None:
        if self._stat_fd == -1:
            self._stat_fd = procstat.open_proc(pid, "stat")
        return procstat.stat_at(self._stat_fd, pid) if self._stat_fd >= 0 else None

    def _close_proc_files(self) -> None:
        for fd in (self._stat_fd, self._syscall_fd):
            if fd >= 0:
                os.close(fd)
        self._stat_fd = self._syscall_fd = self._parked_ticks = -1
        self._parked_at, self.quiet_until = None, 0.0
        self._looked = None

    def _pong(self, fut: asyncio.Future[Any]) -> None:
        # the answer itself is a line on stdout, which marked the worker heard
        self._ping_out = False
        if not fut.cancelled():
            fut.exception()

    def _sample(self, sample_fds: bool) -> None:
        proc = self.process
        if proc is None:
            return
        looked, self._looked = self._looked, None
        if looked is not None:  # read by a look since the last sample: not read again
            now, st = looked
        else:
            pid = self._measured_pid(proc)
            fresh = self._proc_stat(pid) if pid is not None else None
            if fresh is None:
                return
            # wall time for CPU %, not the listening clock
            now, st = time.monotonic(), fresh
        total = st.cpu_ticks / procstat.CLOCK_TICKS
        rss = st.rss_pages * procstat.PAGE_SIZE
        s = self.sample
        if sample_fds:
            pid = self._measured_pid(proc)
            fds = procstat.open_fds(pid) if pid is not None else None
            if fds is not None:
                s.open_fds = fds
        if self._prev_cpu is not None:
            dt = now - self._prev_cpu[0]
            if dt > 0:
                s.cpu_percent = round(100.0 * (total - self._prev_cpu[1]) / dt, 1)
        self._prev_cpu = (now, total)
        s.cpu_seconds = total
        s.rss_bytes = rss
        limits = self.spec.limits
        if limits.rss_mb and rss > limits.rss_mb * 1024 * 1024:
            self.take_down(
                f"RSS soft limit ({rss // (1024 * 1024)} MiB > {limits.rss_mb} MiB)",
                graceful=True, cause=Cause.CAP,
            )
        elif limits.cpu_percent and not self.host.containment.throttles_cpu(proc.token):
            # (where cpu.max is in force the kernel holds the share; no restart for it)
            self._cpu_over = self._cpu_over + 1 if s.cpu_percent > limits.cpu_percent else 0
            if self._cpu_over >= CPU_PERCENT_SAMPLES:
                self.take_down(
                    f"CPU share limit ({s.cpu_percent:g}% > {limits.cpu_percent:g}% "
                    f"for {CPU_PERCENT_SAMPLES} samples)",
                    graceful=True, cause=Cause.CAP,
                )

    def _resumed(self) -> None:
        """Its silence while paused was corral's doing: the heartbeat counts afresh."""
        self._last_pong = self.host.listening.now()
        self._heard = False
        self._unread_since = None
        self._prev_cpu = None
        self._parked_ticks = -1
        self._parked_at, self.quiet_until = None, 0.0
