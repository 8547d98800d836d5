"""WAL checkpoints off the commit path.

SQLite checkpoints inside the commit that takes the WAL past 1000 pages, and whatever
waits on that commit (a task's acknowledgement) waits for the disk. So the writer never
checkpoints: this thread, on its own connection, makes a PASSIVE checkpoint (it holds up
no writer or reader) after a commit, at most every MIN_GAP seconds.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .storeschema import StoreConnection

log = logging.getLogger("corral.store")

MIN_GAP = 0.25  # seconds between two checkpoints, however often the writer commits


class Checkpointer:
    def __init__(self, db: StoreConnection, path: Path) -> None:
        """`db`: a connection of its own (store.connect), used only by this thread."""
        self.path = path
        self._db = db
        self._wrote = threading.Event()  # something was committed since the last one
        self._closing = threading.Event()
        self.tries = 0  # checkpoints begun
        self.checkpoints = 0  # and completed
        self.last: tuple[int, int] = (0, 0)  # (frames in the WAL, frames copied) then
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="corral-checkpoint",
                                        daemon=True)
        self._thread.start()

    def wrote(self) -> None:
        if not self._wrote.is_set():
            self._wrote.set()

    def _run(self) -> None:
        while True:
            self._wrote.wait()
            if self._closing.is_set():
                return
            self._wrote.clear()
            self._checkpoint()
            if self._closing.wait(MIN_GAP):
                return

    def _checkpoint(self) -> None:
        self.tries += 1
        try:
            ((_busy, frames, copied),) = self._db.rows("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            if not self._failing:
                self._failing = True
                log.warning("state database %s: a WAL checkpoint failed (%s); the WAL "
                            "keeps what was written, and the next write tries again",
                            self.path, exc)
            return
        if self._failing:
            self._failing = False
            log.warning("state database %s: WAL checkpoints work again", self.path)
        self.last = (frames, copied)
        self.checkpoints += 1

    def close(self) -> None:
        """Blocking (call it off the loop): after the checkpoint in progress, if any."""
        self._closing.set()
        self._wrote.set()
        self._thread.join()
        self._db.close()
