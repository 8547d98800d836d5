"""A task's live output (docs/streams.md): the chunks its worker sends (`task/output`),
each at a position (attempt, n), put in the output journal as they come. A reader costs its
position, never a buffer: a slow one holds neither the agent nor the engine, and is given
a page at a time (BATCH, BATCH_BYTES).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING

from ...text import plural
from ..quotas import NO_QUOTAS
from ..stream import Stream
from .chunks import (
    START,
    Discarder,
    OutputChunk,
    OutputJournal,
    Position,
    SharedOutputJournal,
)
from .model import Task, TaskFinished

if TYPE_CHECKING:
    from ..replica import Replica

BATCH = 256  # chunks a reader is given at once, at most
BATCH_BYTES = 1 << 20  # and bytes of their text, past the first
MAX_CHUNK_BYTES = 1 << 20  # of one chunk's text: a page holds one
KEPT = 1000  # tasks whose streams the engine's own journal keeps
TAIL_BYTES = 64 * 1024  # of a task's newest output, kept in memory while it is written
# A position as an SSE event id, `ATTEMPT-N`: ASCII digits, each few enough to be a SQLite
# integer (the journal is read from it), so the REST document says the same pattern.
EVENT_ID = re.compile(r"[0-9]{1,18}-[0-9]{1,18}")


def position_of(event_id: str) -> Position:
    """An id given back (`ATTEMPT-N`) as a position; ValueError naming it otherwise."""
    if not EVENT_ID.fullmatch(event_id):
        raise ValueError(f"{event_id!r:.60} is not a position of a task's output "
                         "(ATTEMPT-N, an id the stream gave)")
    attempt, _, n = event_id.partition("-")
    return (int(attempt), int(n))


def paged(chunks: Iterable[OutputChunk], limit: int) -> list[OutputChunk]:
    """The first of `chunks`: at most `limit` and BATCH_BYTES of text past the first."""
    page: list[OutputChunk] = []
    size = 0
    for chunk in chunks:
        size += len(chunk.data)
        if page and (len(page) >= limit or size > BATCH_BYTES):
            break
        page.append(chunk)
    return page


class OutputTail:
    """A running task's newest chunks (`chunks[first:]`), kept by a journal for the
    readers that keep up, and the position of the last one not among them (`before`:
    START when every chunk of it is)."""

    __slots__ = ("before", "bytes", "chunks", "first")

    def __init__(self, before: Position) -> None:
        self.before = before
        self.chunks: list[OutputChunk] = []
        self.first = 0
        self.bytes = 0

    def add(self, chunk: OutputChunk) -> None:
        self.chunks.append(chunk)
        self.bytes += len(chunk.data)
        while self.bytes > TAIL_BYTES and len(self.chunks) - self.first > 1:
            gone = self.chunks[self.first]
            self.first += 1
            self.bytes -= len(gone.data)
            self.before = gone.position
        if self.first > 1024 and self.first * 2 > len(self.chunks):
            del self.chunks[:self.first]
            self.first = 0

    def after(self, after: Position, limit: int, upto: Position) -> list[OutputChunk]:
        at = bisect.bisect_right(self.chunks, after, lo=self.first, key=_position)
        return paged(itertools.takewhile(lambda c: c.position <= upto,
                                         itertools.islice(self.chunks, at, None)), limit)


def _position(chunk: OutputChunk) -> Position:
    return (chunk.attempt, chunk.n)


class OutputsInMemory(Discarder):
    """The engine's journal when it has none of a daemon's: the streams of its newest
    KEPT tasks, in memory (the rest, a Discarder's)."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self.streams: OrderedDict[str, list[OutputChunk]] = OrderedDict()

    def put(self, chunk: OutputChunk) -> None:
        chunks = self.streams.get(chunk.task_id)
        if chunks is None:
            chunks = self.streams[chunk.task_id] = []
            while len(self.streams) > self.kept:
                self.streams.popitem(last=False)
        chunks.append(chunk)

    async def read(self, task_id: str, after: Position, limit: int) -> list[OutputChunk]:
        chunks = self.streams.get(task_id, [])
        at = bisect.bisect_right(chunks, after, key=lambda c: c.position)
        return paged(itertools.islice(chunks, at, None), limit)


class _OpenStream:
    """A task's stream while it may be written to: its count, next position, readers' wake-up."""

    __slots__ = ("attempt", "bytes", "changed", "n", "said", "tenant")

    def __init__(self, tenant: str, last: Position, size: int) -> None:
        self.tenant = tenant
        self.attempt, self.n = last
        self.bytes = size
        self.said = 0  # the attempt whose truncation the stream has said
        self.changed: asyncio.Event | None = None  # made by the first reader that waits

    def wake(self) -> None:
        if self.changed is not None:
            self.changed.set()
            self.changed = None


class TaskOutputs:
    """The running tasks' streams: chunks numbered, bounded and kept; readers woken."""

    def __init__(self, stream: Stream, live: Callable[[str], Task | None]) -> None:
        self.live_task = live
        # the daemon's journal, where it has one (else the engine's memory); a task a
        # cluster keeps is in its cluster's (its node's ClusterHome), read here too while
        # it runs on another node
        self.memory = OutputsInMemory()
        self.journal: OutputJournal = self.memory
        self.shared: SharedOutputJournal | None = None
        self.live: dict[str, _OpenStream] = {}
        self.held: dict[str, int] = {}  # a tenant's unfinished tasks' bytes of output
        self.chunks = 0  # kept
        self.bytes = 0
        self.dropped = 0  # not kept, past a bound
        self.holds = 0  # times a worker was read no further until its output was written
        self._holding: set[Replica] = set()
        self.stream = stream
        # told of a task's end while a task's output is open here
        self._ends = stream.subscribe(self._finished, TaskFinished, listening=False)

    def shared_in(self, journal: SharedOutputJournal) -> None:
        """A cluster's output journal, once its node joins (after the engine is made):
        where a task that runs on another node is read."""
        self.shared = journal

    def stats(self) -> dict[str, int]:
        return {"chunks": self.chunks, "bytes": self.bytes, "dropped": self.dropped,
                "holds": self.holds, "open": len(self.live)}

    def _live_of(self, task: Task) -> _OpenStream:
        live = self.live.get(task.id)
        if live is None:
            last, size = task.home.outputs.resumed(task.id)
            tenant = task.tenant or ""
            live = self.live[task.id] = _OpenStream(tenant, last, size)
            self.stream.listen(self._ends)
            self.held[tenant] = self.held.get(tenant, 0) + size
        return live

    def put(self, task: Task, r: Replica, data: str) -> None:
        """A chunk of the running task: kept, or past a bound counted and said."""
        live = self._live_of(task)
        if live.attempt != task.attempt:
            live.attempt, live.n = task.attempt, 0
        if live.said == task.attempt:  # truncated, said: counted, not kept
            self.dropped += 1
            return
        size = len(data.encode())
        why = self._refusal(task, r, live, size)
        live.n += 1
        journal = task.home.outputs
        if why is None:
            live.bytes += size
            self.held[live.tenant] += size
            self.chunks += 1
            self.bytes += size
            journal.put(OutputChunk(task.id, task.attempt, live.n, data))
            if journal.behind() and r not in self._holding:
                self._hold(r, journal)
        else:
            self.dropped += 1
            live.said = task.attempt
            r.note(why)
            journal.put(OutputChunk(task.id, task.attempt, live.n, why, True))
        live.wake()

    def _hold(self, r: Replica, journal: OutputJournal) -> None:
        """A worker whose output comes faster than it is written: its pipe is read no
        further until it is, so that a flood is never held in the daemon's memory."""
        reader = r.peer.reader if r.peer is not None else None
        if reader is None:
            return
        self.holds += 1
        self._holding.add(r)
        reader.pause()

        async def release() -> None:
            try:
                await journal.caught_up()
            finally:
                self._holding.discard(r)
                reader.resume()

        asyncio.get_running_loop().create_task(release())

    def _refusal(self, task: Task, r: Replica, live: _OpenStream, size: int) -> str | None:
        tenant = r.host.tenant_spec(live.tenant) or NO_QUOTAS
        if size > MAX_CHUNK_BYTES:
            return (f"output truncated: a chunk of task {task.id} of "
                    f"{plural(size, 'byte')} is over MAX_CHUNK_BYTES ({MAX_CHUNK_BYTES}); "
                    f"the rest of attempt {task.attempt}'s output is not kept")
        own, whose = r.spec.max_stream_bytes, "max_stream_bytes"
        if tenant.max_stream_bytes and (not own or tenant.max_stream_bytes < own):
            own, whose = tenant.max_stream_bytes, f"tenant {live.tenant}'s max_stream_bytes"
        if own and live.bytes + size > own:
            return (f"output truncated: task {task.id}'s output reached {whose} {own} "
                    f"({plural(live.bytes, 'byte')} kept); the rest of attempt "
                    f"{task.attempt}'s output is not kept")
        held, most = self.held.get(live.tenant, 0), tenant.max_stream_journal_bytes
        if most and held + size > most:
            return (f"output truncated: tenant {live.tenant}'s unfinished tasks hold "
                    f"{plural(held, 'byte')} of output (max_stream_journal_bytes {most}); "
                    f"the rest of task {task.id}'s attempt {task.attempt} is not kept")
        return None

    def _finished(self, e: TaskFinished) -> None:
        live = self.live.pop(e.task.id, None)
        if not self.live:
            self.stream.listen(self._ends, False)
        if live is not None:
            left = self.held[live.tenant] - live.bytes
            if left:
                self.held[live.tenant] = left
            else:
                del self.held[live.tenant]
            e.task.home.outputs.ended(e.task.id)
            live.wake()

    async def follow(self, task_id: str, after: Position = START
                     ) -> AsyncIterator[list[OutputChunk]]:
        """The task's chunks after `after`, a batch at a time, as they come, until it
        has ended and every chunk is read: its journal read, then followed (woken by
        this engine's writes while it runs here, else by its journal's `more`)."""
        elsewhere: OutputJournal | None = None
        ended = False
        while True:
            task = self.live_task(task_id)
            changed = None
            if task is not None:  # asked before the read: a chunk after it wakes us
                live = self._live_of(task)
                changed = live.changed
                if changed is None:
                    changed = live.changed = asyncio.Event()
            if task is not None:
                journal = task.home.outputs
            else:
                if elsewhere is None:
                    elsewhere = await self._journal_of(task_id)
                journal = elsewhere
            chunks = await journal.read(task_id, after, BATCH)
            if chunks:
                after = chunks[-1].position
                yield chunks
                continue
            if changed is not None:
                await changed.wait()
            elif ended:
                return
            else:  # (one read more once it said none will come: what came meanwhile)
                ended = not await journal.more(task_id, after)

    async def _journal_of(self, task_id: str) -> OutputJournal:
        """Where the output of a task not in flight here is kept: a cluster task's in its
        cluster's journal (asked first, as a task's record is), any other in this
        engine's."""
        if task_id in self.memory.streams:
            return self.memory
        if self.shared is not None and await self.shared.holds(task_id):
            return self.shared
        return self.journal
