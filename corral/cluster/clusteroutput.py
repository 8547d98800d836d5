"""The live output of a cluster's tasks in Redis (the OutputJournal of a node's
ClusterHome; docs/streams.md, docs/cluster.md): a stream per task whose entries' ids are
the chunks' positions (ATTEMPT-N), written by the node that runs the task as its chunks
come, read by any node. Whichever node serves a resubscribe replays it, then follows it:
from the running node's engine where the task runs there, else by blocking reads of the
stream, which the task's end closes with an entry `e` (scripts._ended). A chunk carries a
MAC (trust.OUTPUT) bound to its task and position.

Writes go a batch each FLUSH_EVERY, or at once for a reader here, one fenced script per
task in one pipeline (scripts.OUTPUT); a reader here is given only what Redis holds (from
each running task's newest TAIL_BYTES in memory once written), so a stream resumed
elsewhere after this node died has no gap. A batch Redis did not take is sent again each
beat; a reader that has read all Redis holds is told why the rest is not there yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.tasks import Task
from ..supervisor.tasks.chunks import START, OutputChunk, Position
from ..supervisor.tasks.output import OutputTail, paged
from .connection import unanswered, why
from .keys import Keys
from .queue import ClusterTask
from .scripts import RedisPart, Scripts
from .trust import OUTPUT, Trust

# bytes of chunks waiting for Redis past which the worker sending them is read no further
# until they are written (supervisor/tasks/output.py: TaskOutputs._hold); while Redis does
# not answer too: the node fences itself within 2 x node_ttl and ends what it runs
BACKLOG_BYTES = 4 << 20
# seconds chunks gather before they go as one batch, unless a reader here asks for them
# (as the node's journal batches: daemon/outputjournal.py)
FLUSH_EVERY = 0.02
SWEEP_AT = 64  # tails at which those of tasks gone from here are first looked for
RUNNING = b"running"  # a record's status while an attempt runs (not waiting for a person)


def entry_id(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


class _Pending:
    """A task's chunks waiting for the next batch, with the fence of its claim."""

    __slots__ = ("args", "bytes", "chunks", "token")

    def __init__(self, token: int) -> None:
        self.token = token
        self.args: list[Any] = [token]
        self.chunks = 0
        self.bytes = 0


class ClusterOutputs(RedisPart):
    """`active` finds a task running here; `waits`, the client of blocking reads; `beat`,
    the longest a blocking read waits (and between two sends of a batch not taken)."""

    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust,
                 active: Callable[[str], Task | None], waits: Any, beat: float) -> None:
        super().__init__(scripts, keys, trust)
        self._active = active
        self.waits = waits
        self.beat = beat
        self._pending: dict[str, _Pending] = {}
        self._tails: dict[str, OutputTail] = {}  # the running tasks' newest chunks
        self._sweep_at = SWEEP_AT
        self._flush_at: asyncio.TimerHandle | None = None
        self._waiting_bytes = 0  # of chunks put and not yet taken by Redis
        self._failing: dict[str, str] = {}  # task -> why its last batch was not taken
        self._sender: asyncio.Task[None] | None = None
        self._put = 0  # chunks put, numbered
        self._tried = 0  # the number of the last chunk a batch carried (taken or not)
        self._round = asyncio.Condition()
        self.written = 0  # chunks Redis took
        self.refused = 0  # batches the fence refused (the task no longer this node's)
        self.failed = 0  # batches Redis did not take (sent again)

    # -- the OutputJournal protocol -------------------------------------------------------
    def put(self, chunk: OutputChunk) -> None:
        task = self._active(chunk.task_id)
        if not isinstance(task, ClusterTask):
            return  # not a claim of this node's (any more): nothing to fence it with
        pending = self._pending.get(chunk.task_id)
        if pending is None or pending.token != task.token:
            if pending is not None:  # an earlier claim's, which the fence would refuse
                self._waiting_bytes -= pending.bytes
            pending = self._pending[chunk.task_id] = _Pending(task.token)
        position = entry_id(chunk.position)
        truncated = "1" if chunk.truncated else "0"
        mac = self.trust.sign(OUTPUT, chunk.task_id, position, truncated, chunk.data)
        pending.args += (position, mac, chunk.data, truncated)
        pending.chunks += 1
        size = len(chunk.data)
        pending.bytes += size
        self._waiting_bytes += size
        self._put += 1
        tail = self._tails.get(chunk.task_id)
        if tail is None:  # (the chunks before this claim's first are Redis's alone)
            if len(self._tails) >= self._sweep_at:
                self._sweep()
            tail = self._tails[chunk.task_id] = OutputTail((chunk.attempt, chunk.n - 1))
        tail.add(chunk)
        if self._sender is None and self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(FLUSH_EVERY, self._flush)

    def _sweep(self) -> None:
        """The tails of tasks no longer running here dropped: one suspended and handed
        back to the cluster leaves without an end here (`ended`). Amortized: at a size
        twice the last sweep's."""
        for task_id in [t for t in self._tails
                        if not isinstance(self._active(t), ClusterTask)]:
            del self._tails[task_id]
        self._sweep_at = max(SWEEP_AT, 2 * len(self._tails))

    def _flush(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if self._sender is None and self._pending:
            self._sender = asyncio.ensure_future(self._send())

    async def read(self, task_id: str, after: Position, limit: int) -> list[OutputChunk]:
        # a reader here is given only what Redis holds: from the tail once written
        tail = self._tails.get(task_id)
        if tail is not None and after >= tail.before:
            if not tail.chunks or tail.chunks[-1].position <= after:
                return []
            upto = tail.chunks[-1].position
            await self.caught_up()
            if task_id not in self._failing and self._tails.get(task_id) is tail:
                return tail.after(after, limit, upto)
        await self.caught_up()
        with unanswered(f"the live output of task {task_id} was not read from the "
                        "cluster's Redis"):
            entries = await self.redis.xrange(self.keys.output(task_id),
                                              min=f"({entry_id(after)}", count=limit)
        chunks = paged(self._chunks(task_id, entries), limit)
        failing = self._failing.get(task_id)
        if not chunks and failing is not None:
            raise RpcError(jsonrpc.UNAVAILABLE, (
                f"the live output of task {task_id} after {entry_id(after)} is not in the "
                f"cluster's Redis: it did not take its chunks ({failing}); they are sent "
                f"again each beat: resubscribe after {entry_id(after)}"))
        return chunks

    def _chunks(self, task_id: str, entries: list[Any]) -> list[OutputChunk]:
        chunks = []
        for raw_id, fields in entries:
            position = raw_id.decode()
            data = fields.get(b"d")
            if data is None:  # the task's end (scripts._ended): no chunk comes after it
                break
            text = data.decode()
            truncated = "1" if fields.get(b"t") == b"1" else "0"
            if not self.trust.valid(fields.get(b"m"), OUTPUT, task_id, position,
                                    truncated, text):
                self.trust.refuse(OUTPUT, f"{position} of task {task_id}", fields.get(b"m"),
                                  "that chunk is not streamed")
                continue
            attempt, _, n = position.partition("-")
            chunks.append(OutputChunk(task_id, int(attempt), int(n), text, truncated == "1"))
        return chunks

    def resumed(self, task_id: str) -> tuple[Position, int]:
        # each claim is an attempt of its own (its chunks begin at 1), and counts the
        # bytes it keeps from none (decision 1200)
        return START, 0

    def ended(self, task_id: str) -> None:
        """(Its chunks still waiting are sent before its end is: Outbox.send; its stream
        expires with its record, scripts._ended.)"""
        self._tails.pop(task_id, None)

    async def more(self, task_id: str, after: Position) -> bool:
        """Until a chunk after `after` is in the task's stream, or its end, or a beat;
        False at once for a task not running (ended, waiting for a person, queued): its
        reader looks at it again (the A2A door says input-required, and follows again)."""
        key = self.keys.output(task_id)
        with unanswered(f"the live output of task {task_id} was not followed in the "
                        "cluster's Redis"):
            if await self.redis.hget(self.keys.task(task_id), "status") != RUNNING:
                return False
            got = await self.waits.xread({key: entry_id(after)}, count=1,
                                         block=max(1, int(self.beat * 1000)))
        return not got or b"d" in got[0][1][0][1]

    def behind(self) -> bool:
        return self._waiting_bytes > BACKLOG_BYTES

    async def caught_up(self) -> None:
        """Until every chunk put so far was in a batch sent (taken by Redis or not)."""
        upto = self._put
        if self._tried >= upto:
            return
        self._flush()
        async with self._round:
            await self._round.wait_for(lambda: self._tried >= upto)

    # -- the SharedOutputJournal protocol -------------------------------------------------
    async def holds(self, task_id: str) -> bool:
        with unanswered(f"the live output of task {task_id} was not read from the "
                        "cluster's Redis"):
            return bool(await self.redis.exists(self.keys.task(task_id)))

    # -- to Redis -------------------------------------------------------------------------
    async def _send(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                tried = self._put
                calls = [(self.scripts.output,
                          [self.keys.task(task_id), self.keys.output(task_id)], p.args)
                         for task_id, p in batch.items()]
                try:
                    results: list[Any] = await self.scripts.acknowledged(calls)
                except Exception as exc:  # whatever it is, the readers waiting are told
                    results = [exc] * len(calls)
                again = self._settle(batch, results)
                async with self._round:
                    self._tried = tried
                    self._round.notify_all()
                if again:
                    for task_id, p in again.items():  # before what came meanwhile
                        newer = self._pending.pop(task_id, None)
                        if newer is not None and newer.token == p.token:
                            p.args += newer.args[1:]
                            p.chunks += newer.chunks
                            p.bytes += newer.bytes
                        self._pending[task_id] = p
                    await asyncio.sleep(self.beat)
        finally:
            self._sender = None

    def _settle(self, batch: dict[str, _Pending], results: list[Any]
                ) -> dict[str, _Pending]:
        """The batches Redis did not take, to send again."""
        again = {}
        for (task_id, p), result in zip(batch.items(), results, strict=True):
            if isinstance(result, BaseException):
                self.failed += 1
                self._failing[task_id] = why(result)
                again[task_id] = p
                continue
            self._failing.pop(task_id, None)
            self._waiting_bytes -= p.bytes
            if result == 1:
                self.written += p.chunks
            else:  # (its tail holds what Redis does not: its readers read Redis)
                self.refused += 1
                self._tails.pop(task_id, None)
        return again

    def stats(self) -> dict[str, int]:
        return {"written": self.written, "refused": self.refused, "failed": self.failed,
                "waiting_bytes": self._waiting_bytes, "tails": len(self._tails)}

    async def close(self) -> None:
        """Its last writes sent (the caller bounds the wait: what is left then goes)."""
        self._flush()
        sender = self._sender
        if sender is not None:
            try:
                with contextlib.suppress(Exception):
                    await asyncio.shield(sender)
            finally:
                sender.cancel()
