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

import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..jsonrpc import LineBlock
from ..methods import LogLine
from ..supervisor.follow import Follower

DAEMON_SOURCE = "corral"
FOLLOWER_QUEUE = 100_000  # lines


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
        super().__init__(maxlen, weigh=lambda batch: batch.count)
        self.names = names

    def wants(self, source: str) -> bool:
        return self.names is None or source in self.names


class _Tail:
    """The last `limit` lines of one source, kept as batches."""

    __slots__ = ("batches", "limit", "lines")

    def __init__(self, limit: int) -> None:
        self.batches: deque[Batch] = deque()
        self.lines = 0
        self.limit = limit

    def add(self, batch: Batch) -> None:
        self.batches.append(batch)
        self.lines += batch.count
        while self.batches and self.lines - self.batches[0].count >= self.limit:
            self.lines -= self.batches.popleft().count

    def last(self, n: int) -> list[LogLine]:
        out: list[LogLine] = []
        for batch in reversed(self.batches):
            need = n - len(out)
            if need <= 0:
                break
            out[:0] = batch.materialize(min(need, batch.count))
        return out


class LogHub:
    def __init__(
        self,
        log_dir: Path | None,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
        tail_lines: int = 1000,
        raw: bool = False,
    ) -> None:
        self.raw = raw
        self.log_dir = log_dir
        self.max_bytes = max_bytes
        self.backups = backups
        self.tail_lines = tail_lines
        self.tails: dict[str, _Tail] = {}
        self.files: dict[str, RotatingFile] = {}
        self.followers: set[LogFollower] = set()
        self.lines_written = 0
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def _file(self, source: str) -> RotatingFile | None:
        if self.log_dir is None:
            return None
        f = self.files.get(source)
        if f is None:
            f = self.files[source] = RotatingFile(
                self.log_dir / f"{source}.log", self.max_bytes, self.backups
            )
        return f

    def emit(self, source: str, replica: int, pid: int, stream: str, lines: LineBlock,
             when: float | None = None) -> None:
        """Lines that arrived together (one read from a worker) share one timestamp."""
        if not lines.count:
            return
        batch = Batch(time.time() if when is None else when, source, replica, pid, stream,
                      lines)
        tail = self.tails.get(source)
        if tail is None:
            tail = self.tails[source] = _Tail(self.tail_lines)
        tail.add(batch)
        if self.raw and stream == "stderr":
            f = self._file(source)
            if f is not None:
                f.write(lines.block, b"\n")
        else:
            f = self._file(DAEMON_SOURCE if self.raw else source)
            if f is not None:
                head = LogLine(batch.time, source, replica, pid, stream, "").render().encode()
                # one C pass tags every line: no per-line objects
                f.write(head, lines.block.replace(b"\n", b"\n" + head), b"\n")
        self.lines_written += lines.count
        for follower in self.followers:
            if follower.wants(source):
                follower.push(batch)

    def daemon(self, text: str, stream: str = "event") -> None:
        self.emit(DAEMON_SOURCE, 0, os.getpid(), stream, LineBlock.one(text))

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
