"""Log aggregation: every worker's stderr and the daemon's events, in one place.

Each line is tagged with time, source (agent or "corral"), replica, pid and stream; it goes
to a bounded in-memory tail per source, to a size-rotated file per source in the log
directory, and to live followers.

The hot path is per read, not per line: the lines of one read from a worker share one tag
and one timestamp, are written to the file with one `join` and one write(2), and are kept
as raw bytes in a `Batch`; they become `LogLine`s (decoded text) only when someone reads
them. Files are written unbuffered, so a line that reached corral is in the file even if
corral dies next. Followers never slow workers down: each has a bounded queue, and what
overflows it is counted and reported to the follower as missed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..jsonrpc import LineBlock
from ..methods import LogLine
from ..supervisor.follow import Follower
from ..supervisor.names import NAME_RE
from ..throttle import Throttle

log = logging.getLogger("corral.logs")

DAEMON_SOURCE = "corral"
FOLLOWER_QUEUE = 100_000  # lines
FOLLOWER_BYTES = 64 * 1024 * 1024


def log_file_name(source: str) -> str:
    """NAME.log for a valid name; anything else (it cannot be an agent's, but a log file
    must never be a path, a hidden file or too long a name) gets a tame name and a hash."""
    if NAME_RE.fullmatch(source):
        return f"{source}.log"
    tame = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_"
                   for c in source[:32])
    digest = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"_{tame}-{digest}.log"


@dataclass(slots=True)
class Batch:
    """Lines that arrived together from one source."""

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


class RotatingFile:
    """An append-only file rotated by size to NAME.log.1 .. NAME.log.N."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.size = os.fstat(self._fd).st_size

    def write(self, *parts: bytes) -> None:
        """Append the parts with one writev(2): no copy to join them first."""
        total = sum(len(p) for p in parts)
        n = os.writev(self._fd, parts)
        if n < total:  # a short write (a full disk, a signal): finish it piece by piece
            rest = memoryview(b"".join(parts))[n:]
            while rest:
                rest = rest[os.write(self._fd, rest):]
        self.size += total
        if self.size >= self.max_bytes:
            self.rotate()

    def rotate(self) -> None:
        os.close(self._fd)
        if self.backups:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    src.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LogFollower(Follower[Batch]):
    """A live reader of the hub, counted in lines."""

    def __init__(self, names: set[str] | None, maxlen: int = FOLLOWER_QUEUE) -> None:
        super().__init__(maxlen, weigh=lambda batch: batch.count,
                         size=lambda batch: len(batch.lines.block), max_bytes=FOLLOWER_BYTES)
        self.names = names

    def wants(self, source: str) -> bool:
        return self.names is None or source in self.names


class _Tail:
    """The last `limit` lines of one source, kept as batches, and never more than
    `max_bytes` of them (a thousand 16 MiB lines would otherwise be kept)."""

    __slots__ = ("batches", "bytes", "limit", "lines", "max_bytes")

    def __init__(self, limit: int, max_bytes: int) -> None:
        self.batches: deque[Batch] = deque()
        self.lines = 0
        self.bytes = 0
        self.limit = limit
        self.max_bytes = max_bytes

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
    """The last whole lines of `block` that fit in `n` bytes; the end of the last line
    when not even that one fits."""
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
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
        tail_lines: int = 1000,
        tail_bytes: int = 4 * 1024 * 1024,
        raw: bool = False,
    ) -> None:
        self.raw = raw
        self.log_dir = log_dir
        self.max_bytes = max_bytes
        self.backups = backups
        self.tail_lines = tail_lines
        self.tail_bytes = tail_bytes
        # a log file that cannot be written (disk full, permissions) must not stop the
        # rest: the lines still reach the tail and followers, and the failure is told
        # (to stderr: corral.log may be the file that fails) once per interval
        self.file_errors = Throttle(lambda text: log.error("%s", text))
        self.tails: dict[str, _Tail] = {}
        self.files: dict[str, RotatingFile] = {}
        self.followers: set[LogFollower] = set()
        self.lines_written = 0
        self.echo: Callable[[str, int], None] | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def _file(self, source: str) -> RotatingFile | None:
        if self.log_dir is None:
            return None
        f = self.files.get(source)
        if f is None:
            path = self.log_dir / log_file_name(source)
            try:
                f = self.files[source] = RotatingFile(path, self.max_bytes, self.backups)
            except OSError as exc:
                self.file_errors(f"cannot open log file {path}: {exc.strerror}")
                return None
        return f

    def _write(self, source: str, *parts: bytes) -> None:
        f = self._file(source)
        if f is None:
            return
        try:
            f.write(*parts)
        except OSError as exc:
            self.file_errors(f"cannot write log file {f.path}: {exc.strerror}")
            f.close()
            del self.files[source]  # opened again for the next lines

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
        if self.raw and stream == "stderr":
            self._write(source, lines.block, b"\n")
        elif self.log_dir is not None:
            head = LogLine(batch.time, source, replica, pid, stream, "").render().encode()
            # one C pass tags every line: no per-line objects
            self._write(DAEMON_SOURCE if self.raw else source,
                        head, lines.block.replace(b"\n", b"\n" + head), b"\n")
        tail.add(batch)
        self.lines_written += lines.count
        for follower in self.followers:
            if follower.wants(source):
                follower.push(batch)

    def daemon(self, text: str, stream: str = "event", priority: int = 6) -> None:
        """A line of the daemon's own (syslog `priority`: 6 info, 5 notice, 4 warning):
        into corral.log, and to `echo` (stderr, hence the journal under systemd)."""
        self.emit(DAEMON_SOURCE, 0, os.getpid(), stream, LineBlock.one(text))
        if self.echo is not None:
            self.echo(text, 5 if stream == "audit" and priority == 6 else priority)

    def tail(self, names: Iterable[str] | None, n: int, since: float | None) -> list[LogLine]:
        if n <= 0:
            return []
        sources = list(self.tails) if not names else [s for s in names if s in self.tails]
        merged: list[LogLine] = []
        for s in sources:
            merged.extend(self.tails[s].last(n))
        merged.sort(key=lambda ln: ln.time)
        if since is not None:
            merged = [ln for ln in merged if ln.time >= since]
        return merged[-n:]

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
