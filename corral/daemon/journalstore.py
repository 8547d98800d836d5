"""One journal's place in the state database: a reader connection of its own and a
GroupCommit on the daemon's one writer thread (the step, session and output journals
each hold one). The journal's first failed write of an outage is told once, in words
naming what it holds and what waits because of it; closing writes what is pending."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

from .storeschema import StoreError, connect
from .storewriter import GroupCommit, WriterThread

V = TypeVar("V")


class JournalWords(NamedTuple):
    """How a journal's failures read: `what` it holds ("steps"), and what `waits` while it
    cannot be written (its waiters see a StoreError)."""

    what: str
    waits: str


class JournalStore(Generic[V]):
    """A journal's reader (under `read_lock`) and its writes (`group`)."""

    def __init__(self, path: Path, writer: WriterThread,
                 job: Callable[[sqlite3.Connection, list[V]], None], words: JournalWords,
                 *, size: Callable[[V], int] | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._words = words
        self._on_error = on_error
        self.reader = connect(path)
        self.read_lock = threading.Lock()
        self.group: GroupCommit[V] = GroupCommit(
            writer, job, self._settled, size=size, error_type=StoreError,
            explain=lambda error: f"{words.what} cannot be written to {path} ({error})")

    def _settled(self, batch: list[V], error: str | None) -> None:
        if error is None:  # written: an outage, if there was one, is over
            self.group.outage.recovered()
        elif self.group.first_failure and self._on_error is not None:
            self._on_error(f"{self._words.what} cannot be written to {self.path} "
                           f"({error}): {self._words.waits}")

    async def close(self) -> None:
        """Write what is pending (the writer thread closes after), then close."""
        with contextlib.suppress(StoreError):
            await self.group.committed()
        self.group.cancel_retry()
        self.reader.close()
