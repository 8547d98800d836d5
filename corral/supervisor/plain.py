"""A replica of a plain program (protocol = "none"): any process, supervised as an agent
through the same lifecycle table, with no `initialize`, heartbeat ping or task; in their
place what systemd gives a service (stdin at EOF, stdout logged as stderr is, readiness
`started` or `notify`, `WATCHDOG=1`, `STATUS=`, SIGTERM then SIGKILL: docs/config.md).

The notify socket (notifysock.py) is heard only once the process is known, so a datagram
is always judged against the process the life spawned.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, Protocol

import msgspec

from .. import jsonrpc
from ..jsonrpc import LineBlock, Peer, RpcError
from ..text import one_line
from ..timeouts import within
from .config import AgentSpec
from .lifecycle import Cause
from .notifysock import NotifyDir, NotifySocket, descends_from
from .process import ChildProcess
from .process_replica import ReplicaStatus
from .replica import AgentHost, Replica

STATUS_MAX = 300  # a STATUS= text beyond this is cut (it goes into status lines)
# refused datagrams noted in the replica's log per life (then only counted): a process
# that floods a sibling's socket cannot flood the log
REFUSALS_NOTED = 3


class PlainHanded(msgspec.Struct, frozen=True):
    """What a plain program's life is besides its process and log pipes, handed across
    `corral upgrade`: its $NOTIFY_SOCKET and what the program said on it."""

    notify_fd: int | None = None
    notify_path: str | None = None
    ready_seen: bool = False
    status_text: str | None = None


class PlainHost(AgentHost, Protocol):
    @property
    def notify_dir(self) -> NotifyDir: ...


def make_replica(host: PlainHost, spec: AgentSpec, name: str, index: int) -> Replica:
    """The replica an agent's spec asks for: a worker's, or a plain program's."""
    if spec.protocol == "none":
        return PlainReplica(host, spec, name, index)
    return Replica(host, spec, name, index)


class PlainReplica(Replica):
    handshake = "readiness"
    handshake_failed = "start failed"
    host: PlainHost

    def __init__(self, host: PlainHost, spec: AgentSpec, name: str, index: int) -> None:
        super().__init__(host, spec, name, index)
        self.notify: NotifySocket | None = None  # this life's $NOTIFY_SOCKET
        self.status_text: str | None = None  # the last STATUS= of this life
        self._ready_seen = False  # READY=1 arrived this life
        self._ready_told: asyncio.Future[None] | None = None  # the start waits on it
        self._watchdog_fed = 0.0  # listening clock: the last WATCHDOG=1 (or Ready)

    @property
    def takes_tasks(self) -> bool:
        return False

    # -- a life ---------------------------------------------------------------------------
    def _stdio(self) -> dict[str, Any]:
        return {"on_stdout_lines": self._on_stdout_lines,
                "on_stderr_lines": self._on_stderr_lines,
                "on_oversize": self._on_oversize,
                "max_line": self.max_line}

    def _on_stdout_lines(self, lines: LineBlock) -> None:
        self.host.replica_log(self, "stdout", lines)

    def _environment(self, uid: int | None) -> dict[str, str]:
        env = super()._environment(uid)
        self._close_notify()  # (a life's socket is closed with it; this is a safeguard)
        # its socket, owned by its user: made before the spawn, heard once it is known
        self.notify = NotifySocket(self.host.notify_dir.path, uid, None, self._notified,
                                   self._accepts, self._refused)
        env["NOTIFY_SOCKET"] = self.notify.path
        env.pop("WATCHDOG_PID", None)  # never corral's own (it may run under systemd)
        if self.spec.watchdog_sec:
            env["WATCHDOG_USEC"] = str(int(self.spec.watchdog_sec * 1_000_000))
        else:
            env.pop("WATCHDOG_USEC", None)
        return env

    def _notify_socket(self) -> str | None:
        return self.notify.path if self.notify is not None else None

    def _make_peer(self, proc: ChildProcess) -> Peer | None:
        # no protocol on its stdio; its process is known now: its socket is heard
        if self.notify is not None:
            self.notify.listen()
        return None

    def _fresh_life(self) -> None:
        super()._fresh_life()
        self.status_text = None
        self._ready_seen = False

    def _life_over(self) -> None:
        self._close_notify()
        super()._life_over()

    def _close_notify(self) -> None:
        sock, self.notify = self.notify, None
        if sock is not None:
            sock.close()
        fut, self._ready_told = self._ready_told, None
        if fut is not None and not fut.done():
            fut.cancel()

    async def _handshake(self) -> str:
        proc = self.process
        if proc is not None:
            proc.close_stdin()  # it reads EOF, as from systemd's /dev/null
        if self.spec.ready != "notify":
            return "started"
        if not self._ready_seen:
            fut = self._ready_told = asyncio.get_running_loop().create_future()
            try:
                await within(fut, self.spec.start_timeout)
            except TimeoutError:
                raise RpcError(jsonrpc.REQUEST_TIMEOUT, "no READY=1") from None
            finally:
                self._ready_told = None
        return "READY=1" + (f": {self.status_text}" if self.status_text else "")

    def _start_timed_out(self, timeout: float) -> str:
        return (f"start timeout: no READY=1 on $NOTIFY_SOCKET within {timeout:g} s "
                '(ready = "notify")')

    def _serving(self) -> None:
        self._watchdog_fed = self.host.listening.now()
        super()._serving()

    def _resumed(self) -> None:
        super()._resumed()  # its silence while paused was corral's doing
        self._watchdog_fed = self.host.listening.now()

    def _ask_to_stop(self, proc: ChildProcess) -> int:
        """As systemd stops a service (closing stdin asks nothing of a program that does
        not read it)."""
        proc.kill_group(self.spec.stop_signum)
        return signal.SIGKILL

    def exit_message(self, reason: str) -> str:
        return f"process exited: {reason}"

    # -- across `corral upgrade` (adopt.py) -----------------------------------------------
    def handed(self) -> PlainHanded:
        sock = self.notify
        fd = sock.fileno() if sock is not None else None
        return PlainHanded(
            notify_fd=fd, notify_path=sock.path if sock is not None and fd is not None
            else None, ready_seen=self._ready_seen, status_text=self.status_text)

    def take_handed(self, h: PlainHanded) -> None:
        """Before its channel is made: the notify socket the previous image bound (what
        the program sent meanwhile waits in it), and what it had said."""
        self._close_notify()
        if h.notify_fd is not None and h.notify_path is not None:
            self.host.notify_dir.adopt(os.path.dirname(h.notify_path))
            self.notify = NotifySocket.inherited(h.notify_fd, h.notify_path, self._notified,
                                                 self._accepts, self._refused)
        self._ready_seen, self.status_text = h.ready_seen, h.status_text

    # -- $NOTIFY_SOCKET -------------------------------------------------------------------
    def _accepts(self, pid: int) -> bool:
        """A datagram is this replica's when its sender is this life's process or one of
        its descendants (a program started by a shell, or inside its sandbox)."""
        proc = self.process
        return proc is not None and pid > 0 and proc.alive and descends_from(pid, proc.pid)

    def _refused(self, pid: int) -> None:
        sock = self.notify
        if sock is not None and sock.refused <= REFUSALS_NOTED:
            self.note(f"refused a message on $NOTIFY_SOCKET from pid {pid}: not this "
                      "replica's process nor one of its descendants"
                      + (" (further ones are only counted)" if sock.refused == REFUSALS_NOTED
                         else ""))

    def _notified(self, fields: dict[str, str]) -> None:
        if "STATUS" in fields:
            self.status_text = one_line(fields["STATUS"])[:STATUS_MAX] or None
        if fields.get("READY") == "1" and not self._ready_seen:
            self._ready_seen = True
            fut = self._ready_told
            if fut is not None and not fut.done():
                fut.set_result(None)
        watchdog = fields.get("WATCHDOG")
        if watchdog == "1":
            self._watchdog_fed = self.host.listening.now()
        elif watchdog == "trigger":
            self.take_down("watchdog triggered by the program (WATCHDOG=trigger)",
                           graceful=False, cause=Cause.HANG)
        if fields.get("STOPPING") == "1" and self.machine.running:
            self.note("the program says it is stopping (STOPPING=1)")

    # -- the heartbeat: no ping (it speaks no protocol); the watchdog and a usage sample ---
    def heartbeat(self, now: float, timeout: float, sample: bool, sample_fds: bool) -> None:
        watchdog = self.spec.watchdog_sec
        if watchdog and self.machine.takes_work and now - self._watchdog_fed > watchdog:
            self.take_down(f"hung: no WATCHDOG=1 on $NOTIFY_SOCKET for {watchdog:g} s "
                           "(watchdog_sec)", graceful=False, cause=Cause.HANG)
            return
        if sample and self.process is not None and self.machine.running:
            self._sample(sample_fds)

    def status(self) -> ReplicaStatus:
        st = super().status()
        st.status_text = self.status_text if self.machine.live else None
        if st.ready is None:
            st.ready = self.machine.takes_work
        return st
