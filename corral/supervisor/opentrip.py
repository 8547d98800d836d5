"""An open of a file no agent reads, seen and refused (issue 88): an egress sandbox binds
the system's /etc, whose `shadow` and `gshadow` only their mode guards (a dynamic uid's
open is EACCES, told to no one; a root agent's succeeds). In each egress sandbox they are
decoys instead: an empty file of the daemon's for that replica (`SOCKET.trip/LABEL.NAME`),
bound over the path, whose inode fanotify watches for opens with permission events
(FAN_OPEN_PERM on the inode alone: no other open of the host is slowed). An open of one
is answered FAN_DENY — the agent's open fails EPERM, an errno with no words — and is
`BoundaryRefusals.refused` of kind `open` to the path, naming the agent and its task. An
open by another uid than the replica's (a local user who found the host's path) is let
through unrecorded: the decoy is empty. Where fanotify's permission events cannot be had
(not root, a kernel without them) there are no decoys, and the mode alone guards."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import struct
from collections.abc import Callable

GUARDED = ("/etc/shadow", "/etc/gshadow")
FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_CONTENT = 0x01, 0x02, 0x04
FAN_MARK_ADD, FAN_MARK_REMOVE = 0x01, 0x02
FAN_OPEN_PERM = 0x00010000
FAN_ALLOW, FAN_DENY = 0x01, 0x02
AT_FDCWD = -100
EVENT = struct.Struct("=IBBHQii")  # fanotify_event_metadata
RESPONSE = struct.Struct("=iI")  # fanotify_response
READ = 4096


class Decoy:
    """One decoy: whose (its replica's agent and uid), what it stands for, whose task."""

    __slots__ = ("agent", "path", "target", "task_of", "uid")

    def __init__(self, path: str, agent: str, uid: int, target: str,
                 task_of: Callable[[], str | None]) -> None:
        self.path, self.agent, self.uid = path, agent, uid
        self.target, self.task_of = target, task_of


def _uid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[2])  # (effective)
    except (OSError, ValueError, IndexError):
        return None
    return None


class OpenWatch:
    """The fanotify group that hears opens of the decoys it marks; `refused(decoy)` told
    of each denied. OSError where this process may not make one."""

    def __init__(self, refused: Callable[[Decoy], None]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64,
                                             ctypes.c_int, ctypes.c_char_p]
        fd = self._libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK,
                                      os.O_RDONLY | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init: {os.strerror(err)}")
        self.fd = fd
        self.refused = refused
        self._decoys: dict[tuple[int, int], Decoy] = {}
        asyncio.get_running_loop().add_reader(fd, self._read)

    def mark(self, decoy: Decoy) -> None:
        st = os.stat(decoy.path)
        if self._libc.fanotify_mark(self.fd, FAN_MARK_ADD, FAN_OPEN_PERM, AT_FDCWD,
                                    os.fsencode(decoy.path)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_mark {decoy.path}: {os.strerror(err)}")
        self._decoys[(st.st_dev, st.st_ino)] = decoy

    def unmark(self, decoy: Decoy) -> None:
        for key, kept in list(self._decoys.items()):
            if kept is decoy:
                del self._decoys[key]
                self._libc.fanotify_mark(self.fd, FAN_MARK_REMOVE, FAN_OPEN_PERM, AT_FDCWD,
                                         os.fsencode(decoy.path))

    def _read(self) -> None:
        try:
            data = os.read(self.fd, READ * EVENT.size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        at = 0
        while at + EVENT.size <= len(data):
            size, _, _, _, _, fd, pid = EVENT.unpack_from(data, at)
            at += max(size, EVENT.size)
            if fd < 0:
                continue
            try:
                self._answer(fd, pid)
            finally:
                os.close(fd)

    def _answer(self, fd: int, pid: int) -> None:
        try:
            st = os.fstat(fd)
            decoy = self._decoys.get((st.st_dev, st.st_ino))
        except OSError:
            decoy = None
        deny = decoy is not None and _uid_of(pid) == decoy.uid
        with contextlib.suppress(OSError):  # (an answer not taken: the open goes on)
            os.write(self.fd, RESPONSE.pack(fd, FAN_DENY if deny else FAN_ALLOW))
        if deny and decoy is not None:
            self.refused(decoy)

    def close(self) -> None:
        with contextlib.suppress(ValueError, RuntimeError):  # (the loop gone first)
            asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)  # (pending opens are let through: the decoys are empty)
