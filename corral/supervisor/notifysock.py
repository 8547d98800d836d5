"""The receiving end of sd_notify: a `NOTIFY_SOCKET` per life of a plain program's
replica, read as systemd reads a Type=notify service's (`READY=1`, `STATUS=`, `WATCHDOG=1`).

One socket per life, so a message is the life's by where it arrived. The socket is a 0600
file of the replica's user in a directory only root may list; a same-user process could
still learn its path, so every datagram is also checked by its sender's credentials
(SO_PASSCRED): only the replica's process and its descendants are heard.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable

from .containment import read_stat

# a datagram larger than this is cut (systemd reads at most a page or so of text too)
MAX_DATAGRAM = 4096
# datagrams read per wakeup at most: a flood from the process does not hold the loop
READ_BURST = 64
_UCRED = struct.Struct("iII")  # pid, uid, gid
_FDS_MAX = 16  # file descriptors a datagram may carry (FDSTORE=1): closed, never kept


def parse(data: bytes) -> dict[str, str]:
    """`KEY=VALUE` lines (sd_notify's format); lines without `=` are skipped, the last of
    a key wins."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            out[key] = value
    return out


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether `pid` is `ancestor` or a process below it (by /proc's parent links)."""
    for _ in range(64):
        if pid == ancestor:
            return True
        st = read_stat(pid) if pid > 1 else None
        if st is None:
            return False
        pid = st.ppid
    return False


class NotifyDir:
    """The directory a supervisor's notify sockets live in: made when the first is, mode
    0711 (traversed by an agent's user, listed by root alone), removed on close."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._others: set[str] = set()  # a previous image's, when this one had its own

    def adopt(self, path: str) -> None:
        """The directory of sockets a previous daemon image made (`corral upgrade` keeps
        plain programs' sockets): this one's from now on, removed on close."""
        if self._path is None:
            self._path = path
        elif path != self._path:
            self._others.add(path)

    @property
    def path(self) -> str:
        if self._path is None:
            # short: a unix socket's path is at most 107 bytes
            self._path = tempfile.mkdtemp(prefix="corral-notify-")
            os.chmod(self._path, 0o711)
        return self._path

    def close(self) -> None:
        for path in [self._path, *self._others]:
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        self._path = None
        self._others.clear()


class NotifySocket:
    """One life's socket: each message of a sender `accepts(pid)` admits goes to
    `on_message(fields)`; one it does not, to `on_refused(pid)`."""

    def __init__(self, directory: str, uid: int | None, gid: int | None,
                 on_message: Callable[[dict[str, str]], None],
                 accepts: Callable[[int], bool],
                 on_refused: Callable[[int], None]) -> None:
        self.path = os.path.join(directory, secrets.token_hex(8))
        self.on_message = on_message
        self.accepts = accepts
        self.on_refused = on_refused
        self.received = 0
        self.refused = 0
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                             | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(self.path)
            os.chmod(self.path, 0o600)
            if uid is not None or gid is not None:
                os.chown(self.path, -1 if uid is None else uid, -1 if gid is None else gid)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise
        self._took(sock)

    @classmethod
    def inherited(cls, fd: int, path: str, on_message: Callable[[dict[str, str]], None],
                  accepts: Callable[[int], bool], on_refused: Callable[[int], None]
                  ) -> NotifySocket:
        """The socket a previous daemon image bound at `path`, kept open across its exec
        as `fd` (`corral upgrade`): what was sent to it meanwhile waits in it."""
        self = cls.__new__(cls)
        self.path, self.on_message, self.accepts, self.on_refused = (
            path, on_message, accepts, on_refused)
        self.received = self.refused = 0
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        sock.setblocking(False)
        self._took(sock)
        return self

    def _took(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self._loop = asyncio.get_running_loop()
        self._listening = False

    def fileno(self) -> int | None:
        return self.sock.fileno() if self.sock is not None else None

    def listen(self) -> None:
        """(What arrived before waits for this in the socket.)"""
        if self.sock is not None and not self._listening:
            self._listening = True
            self._loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        space = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(_FDS_MAX * 4)
        for _ in range(READ_BURST):
            try:
                data, ancillary, _, _ = sock.recvmsg(MAX_DATAGRAM, space)
            except OSError:  # (BlockingIOError: nothing more to read)
                return
            pid = None
            for level, kind, payload in ancillary:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                    pid = _UCRED.unpack_from(payload)[0]
                elif kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                    for fd in fds:
                        with contextlib.suppress(OSError):
                            os.close(fd)
            if pid is None or not self.accepts(pid):
                self.refused += 1
                self.on_refused(pid or 0)
                continue
            self.received += 1
            self.on_message(parse(data))
            if self.sock is None:  # the message ended the life (WATCHDOG=trigger)
                return

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if self._listening:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
