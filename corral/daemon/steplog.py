"""The step log: with `journal_sync = "normal"` a journaled step is one write()
(docs/durable.md#storage-bounds): a record in the page cache survives any kill of the
daemon, so the step is answered then; the records go into the database later in batches
(steps.py), each batch's log file removed once its rows commit. At start-up, a record cut
short is the last one's, whose write() never returned: never answered, it is dropped with
what follows it.

A record: its payload's length and CRC-32 (two little-endian u32), then the step as
msgpack [task_id, seq, name, attempt, args, body].
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ..statefiles import make_dir, open_file
from ..supervisor.tasks.stepjournal import Step

LOG_DIR = "step-log"
HEAD = struct.Struct("<II")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[str, int, str, int, bytes, bytes | None]).decode


def log_dir(db_path: Path) -> Path:
    return db_path.parent / LOG_DIR


class StepLog:
    """The current log file of a StepsDB: records appended, one write() each."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._next = time.time_ns()  # file names sort in the order they were begun
        self._fd = -1
        self.path: str | None = None
        self.size = 0

    def append(self, step: Step) -> bool:
        """Write the step's record; False if it could not be (nothing of it is left in
        the file: the caller journals it another way)."""
        body = _encode(step)  # (a NamedTuple: msgpack's array of its fields, in order)
        record = HEAD.pack(len(body), zlib.crc32(body)) + body
        try:
            if self._fd < 0:
                self._open()
            written = os.write(self._fd, record)
        except OSError:
            return False
        if written != len(record):  # (a full disk): cut back to the last whole record
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            return False
        self.size += written
        return True

    def _open(self) -> None:
        make_dir(self.dir)
        self._next += 1
        # a str, not a Path: pathlib interns each part of a path it parses, and a new
        # name each batch churns the interpreter's table of interned strings, which that
        # churn doubles (and where interned strings are immortal, keeps each for good)
        path = os.path.join(self.dir, f"{self._next:020d}.log")
        self._fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.path, self.size = path, 0

    def rotate(self) -> str | None:
        """Close the current file (its records are a batch now); the next record begins
        another. The closed file's path, or None if none was open."""
        path = self.path
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self.path, self.size = -1, None, 0
        return path


def leftovers(directory: Path) -> list[Path]:
    """The log files a daemon left, in the order they were written."""
    try:
        return sorted(directory.glob("*.log"))
    except OSError:
        return []


def records(path: Path) -> Iterator[Step]:
    """The whole records of a log file, up to the first one cut short or damaged."""
    data = path.read_bytes()
    at = 0
    while at + HEAD.size <= len(data):
        size, crc = HEAD.unpack_from(data, at)
        body = data[at + HEAD.size:at + HEAD.size + size]
        if len(body) != size or zlib.crc32(body) != crc:
            return
        try:
            task_id, seq, name, attempt, args, result = _decode(body)
        except msgspec.DecodeError:
            return
        yield Step(task_id, seq, name, attempt, args, result)
        at += HEAD.size + size
