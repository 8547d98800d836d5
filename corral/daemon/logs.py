"""Log aggregation: every worker's stderr and the daemon's events, in one place.

Each line is tagged (time, source, replica, pid, stream) and goes to a bounded tail per
source, a rotated file per source and live followers. The hot path is per read, not per
line: one read's lines share a tag, a timestamp and a write(2), kept raw in a `Batch`
until read. Files are unbuffered (a line that reached corral survives its death); one
that cannot be written stops nothing (docs/operations.md, "Logs").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from ..jsonrpc import LineBlock
from ..methods import LogLine
from ..statefiles import open_file
from ..supervisor.followers import Follower
from ..supervisor.names import NAME_RE
from ..supervisor.stream import STREAMED
from ..text import iso_time, one_line, plural
from ..throttle import Throttle
from .logfiles import LogPlace, RotatingFile, Rotation, StreamFile, open_place
from .logreadback import read_back

DAEMON_SOURCE = "corral"
RETRY_EVERY = 1.0  # seconds between attempts at a log file that could not be written
FOLLOWER_QUEUE = 100_000  # lines
FOLLOWER_BYTES = 64 * 1024 * 1024
# of an earlier daemon's log files: per source at most, and in all at once (a fleet's
# first `corral logs` reads each file's share, the loop not held for long)
READ_BACK_BYTES = 256 * 1024
READ_BACK_TOTAL = 8 * 1024 * 1024


DEFAULT_ROTATION = Rotation()


class LogDirError(Exception):
    """The log directory cannot be used; the message names it and what to do."""


def _earlier_files(directory: Path) -> dict[str, tuple[Path, int]]:
    """The log files an earlier daemon wrote in `directory`, with their sizes now."""
    found: dict[str, tuple[Path, int]] = {}
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for e in entries:
            source = e.name.removesuffix(".log")
            if (e.name.endswith(".log") and NAME_RE.fullmatch(source)
                    and log_file_name(source) == e.name and e.is_file()):
                size = e.stat().st_size
                if size:
                    found[source] = (Path(e.path), size)
    return found


def prepare_log_dir(directory: Path) -> None:
    """The log directory exists and this process may create files in it: tried for real
    (by opening the daemon's own log file), so a read-only file system stops root too."""
    uid = os.geteuid()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LogDirError(
            f"log directory {directory} cannot be created ({exc.strerror}): create it "
            f"writable by uid {uid}, or set [supervisor] log_dir to a directory uid {uid} "
            "may write") from None
    try:
        os.close(open_file(directory / log_file_name(DAEMON_SOURCE),
                           os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
    except OSError as exc:
        why = ("on a read-only file system" if exc.errno == errno.EROFS
               else exc.strerror)
        raise LogDirError(
            f"log directory {directory} is not writable ({why}): make it writable by uid "
            f"{uid}, or set [supervisor] log_dir to a writable directory") from None


def log_file_name(source: str) -> str:
    """NAME.log for a valid name; anything else (it cannot be an agent's, but a log file
    must never be a path, a hidden file or too long a name) gets a tame name and a hash."""
    if NAME_RE.fullmatch(source):
        return f"{source}.log"
    tame = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_"
                   for c in source[:32])
    digest = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"_{tame}-{digest}.log"


class Batch(msgspec.Struct, gc=False):
    """Lines that arrived together from one source. Not tracked by the cyclic collector
    (it holds no container that could make a cycle): the tails keep thousands."""

    time: float
    source: str
    replica: int
    pid: int
    stream: str
    lines: LineBlock

    @property
    def count(self) -> int:
        return self.lines.count

    def materialize(self, last: int | None = None) -> list[LogLine]:
        raws = self.lines.last(last) if last is not None else list(self.lines)
        return [
            LogLine(self.time, self.source, self.replica, self.pid, self.stream,
                    raw.decode("utf-8", "replace"))
            for raw in raws
        ]


class _Outage(msgspec.Struct):
    """A log file that could not be written: since when, why, and what it missed."""

    since: float
    why: str
    retry_at: float  # monotonic
    dropped: int = 0  # lines


class LogFollower(Follower[Batch]):
    """A live reader of the hub, counted in lines."""

    def __init__(self, names: set[str] | None) -> None:
        super().__init__(FOLLOWER_QUEUE, weigh=lambda batch: batch.count,
                         size=lambda batch: len(batch.lines.block), max_bytes=FOLLOWER_BYTES)
        self.names = names

    def wants(self, source: str) -> bool:
        return self.names is None or source in self.names


class _Tail(msgspec.Struct):
    """The last `limit` lines of one source, kept as batches, and never more than
    `max_bytes` of them (a thousand 16 MiB lines would otherwise be kept)."""

    limit: int
    max_bytes: int
    batches: deque[Batch] = msgspec.field(default_factory=deque)
    lines: int = 0
    bytes: int = 0

    def add(self, batch: Batch) -> None:
        if len(batch.lines.block) > self.max_bytes:
            batch.lines = _last_bytes(batch.lines.block, self.max_bytes)
        self.batches.append(batch)
        self.lines += batch.count
        self.bytes += len(batch.lines.block)
        while self.batches and (self.lines - self.batches[0].count >= self.limit
                                or self.bytes > self.max_bytes):
            old = self.batches.popleft()
            self.lines -= old.count
            self.bytes -= len(old.lines.block)

    def last(self, n: int) -> list[LogLine]:
        out: list[LogLine] = []
        for batch in reversed(self.batches):
            need = n - len(out)
            if need <= 0:
                break
            out[:0] = batch.materialize(min(need, batch.count))
        return out


def _last_bytes(block: bytes, n: int) -> LineBlock:
    """The last whole lines of `block` that fit in `n` bytes (else the last one's end)."""
    cut = block[-n:]
    nl = cut.find(b"\n")
    if 0 <= nl < len(cut) - 1:
        cut = cut[nl + 1:]
    return LineBlock(cut, cut.count(b"\n") + 1)


class LogHub:
    def __init__(
        self,
        log_dir: Path | None,
        *,
        rotation: Rotation = DEFAULT_ROTATION,
        tail_lines: int = 1000,
        tail_bytes: int = 4 * 1024 * 1024,
        raw: bool = False,
        echo: Callable[[str, int], None] | None = None,
    ) -> None:
        self.raw = raw
        self.log_dir = log_dir
        self.rotation = rotation  # [supervisor]'s, a source's unless its own says
        self.tail_lines = tail_lines
        self.tail_bytes = tail_bytes
        self.tails: dict[str, _Tail] = {}
        self.files: dict[str, RotatingFile | StreamFile] = {}
        # the last line's tag, by what it is of: a millisecond's lines share it, made once
        self._tag: tuple[tuple[int, str, int, int, str], bytes] = ((0, "", 0, 0, ""), b"")
        self.broken: dict[str, _Outage] = {}  # by file source: files that cannot be written
        # one throttle per file: a file that fails again is not told every time
        self.file_errors: dict[str, Throttle] = {}
        self.followers: set[LogFollower] = set()
        self.lines_written = 0
        self.lines_dropped = 0  # lines that reached corral but not their log file
        self.echo = echo  # where the daemon's own lines go too (stderr)
        # where a source's file is when not LOG_DIR/NAME.log, asked when the file is opened
        self.locate: Callable[[str], LogPlace | None] | None = None
        # by source: a log file an earlier daemon wrote, and its size before this one
        # wrote to it; read back into the source's tail when it is first asked for
        self.unread: dict[str, tuple[Path, int]] = {}
        if log_dir is not None:
            prepare_log_dir(log_dir)
            if not raw:
                self.unread = _earlier_files(log_dir)

    def path_of(self, source: str) -> str:
        return self.place_of(source).path

    def place_of(self, source: str) -> LogPlace:
        assert self.log_dir is not None
        where = self.locate(source) if self.locate is not None else None
        # joined as a str: a Path would intern the file's name (LogPlace)
        return where or LogPlace(os.path.join(self.log_dir, log_file_name(source)),
                                 self.rotation)

    def reopen(self, source: str) -> None:
        """The source's file closed, opened again (where `locate` says) at its next line."""
        f = self.files.pop(source, None)
        if f is not None:
            f.close()

    def rotate(self, sources: Iterable[str]) -> list[str]:
        """`corral logs --rotate`: the files rotated (OSError: one that cannot be moved)."""
        done: list[str] = []
        if self.log_dir is None:
            return done
        for source in sources:
            f = self.files.get(source)
            if f is None:
                place = self.place_of(source)
                if not os.path.exists(place.path):
                    continue
                f = self.files[source] = open_place(place)
            if isinstance(f, RotatingFile):
                f.rotate()
                done.append(f.path)
        return done

    def forget(self, source: str) -> None:
        """A source gone for good: its lines in memory are dropped and its file rotated
        aside, so whoever takes the name next (another tenant's agent) is shown none."""
        self.tails.pop(source, None)
        self.unread.pop(source, None)
        self.broken.pop(source, None)
        f = self.files.pop(source, None)
        if f is None and self.log_dir is not None and os.path.exists(self.path_of(source)):
            with contextlib.suppress(OSError):
                f = open_place(self.place_of(source))
        if f is not None:
            with contextlib.suppress(OSError):  # a file that cannot be moved: as it is
                f.rotate()
            f.close()

    def _write(self, batch: Batch, source: str, *parts: bytes) -> None:
        """Append the batch's tagged lines to the source's file (or drop them, counted)."""
        count = batch.count
        broken = self.broken.get(source)
        if broken is not None and time.monotonic() < broken.retry_at:
            broken.dropped += count
            self.lines_dropped += count
            return
        f = self.files.get(source)
        try:
            if f is None:  # opened at the first line, and again after a failure
                f = open_place(self.place_of(source))
                self.files[source] = f
            if broken is not None and not (self.raw and source != DAEMON_SOURCE):
                # the gap is marked where it is, in the file itself (not in a raw one)
                f.write(self._note(source, f"{plural(broken.dropped, 'line')} dropped: "
                                           f"{broken.why}"))
            f.turn(batch.time)
            f.write(*parts)
        except OSError as exc:
            if f is not None:
                f.close()
                del self.files[source]
            self._failed(source, exc, count, broken)
            return
        if broken is not None:
            del self.broken[source]
            self.daemon(f"log file {f.path} is written again: "
                        f"{plural(broken.dropped, 'line')} "
                        f"{'was' if broken.dropped == 1 else 'were'} dropped from it since "
                        f"{iso_time(broken.since)} ({broken.why})",
                        priority=5)

    def _failed(self, source: str, exc: OSError, count: int, broken: _Outage | None) -> None:
        self.lines_dropped += count
        now = time.monotonic()
        if broken is not None:  # still failing: the next attempt waits again
            broken.dropped += count
            broken.retry_at = now + RETRY_EVERY
            return
        why = exc.strerror or str(exc)
        self.broken[source] = _Outage(time.time(), why, now + RETRY_EVERY, count)
        # told after the file is marked broken: when it is corral.log, this line is
        # dropped from it (counted), not a second failure
        throttle = self.file_errors.get(source)
        if throttle is None:
            throttle = self.file_errors[source] = Throttle(
                lambda text: self.daemon(text, priority=3))
        throttle(
            f"cannot write log file {self.path_of(source)} ({why}): its "
            f"lines are dropped (counted in `corral stats`) until it can be written again, "
            f"tried every {RETRY_EVERY:g} s: free space on its file system or make it "
            f"writable by uid {os.geteuid()}")

    def failing(self) -> dict[str, int]:
        # (no file is written, so none fails, without a log_dir)
        return {str(self.path_of(source)): b.dropped for source, b in self.broken.items()}

    @staticmethod
    def _note(source: str, text: str) -> bytes:
        return (LogLine(time.time(), source, 0, os.getpid(), "event", text).render()
                + "\n").encode()

    def emit(self, source: str, replica: int, pid: int, stream: str, lines: LineBlock,
             when: float | None = None) -> None:
        """Lines that arrived together (one read from a worker) share one timestamp."""
        if not lines.count:
            return
        batch = Batch(time.time() if when is None else when, source, replica, pid, stream,
                      lines)
        tail = self.tails.get(source)
        if tail is None:
            tail = self.tails[source] = _Tail(self.tail_lines, self.tail_bytes)
        if self.log_dir is not None:
            if self.raw and stream in ("stderr", "stdout"):  # (stdout: a plain program's)
                self._write(batch, source, lines.block, b"\n")
            else:
                head = self._tag_of(batch)
                # one C pass tags every line: no per-line objects
                self._write(batch, DAEMON_SOURCE if self.raw else source,
                            head, lines.block.replace(b"\n", b"\n" + head), b"\n")
        tail.add(batch)
        self.lines_written += lines.count
        for follower in self.followers:
            if follower.wants(source):
                follower.push(batch)

    def _tag_of(self, b: Batch) -> bytes:
        key = (round(b.time * 1e6) // 1000, b.source, b.replica, b.pid, b.stream)  # (as iso_time)
        if self._tag[0] != key:
            self._tag = (key, LogLine(b.time, b.source, b.replica, b.pid, b.stream, "")
                         .render().encode())
        return self._tag[1]

    def place_by(self, locate: Callable[[str], LogPlace | None]) -> None:
        self.locate = locate

    def daemon(self, text: str, stream: str = "event", priority: int = 6,
               echoed: bool = True) -> None:
        """A line of the daemon's own (syslog `priority`): into corral.log and, `echoed`,
        to `echo`."""
        text = one_line(text)
        self.emit(DAEMON_SOURCE, 0, os.getpid(), stream,
                  LineBlock(text.encode("utf-8", "replace"), 1))  # (one_line's already)
        if self.echo is not None and echoed:
            self.echo(text, 5 if stream == "audit" and priority == 6 else priority)

    def tail(self, names: Iterable[str] | None, n: int, since: float | None) -> list[LogLine]:
        if n <= 0:
            return []
        unread = list(self.unread) if not names else [s for s in names if s in self.unread]
        for s in unread:
            self._read_back(s, min(READ_BACK_BYTES, READ_BACK_TOTAL // len(unread)))
        sources = list(self.tails) if not names else [s for s in names if s in self.tails]
        merged = [ln for s in sources for ln in self.tails[s].last(n)]
        merged.sort(key=lambda ln: ln.time)
        if since is not None:
            merged = [ln for ln in merged if ln.time >= since]
        return merged[-n:]

    def _read_back(self, source: str, budget: int) -> None:
        """Once: the end (`budget` bytes) of the file an earlier daemon left, before ours."""
        path, end = self.unread.pop(source)
        earlier = _Tail(self.tail_lines, self.tail_bytes)
        for when, replica, pid, stream, lines in read_back(path, end, budget):
            earlier.add(Batch(when, source, replica, pid, stream, lines))
        now = self.tails.get(source)
        for batch in now.batches if now is not None else ():
            earlier.add(batch)
        if earlier.batches:
            self.tails[source] = earlier

    def follow(self, names: Iterable[str] | None) -> LogFollower:
        f = LogFollower(set(names) if names else None)
        self.followers.add(f)
        return f

    def unfollow(self, f: LogFollower) -> None:
        self.followers.discard(f)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


class LoggedWarnings(logging.Handler):
    """The daemon's parts' own warnings (Python's logging, `corral.*`, WARNING and up) into
    corral.log too (`corral logs corral`), not on stderr alone: stderr has them already
    (the root logger's handler), so they are not echoed again. A record of another
    thread is written on the event loop's."""

    def __init__(self, hub: LogHub) -> None:
        """Made on the event loop's thread."""
        super().__init__(logging.WARNING)
        self.hub, self.loop = hub, asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.writing = False  # a warning of the write itself is not written again

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, STREAMED, False):
            return  # (its line is in corral.log already, from the stream)
        try:
            text = f"{record.levelname} {record.name}: {record.getMessage()}"
        except Exception:  # (a record whose arguments do not format: logging's own rule)
            self.handleError(record)
            return
        priority = 3 if record.levelno >= logging.ERROR else 4
        if threading.get_ident() == self.loop_thread:
            self._write(text, priority)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._write, text, priority)

    def _write(self, text: str, priority: int) -> None:
        if self.writing:
            return
        self.writing = True
        try:
            self.hub.daemon(text, priority=priority, echoed=False)
        finally:
            self.writing = False
