"""Reading a package's directory as its writer may have left it (docs/packages.md).

The daemon reads as root what someone less trusted may write: every path is walked one
component at a time (`O_NOFOLLOW` from a directory's fd, never a path the kernel would
resolve through a link), only a regular file is opened (`O_NONBLOCK`: a FIFO swapped in
after the look neither blocks nor is read), the fd is `fstat`ed to be the file looked at,
and read no further than the size it was counted at. A link is kept only when relative and
naming a file of what is copied; any other is refused. Errors never quote a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import TypeVar

from ...statefiles import kind as kind

CHUNK = 1 << 20  # bytes read at a time
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
MAX_DEPTH = 64  # directories within directories
GRACE = 1.0  # seconds a cancelled read has to stop before its caller goes on

T = TypeVar("T")


class PathRefusal(Exception):
    """A path of the package that is not read, and why (its contents are never said)."""

    def __init__(self, rel: str, reason: str) -> None:
        super().__init__(f"{rel}: {reason}")
        self.rel = rel
        self.reason = reason


class ReadCancellation(Exception):
    """The deploy that asked for the read went away."""


def open_root(path: str) -> int:
    """The package's directory, as the operator named it (a link there is the
    operator's: followed)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dir(root: int, rel: str, shown: str | None = None) -> int:
    """A directory of the package, reached without following a link (`shown`: the
    path a refusal names, a file in it)."""
    shown = shown or rel
    _parts(shown)  # refused as a whole: "../x", never "..: ..."
    fd = os.dup(root)
    for part in _parts(rel):
        try:
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            raise PathRefusal(shown, f"{part} is not a directory of the package "
                              f"({_why(exc)})") from None
        os.close(fd)
        fd = nxt
    return fd


def open_file(root: int, rel: str) -> tuple[int, os.stat_result]:
    """A regular file of the package, opened after it was looked at, and its fstat."""
    parent, _, name = rel.rpartition("/")
    dfd = open_dir(root, parent, rel)
    try:
        try:
            seen = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:
            raise PathRefusal(rel, _why(exc)) from None
        if not stat.S_ISREG(seen.st_mode):
            raise PathRefusal(rel, f"{kind(seen.st_mode)}, not a regular file")
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=dfd)
        except OSError as exc:
            raise PathRefusal(rel, _why(exc)) from None
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(fd)
        raise PathRefusal(rel, f"changed while it was read (now {kind(st.st_mode)})")
    return fd, st


def chunks(fd: int, size: int, rel: str, stop: threading.Event | None = None
           ) -> Iterator[bytes]:
    """The file's bytes, CHUNK at a time: exactly `size` of them (its size when it was
    opened), or PathRefusal: it changed."""
    left = size
    while left > 0:
        if stop is not None and stop.is_set():
            raise ReadCancellation()
        data = os.read(fd, min(CHUNK, left))
        if not data:
            raise PathRefusal(rel, f"changed while it was read (shorter than {size} bytes)")
        left -= len(data)
        yield data
    if os.read(fd, 1):
        raise PathRefusal(rel, f"changed while it was read (longer than {size} bytes)")


def read_small(root: int, rel: str, limit: int) -> bytes:
    """A file corral itself reads (a manifest, pyproject.toml, a requirements file),
    whole, at most `limit` bytes."""
    fd, st = open_file(root, rel)
    try:
        if st.st_size > limit:
            raise PathRefusal(rel, f"{st.st_size} bytes, more than the {limit} corral reads of "
                               "such a file")
        return b"".join(chunks(fd, st.st_size, rel))
    finally:
        os.close(fd)


def is_regular(root: int, rel: str) -> bool:
    try:
        dfd = open_dir(root, rel.rpartition("/")[0])
    except PathRefusal:
        return False
    try:
        return stat.S_ISREG(os.stat(rel.rpartition("/")[2], dir_fd=dfd,
                                    follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        os.close(dfd)


def link_target(rel: str, target: str) -> str | None:
    """The package's path a link at `rel` whose text is `target` names, when it is
    relative and stays inside the package; None otherwise."""
    if not target or target.startswith("/"):
        return None
    joined = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    if joined == "." or joined.startswith("../") or joined == "..":
        return None
    return joined


def entries(root: int, rel_dir: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """(name, lstat) of a directory's entries, sorted, without following anything."""
    dfd = open_dir(root, rel_dir)
    try:
        for name in sorted(os.listdir(dfd)):
            try:
                yield name, os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since it was listed
    finally:
        os.close(dfd)


def read_link(root: int, rel: str) -> str:
    parent, _, name = rel.rpartition("/")
    dfd = open_dir(root, parent, rel)
    try:
        return os.readlink(name, dir_fd=dfd)
    except OSError as exc:
        raise PathRefusal(rel, _why(exc)) from None
    finally:
        os.close(dfd)


def depth(rel: str) -> int:
    return len(_parts(rel))


def _parts(rel: str) -> list[str]:
    parts = [p for p in PurePosixPath(rel).parts if p not in ("", ".")]
    if any(p == ".." or "/" in p for p in parts):
        raise PathRefusal(rel, "not a path inside the package")
    return parts


def _why(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return "a symbolic link or not a directory: not followed"
    return exc.strerror or str(exc)


async def in_thread(work: Callable[[threading.Event], T]) -> T:
    """`work(stop)` in a daemon thread (a read a hung file system never answers is left
    behind, not joined). Cancelled, it sets `stop` and gives the work GRACE seconds to
    see it, so that what it wrote is not being written while the caller removes it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    # an outcome nobody waits for any more is no "exception never retrieved"
    done.add_done_callback(lambda f: f.cancelled() or f.exception())
    stop = threading.Event()

    def settle(ok: bool, value: object) -> None:
        if done.done():
            return
        if ok:
            done.set_result(value)  # type: ignore[arg-type]
        else:
            assert isinstance(value, BaseException)
            done.set_exception(value)

    def run() -> None:
        try:
            result: object = work(stop)
            ok = True
        except BaseException as exc:  # handed to the awaiting task
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=run, name="corral-package-read", daemon=True).start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([done], timeout=GRACE)
        raise
