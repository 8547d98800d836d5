"""Log aggregation: every worker's stderr and the daemon's events, in one place.

Each line is tagged with time, source (agent or "corral"), replica, pid and stream; it goes
to a bounded in-memory tail per source, to a size-rotated file per source in the log
directory, and to live followers. Files are written unbuffered, one write per chunk read
from a worker, so a line that reached corral is in the file even if corral dies next.
Followers never slow workers down: each has a bounded queue, and what overflows it is
counted and reported to the follower as missed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from ..methods import LogLine

DAEMON_SOURCE = "corral"
FOLLOWER_QUEUE = 10_000


def format_line(line: LogLine) -> str:
    return line.render()


class RotatingFile:
    """An append-only file rotated by size to NAME.log.1 .. NAME.log.N."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(data)
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


class Follower:
    """A live reader of the hub: a bounded queue and a count of what overflowed it."""

    def __init__(self, names: set[str] | None, maxlen: int = FOLLOWER_QUEUE) -> None:
        self.names = names
        self.maxlen = maxlen
        self.queue: deque[LogLine] = deque()
        self.missed = 0
        self.wakeup = asyncio.Event()

    def wants(self, source: str) -> bool:
        return self.names is None or source in self.names

    def push(self, line: LogLine) -> None:
        if len(self.queue) >= self.maxlen:
            self.missed += 1
        else:
            self.queue.append(line)
        self.wakeup.set()


class LogHub:
    def __init__(
        self,
        log_dir: Path | None,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
        tail_lines: int = 1000,
    ) -> None:
        self.log_dir = log_dir
        self.max_bytes = max_bytes
        self.backups = backups
        self.tail_lines = tail_lines
        self.tails: dict[str, deque[LogLine]] = {}
        self.files: dict[str, RotatingFile] = {}
        self.followers: set[Follower] = set()
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

    def emit(self, source: str, replica: int, pid: int, stream: str, texts: Iterable[str],
             when: float | None = None) -> None:
        """Lines that arrived together (one read from a worker) share one timestamp."""
        t = time.time() if when is None else when
        lines = [LogLine(t, source, replica, pid, stream, text) for text in texts]
        if not lines:
            return
        tail = self.tails.get(source)
        if tail is None:
            tail = self.tails[source] = deque(maxlen=self.tail_lines)
        tail.extend(lines)
        f = self._file(source)
        if f is not None:
            head = format_line(lines[0])
            prefix = head[: len(head) - len(lines[0].text)]
            f.write("".join(f"{prefix}{ln.text}\n" for ln in lines).encode("utf-8", "replace"))
        self.lines_written += len(lines)
        for follower in self.followers:
            if follower.wants(source):
                for ln in lines:
                    follower.push(ln)

    def daemon(self, text: str, stream: str = "event") -> None:
        self.emit(DAEMON_SOURCE, 0, os.getpid(), stream, [text])

    def tail(self, names: Iterable[str] | None, n: int, since: float | None) -> list[LogLine]:
        sources = list(self.tails) if not names else [s for s in names if s in self.tails]
        merged: list[LogLine] = []
        for s in sources:
            merged.extend(self.tails[s])
        merged.sort(key=lambda ln: ln.time)
        if since is not None:
            merged = [ln for ln in merged if ln.time >= since]
        return merged[-n:] if n > 0 else []

    def follow(self, names: Iterable[str] | None) -> Follower:
        f = Follower(set(names) if names else None)
        self.followers.add(f)
        return f

    def unfollow(self, f: Follower) -> None:
        self.followers.discard(f)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()
