"""The files and directories the daemon makes in its own directories, opened so that
something put in a file's place (a symbolic link, a hard link to another file, a FIFO, a
device) is refused, naming the path and what is there, and nothing outside is written,
truncated or chmodded: the daemon runs as root, and a link in its directory would make it
write a file of the link's choosing."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# the files SQLite opens beside a database, itself
SQLITE_SIDES = ("", "-wal", "-shm", "-journal")


def _refused(path: Path | str, what: str) -> OSError:
    return OSError(errno.ELOOP, f"{path} is {what}, not a file of corral's own: refused "
                                "(remove it)", str(path))


_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def kind(mode: int) -> str:
    """What a file of this `st_mode` is, in the words every refusal of one says."""
    return next((what for test, what in _KINDS if test(mode)), "not a file")


def _checked(path: Path | str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise _refused(path, kind(st.st_mode))
    if st.st_nlink > 1:
        raise _refused(path, f"a hard link to a file of {st.st_nlink} names")


def open_file(path: Path | str, flags: int, mode: int = 0o600) -> int:
    """`os.open(path, flags, mode)` for a file of the daemon's own: refused (OSError,
    ELOOP, its message naming the path and what is there) when a link, a FIFO or a
    device is in its place; `O_TRUNC` applied once the file is known to be its own."""
    truncate = bool(flags & os.O_TRUNC)
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(path, "a symbolic link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO no one reads, a device
            # without its driver, a directory
            raise _refused(path, kind(os.lstat(path).st_mode)) from None
        raise
    try:
        _checked(path, os.fstat(fd))
        os.set_blocking(fd, True)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dir(path: Path, mode: int = 0o700) -> None:
    """`path` made a directory (with its parents) if it is not one: refused if a link or
    anything else is in its place."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ELOOP, f"{path} is {kind(st.st_mode)}, not a directory of "
                                   "corral's own: refused (remove it)", str(path))


def replace_file(path: Path, data: bytes, secret: bool = False, sync: bool = False) -> None:
    """`data` in `path`'s place, by a rename. The temporary beside it is a file of its
    own, made anew under a name no one could know (never what a link planted in a
    directory others may write names: the daemon is root); a file replaced keeps its
    mode (a file the operator made private stays so), less what lets others read it when
    it holds a `secret`; a new one is its owner's alone. `sync`: on disk before the
    rename (its directory's entry is the caller's to sync)."""
    import tempfile  # (not at every corral start: the CLI imports this module)

    try:
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o600
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".corral-tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, mode & ~0o077 if secret else mode)
            out.write(data)
            if sync:
                out.flush()
                os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def check_database(path: Path) -> None:
    """A SQLite database's file and the files SQLite makes beside it, each nothing yet
    or a regular file of one link (SQLite opens them itself, following links)."""
    for side in SQLITE_SIDES:
        file = path.with_name(path.name + side)
        try:
            st = os.lstat(file)
        except FileNotFoundError:
            continue
        _checked(file, st)
