"""Where a source's log lines are written: a file rotated by size and by time, its
rotated copies gzipped if asked (NAME.log.1.gz ..), or the daemon's own stdout or stderr
(a container's `docker logs`).

A rotated copy is compressed on a thread of its own (a 10 MiB file would hold the event
loop for a tenth of a second); the next rotation of that file waits for it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import threading
from typing import NamedTuple

# what a log file's place may hold instead of a file (below), said as the file's failure
NOT_A_LOG = "not a log file in its place (a symlink, a FIFO, a device or a hard link)"
GZ = ".gz"


class Rotation(NamedTuple):
    """When a log file is rotated and what is kept of it."""

    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5
    every: float = 0.0  # seconds of the wall clock's periods; 0: by size alone
    compress: bool = False  # rotated copies gzipped (NAME.log.N.gz)


class LogPlace(NamedTuple):
    """Where a source's lines are written, and its rotation. The path is a str, not a
    Path: pathlib interns each part of a path it parses, and each agent's file is placed
    again at each of its opens, so a Path's name would churn the interpreter's table of
    interned strings as agents come and go (steplog.py)."""

    path: str
    rotation: Rotation


def _open_log(path: str) -> int:
    """A log file opened for appending, if it is a file of its own: a tenant's user owns
    its log directory (tenantdirs.py) and may put a symlink there (root would append to
    what it names), a FIFO (root would wait on it) or a hard link in a log's place."""
    return _own_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def _own_file(path: str, flags: int) -> int:
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink; a FIFO none reads
            raise OSError(exc.errno, NOT_A_LOG, path) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise OSError(errno.EPERM, NOT_A_LOG, path)
    return fd


def copy_name(path: str, n: int, compressed: bool) -> str:
    # a str, as the file's own path (LogPlace): made again at every rotation
    return f"{path}.{n}{GZ if compressed else ''}"


def compress(plain: str) -> None:
    """`plain` as `plain.gz`, written aside and renamed into place (or left, on failure)."""
    import gzip  # here: only a rotation asked to compress pays for it, not a daemon's start

    done = plain + GZ
    part = done + ".part"
    try:
        # the directory may be a tenant's user's: what is in these places is theirs to
        # put, so neither is followed (root would gzip the file a link names into the
        # tenant's directory, or write over it)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        with os.fdopen(_own_file(plain, os.O_RDONLY), "rb") as src, \
                os.fdopen(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, 0o640), "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        os.replace(part, done)
        os.unlink(plain)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(part)


class RotatingFile:
    """An append-only file rotated by size and time to NAME.log.1 .. NAME.log.N."""

    def __init__(self, place: LogPlace) -> None:
        self.path = place.path
        self.rotation = place.rotation
        self._fd = _open_log(self.path)
        st = os.fstat(self._fd)
        self.size = st.st_size
        # its last line's period, read back at open (-1: empty, its first line's decides)
        self._period = self._period_of(st.st_mtime) if st.st_size else -1
        self._compressing: threading.Thread | None = None

    def _period_of(self, when: float) -> int:
        every = self.rotation.every
        return int(when // every) if every > 0 else 0

    def turn(self, when: float) -> None:
        """The next lines are of time `when`: the file is rotated first if its last line
        was of an earlier period (a line's own time decides, not the clock's now)."""
        if self.rotation.every > 0:
            period = self._period_of(when)
            if period > self._period:
                if self.size:
                    self.rotate()
                self._period = period

    def write(self, *parts: bytes) -> None:
        """Append the parts with one writev(2): no copy to join them first."""
        total = sum(map(len, parts))
        n = os.writev(self._fd, parts)
        if n < total:  # a short write (a full disk, a signal): finish it piece by piece
            rest = memoryview(b"".join(parts))[n:]
            while rest:
                rest = rest[os.write(self._fd, rest):]
        self.size += total
        if self.size >= self.rotation.max_bytes:
            self.rotate()

    def rotate(self) -> None:
        """The file moved to NAME.log.1 (the older copies up one) and a new one begun."""
        self.wait()
        os.close(self._fd)
        self._fd = -1
        backups, gz = self.rotation.backups, self.rotation.compress
        if backups:
            for i in range(backups, 0, -1):
                for packed in (False, True):  # copies made before compress was set too
                    src = copy_name(self.path, i, packed)
                    if not os.path.exists(src):
                        continue
                    if i == backups:
                        os.unlink(src)
                    else:
                        os.replace(src, copy_name(self.path, i + 1, packed))
            first = copy_name(self.path, 1, False)
            os.replace(self.path, first)
            if gz:
                self._compressing = threading.Thread(
                    target=compress, args=(first,), name="log-compress", daemon=True)
                self._compressing.start()
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._fd = _open_log(self.path)
        self.size = 0

    def wait(self) -> None:
        if self._compressing is not None:
            self._compressing.join()
            self._compressing = None

    def close(self) -> None:
        self.wait()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# the daemon's own streams, as an agent's log_file (a container's `docker logs`)
STREAMS = {"/dev/stdout": 1, "/dev/stderr": 2}


class StreamFile:
    """The daemon's stdout or stderr as a source's log, never rotated."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.dup(STREAMS[path])
        os.set_inheritable(self._fd, False)

    def write(self, *parts: bytes) -> None:
        rest = memoryview(b"".join(parts))
        while rest:
            rest = rest[os.write(self._fd, rest):]

    def turn(self, when: float) -> None:
        """Never rotated."""

    def rotate(self) -> None:
        """Nothing to rotate."""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_place(place: LogPlace) -> RotatingFile | StreamFile:
    if place.path in STREAMS:
        return StreamFile(place.path)
    return RotatingFile(place)
