"""A task's output as it is kept: a chunk, its position, and the protocol of the journal
that keeps them (the daemon's SQLite, the engine's memory, a cluster's Redis); output.py
makes and reads them."""

from __future__ import annotations

from typing import NamedTuple, Protocol

Position = tuple[int, int]  # (attempt, n)
START: Position = (0, 0)  # before a task's first chunk


class OutputChunk(NamedTuple):
    """A chunk of a task's output; `truncated`: the stream's word for a chunk past a bound."""

    task_id: str
    attempt: int
    n: int
    data: str
    truncated: bool = False

    @property
    def position(self) -> Position:
        return (self.attempt, self.n)

    @property
    def id(self) -> str:
        """The position as an SSE event id (`Last-Event-ID`): `ATTEMPT-N`."""
        return f"{self.attempt}-{self.n}"


class OutputJournal(Protocol):
    """Where chunks are kept and read back (the daemon's: corral.daemon.outputjournal)."""

    def put(self, chunk: OutputChunk) -> None: ...

    async def read(self, task_id: str, after: Position, limit: int) -> list[OutputChunk]:
        """The task's chunks after `after`, in order: a page of at most `limit`."""

    def resumed(self, task_id: str) -> tuple[Position, int]:
        """The last position and bytes kept of a task begun before this engine (START, 0: none)."""

    def ended(self, task_id: str) -> None: ...

    async def more(self, task_id: str, after: Position) -> bool:
        """For a task that runs elsewhere (not in this engine): wait until a chunk after
        `after` may have come; False when none is coming now (it ended, or it is not
        running: its reader looks at it again), and at once where a journal is this
        engine's alone."""

    def behind(self) -> bool:
        """Whether more is waiting to be written than it holds in memory: the worker
        that sent the last chunk is then read no further until `caught_up`."""

    async def caught_up(self) -> None: ...


class SharedOutputJournal(OutputJournal, Protocol):
    """A journal that other engines write too (a cluster's: cluster/clusteroutput.py)."""

    async def holds(self, task_id: str) -> bool:
        """Whether the task is one whose output this journal keeps, wherever it runs."""


class Discarder:
    """The output journal of a home that keeps nothing: what is put goes."""

    __slots__ = ()

    def put(self, chunk: OutputChunk) -> None:
        return None

    async def read(self, task_id: str, after: Position, limit: int) -> list[OutputChunk]:
        return []

    def resumed(self, task_id: str) -> tuple[Position, int]:
        return START, 0

    def ended(self, task_id: str) -> None:
        return None

    async def more(self, task_id: str, after: Position) -> bool:
        return False

    def behind(self) -> bool:
        return False

    async def caught_up(self) -> None:
        return None


DROPPED: OutputJournal = Discarder()
