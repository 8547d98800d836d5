"""The state database's commit path: its one writer thread (`WriterThread`), the group
commit that batches writes on the loop for it (`GroupCommit`, shared with the task
journal), the outage a failing write begins (`Outage`), and `StoreWriter`, which keeps the
writes that must never hold up their cause (process records, checkpoints, audit rows)
while the database cannot be written."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import resource
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable
from operator import attrgetter
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from ..supervisor.stream import Stream
from ..text import iso_time, plural
from . import storeschema
from .checkpointer import Checkpointer
from .sqlwrites import Write as Write
from .storeschema import StoreError, connect

log = logging.getLogger("corral.store")

RETRY_EVERY = 1.0  # seconds between attempts while the database cannot be written
# WriterThread.run_on_loop: a batch this small may be committed on the loop; a job there that
# took longer than HERE_SLOW and waited meanwhile (a slow disk, not a busy host's
# preemption) sends the next ones to the thread for HERE_PAUSE seconds
HERE_MAX = 16
HERE_BYTES = 64 * 1024  # and a batch this large in all (a task's output, a checkpoint)
HERE_SLOW = 0.02
HERE_PAUSE = 10.0
# and a loop asked for more than HERE_BUSY commits in a HERE_WINDOW is busy: the batches of
# a GroupCommit that `yields` are then the thread's, which makes each beside the loop's next
# batch on another core (a lone caller's few commits stay on the loop, where no hand-over
# can delay them)
HERE_BUSY = 4
HERE_WINDOW = 0.02
# the WAL file's size kept after the writer starts it again from its beginning: a burst's
# high-water (10,000 tasks suspended at once left 180 MB) is given back
WAL_KEPT_BYTES = 16 * 1024 * 1024
# WriterThread: jobs inside its transaction queued together share one commit, this many at
# most (one fsync for them with journal_sync "full")
SHARED_MOST = 256
# a write nobody waits for (an audit row) waits this long for others to join its batch:
# one transaction for many calls' rows; `committed()` and every other write take it along
LINGER = 0.05
MAX_HELD = 10_000  # StoreWriter's writes kept in memory while it cannot write; then dropped
# SQLite's primary result codes of a write that may work when tried again: a full disk, an
# I/O error (EFBIG past a file size limit is one), a read-only file (a remount), a lock
TRANSIENT = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR,
                       sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
                       sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_PROTOCOL})


def _slept() -> int:
    """The calling thread's voluntary context switches so far: it waited for something
    (a disk, a lock), as opposed to being preempted."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


def transient(exc: BaseException) -> bool:
    """Whether a write that raised `exc` may work when tried again, rather than being
    wrong (a constraint, a missing table). An error SQLite itself did not raise has no
    result code: trying it again would fail the same way, so it is wrong, never an outage."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in TRANSIENT


def described(exc: BaseException) -> str:
    """SQLite's message as it is; any other exception with its type (it is a bug)."""
    return str(exc) if isinstance(exc, sqlite3.Error) else f"{type(exc).__name__}: {exc}"


def what_to_do() -> str:
    return (f"free space on its file system, or make it and its directory writable by uid "
            f"{os.geteuid()}")


class InTransaction(NamedTuple):
    """A job that runs inside the writer thread's transaction (its BEGIN and COMMIT are
    the thread's), so that the jobs of its kind queued beside it share one commit."""

    write: Write


Job = Write | InTransaction
Done = Callable[[str | None], None] | None


class Outage:
    """A writer's failure to write, from the first failed attempt until one works: told
    once (`failed()` is True for the first), retried every RETRY_EVERY seconds."""

    __slots__ = ("error", "retry_at", "since")

    def __init__(self) -> None:
        self.since: float | None = None  # wall time of the first failure
        self.retry_at = 0.0  # loop time of the next attempt
        self.error = ""  # the first failure's reason

    @property
    def failing(self) -> bool:
        return self.since is not None

    def failed(self, loop: asyncio.AbstractEventLoop, error: str) -> bool:
        self.retry_at = loop.time() + RETRY_EVERY
        if self.since is not None:
            return False
        self.since, self.error = time.time(), error
        return True

    def recovered(self) -> float | None:
        since, self.since = self.since, None
        return since


class WriterThread:
    """The state database's one writer: a thread with its own connection that runs jobs
    (functions of the connection) in order, so SQLite never holds the loop up and two
    writers never contend for the write lock; `done(error)` is called on the loop. The WAL
    is checkpointed by a Checkpointer thread beside it, never by its commits.

    Jobs `InTransaction` queued one after another when the thread takes the first are
    one transaction (group commit: with sync "full", the commits that came while one was
    flushed share the next flush); where it fails, each is run again alone, so each is
    told its own outcome, as alone (decision 1610).

    `run_on_loop(job)` runs a small job on the loop, on the same connection, only when that
    cannot hold the loop up or reorder jobs: nothing queued or running, sync "normal", the
    last such job quick, and a lock held elsewhere makes it give way. It saves the two
    hand-overs a busy host can each delay by a scheduler tick (bench/RESULTS.md). A job
    that `yields` is not run there while the loop is busy with commits (HERE_BUSY): the
    thread's SQLite work then runs beside the loop (decision 2055)."""

    def __init__(self, path: Path, *, sync: str = "normal") -> None:
        self.path = path
        self._loop = asyncio.get_running_loop()
        self._db = connect(path, sync=sync)
        try:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
            self.checkpointer = Checkpointer(connect(path, sync=sync), path)
        except sqlite3.Error:
            self._db.close()
            raise
        self.sync = sync
        self._jobs: queue.SimpleQueue[tuple[Job, Done] | None] = queue.SimpleQueue()
        # jobs given to the thread and not yet finished: the loop runs one itself only at
        # 0, so the connection is never used by two threads and jobs keep their order
        self._unfinished = 0
        self._count_lock = threading.Lock()
        self._here_until = 0.0  # after a slow job on the loop: none there before this
        # the loop's asks to commit counted in windows of HERE_WINDOW: this one's end, its
        # count so far, and whether the last window's made the loop busy
        self._window_ends = 0.0
        self._asked = 0
        self._busy = False
        # the connection's busy timeout is 0 while the loop runs jobs on it (it must never
        # wait for a lock there) and the thread's own otherwise; it is set back only when
        # the other side runs next, not twice a job
        self._waits = True
        self._closing = False
        self.here = 0  # jobs run on the loop (tests read these)
        self.handed = 0  # and by the thread
        self._thread = threading.Thread(target=self._run, name="corral-store", daemon=True)
        self._thread.start()

    def _busy_at(self, now: float) -> bool:
        """Whether the loop is busy with commits: more than HERE_BUSY asked of it in this
        window or in the last (an ask that then goes to the thread counts once)."""
        if now >= self._window_ends:
            # (a window with no ask between it and this one: not busy)
            self._busy = (self._asked > HERE_BUSY
                          and now < self._window_ends + HERE_WINDOW)
            self._window_ends, self._asked = now + HERE_WINDOW, 0
        return self._busy or self._asked >= HERE_BUSY

    def run(self, job: Job, done: Done = None) -> None:
        """(On the loop: its asks are counted.)"""
        self._asked += 1
        with self._count_lock:
            self._unfinished += 1
        self.handed += 1
        self._jobs.put((job, done))

    def run_on_loop(self, job: Job, *, yields: bool = False) -> tuple[bool, str | None]:
        """(True, its error or None), or (False, None) when it was not run and should be
        given to `run`."""
        if self.sync != "normal" or self._closing:
            return False, None
        now = time.monotonic()
        if (self._busy_at(now) and yields) or now < self._here_until:
            return False, None
        with self._count_lock:
            if self._unfinished:
                return False, None
            self._unfinished += 1  # the thread's, until this job is done
        db = self._db
        began = time.monotonic()
        slept = _slept()
        try:
            if self._waits:
                try:
                    db.rows("PRAGMA busy_timeout = 0")
                except sqlite3.Error:
                    return False, None  # the thread tries it, and says what is wrong
                self._waits = False
            try:
                _alone(job)(db)
            except sqlite3.Error as exc:
                self._rollback(db)
                if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_BUSY,
                                                                   sqlite3.SQLITE_LOCKED):
                    return False, None  # the thread waits for the lock; the loop may not
                return True, described(exc)
            except Exception as exc:
                self._rollback(db)
                return True, self._failed(exc)
            finally:
                if time.monotonic() - began > HERE_SLOW and _slept() > slept:
                    self._here_until = time.monotonic() + HERE_PAUSE
        finally:
            with self._count_lock:
                self._unfinished -= 1
        self.here += 1
        self._asked += 1
        self.checkpointer.wrote()
        return True, None

    def _wait_for_locks(self, db: storeschema.StoreConnection) -> None:
        if self._waits:
            return
        try:
            db.rows(f"PRAGMA busy_timeout = {storeschema.BUSY_TIMEOUT_MS}")  # connect()'s
            self._waits = True
        except sqlite3.Error as exc:  # the job runs anyway; its wait for a lock is then
            # shorter than it should be, and this is tried again before the next one
            log.error("state database %s: the busy timeout could not be set again (%s)",
                      self.path, exc)

    async def commit(self, writes: Iterable[Write]) -> None:
        done: asyncio.Future[str | None] = self._loop.create_future()
        job = InTransaction(_writes(list(writes)))

        def told(error: str | None) -> None:
            if not done.cancelled():  # its waiter gone (a stop): the commit is made anyway
                done.set_result(error)

        self.run(job, told)
        error = await done
        if error is not None:
            raise StoreError(f"state database {self.path} cannot be written ({error})")

    def hand(self, writes: Iterable[Write]) -> None:
        """One transaction nobody waits for, committed before any job handed after it
        (its error is logged)."""
        self.run(InTransaction(_writes(list(writes))))

    def _run(self) -> None:
        db = self._db
        item = self._jobs.get()
        while item is not None:
            group = [item]
            item = None
            if isinstance(group[0][0], InTransaction):
                while len(group) < SHARED_MOST:
                    try:
                        item = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if item is None or not isinstance(item[0], InTransaction):
                        break  # (run after the group: the order is kept)
                    group.append(item)
                    item = None
            errors = self._together(db, group)
            with self._count_lock:
                self._unfinished -= len(group)
            if any(e is None for e in errors):
                self.checkpointer.wrote()
            told = [(done, error) for (_, done), error in zip(group, errors, strict=True)
                    if done is not None]
            if told:
                self._loop.call_soon_threadsafe(_tell, told)
            # (a comprehension: a loop's own names would hold its last job and its waiter)
            for error in [e for (_, done), e in zip(group, errors, strict=True)
                          if done is None and e is not None]:
                log.error("state database %s: %s", self.path, error)
            # while it waits for the next job the thread would hold this one, and with it
            # its batch: a wave of 10,000 suspended tasks' rows kept until the next write,
            # each among the wave's short-lived objects, each holding an allocator's arena
            del group, told, errors
            if item is None:
                item = self._jobs.get()
        # (None: closed, after the jobs given before it)

    def _together(self, db: storeschema.StoreConnection, group: list[tuple[Job, Done]]
                  ) -> list[str | None]:
        """Each job's error or None: the group in one transaction, or where that fails,
        each again alone (the thread outlives any one job: every command's record, the
        task journal and shutdown wait on it)."""
        self._wait_for_locks(db)
        if len(group) > 1:
            try:
                db.execute("BEGIN IMMEDIATE")
                for job, _ in group:
                    assert isinstance(job, InTransaction)
                    job.write(db)
                db.execute("COMMIT")
                return [None] * len(group)
            except Exception:  # told by each alone
                self._rollback(db)
        errors: list[str | None] = []
        for job, _ in group:
            try:
                _alone(job)(db)
                errors.append(None)
            except Exception as exc:
                errors.append(self._failed(exc))
                self._rollback(db)
        return errors

    def _failed(self, exc: Exception) -> str:
        if not isinstance(exc, sqlite3.Error):
            log.error("state database %s: a write failed", self.path, exc_info=exc)
        return described(exc)

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")

    async def close(self) -> None:
        """After the jobs given so far."""
        self._closing = True
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self.checkpointer.close)
        self._db.close()


V = TypeVar("V")


class GroupCommit(Generic[V]):
    """Writes gathered on the loop and committed by the writer thread, one transaction a
    batch (group commit without a timer): one flush per loop turn, the next batch gathering
    while the last is written. A write with the key of a waiting one takes its place,
    `merge`d with it. A batch that fails loses nothing: its writes wait again in front of
    the newer ones, tried every RETRY_EVERY seconds; `settled(batch, error)` is told after
    each attempt (`first_failure`: whether it began an outage, told once), and what waits
    in `committed()` resolves, or fails with `error_type`. Not `keep`: a batch that fails
    is told to its waiters and dropped (their writes were refused, as a command's are).
    `shared`: `job` runs inside the writer thread's transaction (WriterThread), so that
    batches of several GroupCommits queued together share one commit. `yields`: its small
    batches are the thread's while the loop is busy with commits (`run_on_loop`)."""

    def __init__(self, thread: WriterThread,
                 job: Callable[[sqlite3.Connection, list[V]], None],
                 settled: Callable[[list[V], str | None], None], *,
                 merge: Callable[[V, V], V] | None = None,
                 size: Callable[[V], int] | None = None,
                 error_type: Callable[[str], Exception] | None = None,
                 explain: Callable[[str], str] | None = None, keep: bool = True,
                 shared: bool = False, yields: bool = False) -> None:
        self.thread = thread
        self._yields = yields
        self._keep = keep
        self._shared = shared
        self._job = job
        self._settled = settled
        self._merge = merge
        self._size = size
        self._error_type = error_type
        self._explain = explain
        self._loop = asyncio.get_running_loop()
        self.pending: dict[Hashable, V] = {}  # in the order they came; replaced in place
        self.inflight: list[tuple[Hashable, V]] = []
        self.waiting_bytes = 0  # `size` of what is pending and in flight
        # who waits in `committed()` for the next batch, and for the one in flight (None:
        # none in flight): a future each, so that a waiter's cancellation is its own alone
        # (one shared future would need a shield a wait)
        self._pending_done: list[asyncio.Future[None]] = []
        self._inflight_done: list[asyncio.Future[None]] | None = None
        self._flush_scheduled = False
        self._lingering: asyncio.TimerHandle | None = None  # a lazy write's flush, later
        self._hot = False  # a write was begun at once this turn (put's `now`)
        self.outage = Outage()
        self.first_failure = False  # the batch just settled failed, and began the outage
        self._retry: asyncio.Handle | None = None

    def put(self, key: Hashable, value: V, *, now: bool = False, lazy: bool = False
            ) -> None:
        """Add a write to the next batch. `now`: a write someone waits on at once: when
        nothing else waits or is being written, it is the batch, begun now rather than
        at the turn's end; once a turn, so that many such writes of one turn are still
        one batch. `lazy`: a write nobody waits for (LINGER)."""
        self._put(key, value)
        if self._flush_scheduled or self._inflight_done is not None:
            return
        if lazy and not self.outage.failing:
            if self._lingering is None:
                self._lingering = self._loop.call_later(LINGER, self._flush)
            return
        if (now and not self._hot and len(self.pending) == 1
                and not self.outage.failing):
            self._hot = True
            self._loop.call_soon(self._cool)
            self._flush()
            return
        self._schedule()

    def _cool(self) -> None:
        self._hot = False

    def _put(self, key: Hashable, value: V) -> None:
        prev = self.pending.get(key)
        if prev is not None:
            if self._merge is not None:
                value = self._merge(prev, value)
            if self._size is not None:
                self.waiting_bytes -= self._size(prev)
        if self._size is not None:
            self.waiting_bytes += self._size(value)
        self.pending[key] = value

    def _schedule(self) -> None:
        self._flush_scheduled = True
        self._retry = (self._loop.call_at(self.outage.retry_at, self._flush)
                       if self.outage.failing else self._loop.call_soon(self._flush))

    def retry_now(self) -> None:
        if self.outage.failing and self._retry is not None:
            self.cancel_retry()
            self._flush_scheduled = True
            self._retry = self._loop.call_soon(self._flush)

    def cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
            self._flush_scheduled = False

    def committed(self) -> Awaitable[None]:
        """The waiter's own future (no coroutine's frame at its resume: a task's
        submission waits here once, twice when it waits for its outcome), done at once when
        nothing waits to be written."""
        if self.pending and self._lingering is not None and not self._flush_scheduled:
            self._lingering.cancel()  # someone waits for the lazy writes now
            self._lingering = None
            self._schedule()
        waiters = self._pending_done if self.pending else self._inflight_done
        waiter = self._loop.create_future()
        if waiters is not None:
            waiters.append(waiter)
        else:
            waiter.set_result(None)
        return waiter

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._retry = None
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if self._inflight_done is not None or not self.pending:
            return
        pending = self.pending
        self.inflight = items = list(pending.items())
        batch = list(pending.values())
        pending.clear()
        # (nothing is in flight: what waits is this batch alone, its size counted as put)
        size = self.waiting_bytes
        done = self._inflight_done = self._pending_done
        self._pending_done = []

        def write(db: sqlite3.Connection) -> None:
            self._job(db, batch)

        job: Job = InTransaction(write) if self._shared else write
        if len(batch) <= HERE_MAX and not self.outage.failing and size <= HERE_BYTES:
            ran, error = self.thread.run_on_loop(job, yields=self._yields)
            if ran:
                self._batch_done(done, items, batch, size, error)
                return
        self.thread.run(job, lambda error: self._batch_done(done, items, batch, size, error))

    def _batch_done(self, done: list[asyncio.Future[None]], items: list[tuple[Hashable, V]],
                    batch: list[V], size: int, error: str | None) -> None:
        self._inflight_done = None
        self.inflight = []
        self.waiting_bytes -= size
        if error is not None and self._explain is not None:
            error = self._explain(error)
        try:
            if error is not None and self._keep:
                newer, self.pending = self.pending, {}
                for key, value in items:
                    self._put(key, value)
                for key, value in newer.items():
                    if self._size is not None:
                        self.waiting_bytes -= self._size(value)
                    self._put(key, value)
                self.first_failure = self.outage.failed(self._loop, error)
            self._settled(batch, error)
        finally:  # whatever a callback did: committed() and the next batch never hang
            # (the next batch's flush first: what the callbacks wrote, an outage's audit
            # row, is begun before its waiters go on)
            if self.pending and not self._flush_scheduled:
                self._schedule()
            for waiter in done:
                if waiter.done():  # (its waiter cancelled)
                    continue
                if error is None or self._error_type is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(self._error_type(error))


class _QueuedWrite(NamedTuple):
    write: Write
    kind: str
    then: Callable[[], None] | None
    key: Hashable | None
    size: int  # bytes it writes, where they may be many (GroupCommit's `size`)


class CaughtUp(NamedTuple):
    """The state database is written again after an outage that lost writes (StateStore
    records the audit rows lost)."""

    dropped: dict[str, int]
    since: float
    reason: str


class StoreWriter:
    """Writes that are many, or must never hold up their cause (process records, state
    checkpoints, audit rows, the config file's revisions): a GroupCommit of them, in order.
    While the database cannot be written they are kept and retried, up to `max_held`, then
    dropped and counted by kind (docs/operations.md#when-the-state-database-cannot-be-written);
    a write that is wrong rather than unlucky (a constraint, a missing table) is dropped
    alone and told: each runs in a savepoint of its own."""

    def __init__(self, thread: WriterThread,
                 on_error: Callable[[str], None] | None = None,
                 on_notice: Callable[[str], None] | None = None,
                 max_held: int = MAX_HELD, stream: Stream | None = None) -> None:
        self.thread = thread
        self.stream = stream if stream is not None else Stream()  # CaughtUp goes on it
        self.on_error = on_error or (lambda msg: log.error("%s", msg))
        self.on_notice = on_notice or (lambda msg: log.warning("%s", msg))
        self.max_held = max_held
        self._group: GroupCommit[_QueuedWrite] = GroupCommit(thread, self._job, self._settle,
                                                             size=attrgetter("size"),
                                                             shared=True)
        self.outage = self._group.outage
        self._unkeyed = itertools.count()  # keys for writes that replace nothing
        self._wrong: list[str] = []  # the batch in flight's dropped writes (one at a time)
        self.dropped: dict[str, int] = {}  # by kind, since the outage began
        self.lost = 0  # writes dropped since the writer opened (`corral stats`)
        self.batches = 0  # transactions committed

    def submit(self, write: Write, kind: str = "write",
               then: Callable[[], None] | None = None, key: Hashable | None = None,
               size: int = 0, lazy: bool = False) -> bool:
        """`kind` names the write in the counts told in an outage; `then` runs on the loop
        once it is committed. A write with a `key` replaces a waiting one of the same key,
        so writes that supersede each other do not fill what an outage keeps. `size`: the
        bytes it writes (a batch of many is not committed on the loop). `lazy`: nothing
        waits for it (GroupCommit.put). False: not kept (dropped, past `max_held`)."""
        kept = _QueuedWrite(write, kind, then, key, size)
        slot: Hashable = ("keyed", key) if key is not None else next(self._unkeyed)
        if (self.outage.failing and len(self._group.pending) >= self.max_held
                and slot not in self._group.pending):
            self.drop(kind)
            return False
        self._group.put(slot, kept, lazy=lazy)
        return True

    async def committed(self) -> None:
        """Until everything submitted so far has been tried (committed, or kept again)."""
        await self._group.committed()

    async def written(self) -> None:
        """Until everything submitted so far is committed; StoreError while it cannot be.
        What a command records waits for this, so a kept write never lands after (and
        undoes) a newer record."""
        self._group.retry_now()  # the command is waiting: try now, not at the next second
        await self.committed()
        if self.outage.failing:
            raise StoreError(f"state database {self.thread.path} cannot be written "
                             f"({self.outage.error})")

    def _job(self, db: sqlite3.Connection, batch: list[_QueuedWrite]) -> None:
        wrong = self._wrong
        wrong.clear()
        for kept in batch:
            db.execute("SAVEPOINT one")
            try:
                kept.write(db)
            except Exception as exc:  # a wrong write is dropped alone
                if transient(exc):
                    raise
                db.execute("ROLLBACK TO one")
                why = (f"SQLite refused it ({exc})" if isinstance(exc, sqlite3.Error)
                       else f"it failed ({described(exc)})")
                wrong.append(f"one {kept.kind} dropped, {why}")
            db.execute("RELEASE one")

    def _call(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        """A callback after a batch: one that raises is reported and the others still run."""
        try:
            fn(*args)
        except Exception:
            log.exception("state database %s: %s failed", self.thread.path, what)

    def _settle(self, batch: list[_QueuedWrite], error: str | None) -> None:
        if error is None:
            wrong, self._wrong = self._wrong, []
            self.batches += 1
            for text in wrong:
                self._call("telling of a dropped write", self.on_error,
                           f"state database {self.thread.path}: {text}")
            self._caught_up(batch)
            for kept in batch:
                if kept.then is not None:
                    self._call(f"what follows the {kept.kind}", kept.then)
            return
        # past max_held, the newest are dropped
        pending = self._group.pending
        while len(pending) > self.max_held:
            self.drop(pending.pop(next(reversed(pending))).kind)
        if self._group.first_failure:
            self._call("telling of the failure", self.on_error,
                f"state database {self.thread.path} cannot be written ({error}): "
                f"{counted(_kinds(list(pending.values())))} wait in memory and are "
                f"written when it can (tried every {RETRY_EVERY:g} s; at most "
                f"{self.max_held} are kept, newer ones are dropped and counted): "
                f"{what_to_do()}")

    def drop(self, kind: str) -> None:
        """A write not kept in an outage (past max_held), counted: told once written again."""
        self.dropped[kind] = self.dropped.get(kind, 0) + 1
        self.lost += 1

    def stats(self) -> dict[str, Any]:
        since = self.outage.since
        return {"failing_since": None if since is None else iso_time(since),
                "waiting": self.pending(), "lost": self.lost}

    def _caught_up(self, batch: list[_QueuedWrite]) -> None:
        since = self.outage.recovered()
        if since is None:
            return
        dropped, self.dropped = self.dropped, {}
        text = (f"state database {self.thread.path} is written again: "
                f"{counted(_kinds(batch))} kept in memory since {iso_time(since)} are recorded")
        if dropped:
            text += f"; {counted(dropped)} could not be kept and are lost"
        self._call("telling of the catch-up", self.on_notice, text)
        if dropped:
            self.stream.emit(CaughtUp(dropped, since, self.outage.error))

    def pending(self) -> dict[str, int]:
        return _kinds([v for _, v in self._group.inflight]
                      + list(self._group.pending.values()))

    def cancel_retry(self) -> None:
        self._group.cancel_retry()


def _kinds(batch: list[_QueuedWrite]) -> dict[str, int]:
    return dict(Counter(kept.kind for kept in batch))


def counted(counts: dict[str, int]) -> str:
    """{"audit row": 2, "process record": 1} -> "2 audit rows and 1 process record"."""
    parts = [plural(n, kind) for kind, n in counts.items()]
    if not parts:
        return "no writes"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _writes(batch: list[Write]) -> Write:
    def write(db: sqlite3.Connection) -> None:
        for one in batch:
            one(db)
    return write


def _alone(job: Job) -> Write:
    """A job as its own transaction."""
    if not isinstance(job, InTransaction):
        return job
    write = job.write

    def transaction(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        write(db)
        db.execute("COMMIT")
    return transaction


def _tell(told: list[tuple[Callable[[str | None], None], str | None]]) -> None:
    """(On the loop.) The group's waiters, in its order: one wake-up of the loop for them."""
    for done, error in told:
        try:
            done(error)
        except Exception:  # (as a callback of its own would be): the others are told
            log.exception("state database: a commit's waiter failed")
