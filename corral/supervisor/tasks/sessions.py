"""Sessions: a conversation's tasks, one at a time, with a state that outlives each
(DESIGN section 17, docs/durable.md).

A task may name a `session` of its agent. The tasks of one session run one at a time,
in the order they were submitted: the session's first unfinished task (its `current`)
waits in the agent's queue like any task, and the later ones wait in the session's
line, out of the queue, until it has finished (retries and all). `Sessions` is the
Queue the dispatcher takes from: the agents' own queue behind it, the lines in front.

While a session lives on a replica (the one that ran its last task, still the same
process), dispatch prefers that replica when it has a free slot: the worker's memory
of the conversation is the fast path. Its state (`session/checkpoint`, durable before it
is answered) is given to each of its tasks in `task/run` (`session`, `session_state`),
so any replica, after a crash, a restart of the daemon or a hibernation, carries on
where the last checkpoint left it.

A session idle (no task of it unfinished) for its agent's `session_ttl` is
dropped, state and history; its next task starts it afresh, told so by no state.
The engine works without a journal; the daemon's is SQLite (corral.daemon.sessions).
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...text import plural
from ..stream import Stream
from .model import Task, TaskFinished
from .queue import Queue

if TYPE_CHECKING:
    from ..replica import Replica
    from .host import AgentLike

# unique across restarts of the daemon too (a restored session keeps its own)
_generations = itertools.count(time.time_ns())
SWEEP_EVERY = 60.0  # seconds between looks over the table for expired sessions


class SessionRow(NamedTuple):
    """What a journal keeps of a session, besides its state and its tasks."""

    agent: str
    name: str
    created: float
    last_used: float
    tasks: int
    holder: str | None  # the replica that ran its last task ("agent#i")
    gen: int  # this life of the session (an ended one's name may start a new one)


class SessionJournal(Protocol):
    """Where sessions are made durable (the daemon's: corral.daemon.sessions.SessionsDB)."""

    def put(self, row: SessionRow) -> None:
        """Keep the session's row (a newer one replaces it); does not block."""

    def put_state(self, row: SessionRow, state: bytes) -> None:
        """Keep the session's state (JSON)."""

    def add_task(self, row: SessionRow, task_id: str) -> None:
        """A task of the session was accepted (its history)."""

    def end(self, row: SessionRow) -> None:
        """Forget the session: its row, state and history."""

    async def committed(self) -> None:
        """Return once everything put so far is durable; raise if it cannot be."""

    async def history(self, row: SessionRow) -> list[tuple[str, str | None, float | None]]:
        """(task id, status, created) of the session's tasks, in the order accepted."""


class Session:
    """One live session of an agent."""

    __slots__ = ("agent", "created", "current", "first", "gen", "holder", "last_used", "line",
                 "name", "pending", "pid", "replica", "state", "tasks")

    def __init__(self, agent: str, name: str, now: float) -> None:
        self.agent = agent
        self.name = name
        self.gen = next(_generations)
        self.created = now
        self.last_used = now
        self.tasks = 0  # tasks accepted in it
        self.pending = 0  # those not finished (queued, delayed, running)
        self.state: msgspec.Raw | None = None  # its last session/checkpoint
        self.holder: str | None = None
        # the replica and process that ran its last task (the sticky choice)
        self.replica: Replica | None = None
        self.pid: int | None = None
        self.current: Task | None = None  # the one task of it that may run
        # after a restart: the id of its first unfinished task, its current one once the
        # engine has it back (queued again, or re-attached to a worker an upgrade kept)
        self.first: str | None = None
        self.line: list[Task] = []  # the later ones, in submission order

    @property
    def idle(self) -> bool:
        return not self.pending

    def turn_of(self, task: Task) -> bool:
        """Whether `task` is (now) the one task of the session that may run."""
        if self.current is None and self.first in (None, task.id):
            self.current, self.first = task, None
        return self.current is task

    def row(self) -> SessionRow:
        return SessionRow(self.agent, self.name, self.created, self.last_used, self.tasks,
                          self.holder, self.gen)


def _key(task: Task) -> tuple[str, str]:
    assert task.session is not None
    return task.agent, task.session


class Sessions:
    """The engine's sessions, and the Queue in front of the agents' queue (`inner`)."""

    def __init__(self, stream: Stream, inner: Queue,
                 ttl_of: Callable[[str], float]) -> None:
        self.inner = inner
        self._ttl_of = ttl_of
        self.table: dict[tuple[str, str], Session] = {}
        self._parked: dict[str, int] = {}  # tasks waiting in the lines, per agent
        self._members: dict[str, str] = {}  # task id -> session, given back after a restart
        self.journal: SessionJournal | None = None  # the daemon sets it
        self.pump: Callable[[str], None] | None = None  # the dispatcher's (a line moved)
        self.expired = 0  # sessions dropped for their session_ttl
        self._swept = 0.0  # when the table was last looked over (wall time)
        stream.subscribe(self._finished, TaskFinished)

    # -- the table ------------------------------------------------------------------------
    def _expired(self, s: Session, now: float) -> bool:
        ttl = self._ttl_of(s.agent)
        return bool(ttl) and s.idle and now - s.last_used > ttl

    def _drop(self, s: Session) -> None:
        self.table.pop((s.agent, s.name), None)
        if self.journal is not None:
            self.journal.end(s.row())

    def sweep(self, now: float | None = None) -> None:
        """Drop the sessions idle past their agent's session_ttl."""
        now = time.time() if now is None else now
        self._swept = now
        for s in [s for s in self.table.values() if self._expired(s, now)]:
            self.expired += 1
            self._drop(s)

    def _touch(self, s: Session) -> None:
        s.last_used = time.time()
        if self.journal is not None:
            self.journal.put(s.row())

    def accept(self, task: Task) -> None:
        """A task naming a session was accepted: the session is made (again, when it
        expired) and the task is in its history."""
        key = _key(task)
        s = self.table.get(key)
        now = time.time()
        if s is not None and self._expired(s, now):
            self.expired += 1
            self._drop(s)
            s = None
        if s is None:
            if now - self._swept > SWEEP_EVERY:  # (the expired ones not asked for again)
                self.sweep(now)
            s = self.table[key] = Session(task.agent, key[1], now)
        s.tasks += 1
        s.pending += 1
        self._touch(s)
        if self.journal is not None:
            self.journal.add_task(s.row(), task.id)

    def get(self, agent: str, name: str) -> Session:
        s = self.table.get((agent, name))
        if s is None or self._expired(s, time.time()):
            raise RpcError(jsonrpc.NOT_FOUND, f"no such session: {jsonrpc.visible(name)} of "
                                              f"agent {agent}")
        return s

    def listing(self, agent: str | None = None) -> list[Session]:
        self.sweep()
        return sorted((s for s in self.table.values() if agent is None or s.agent == agent),
                      key=lambda s: (s.agent, s.name))

    def end(self, agent: str, name: str) -> Session:
        """Forget a session that has no task queued or running."""
        s = self.get(agent, name)
        if not s.idle:
            unfinished = s.pending
            now = f": task {s.current.id} is {s.current.status}" if s.current else ""
            raise RpcError(jsonrpc.CONFLICT, f"session {name} of agent {agent} has "
                                             f"{plural(unfinished, 'unfinished task')}{now}; "
                                             "cancel them or wait for them to end")
        self._drop(s)
        return s

    async def history(self, s: Session) -> list[tuple[str, str | None, float | None]]:
        return await self.journal.history(s.row()) if self.journal is not None else []

    async def committed(self) -> None:
        if self.journal is not None:
            await self.journal.committed()

    def expires(self, s: Session) -> float | None:
        ttl = self._ttl_of(s.agent)
        return s.last_used + ttl if ttl and s.idle else None

    def restore(self, sessions: Iterable[tuple[SessionRow, bytes | None]],
                members: Iterable[tuple[str, str, str]]) -> None:
        """The sessions a journal kept, and (task id, agent, session) of each unfinished
        task in the order they were accepted: before the tasks are restored (`member`).
        The first of each session is its current one, whichever way it comes back."""
        for row, state in sessions:
            s = Session(row.agent, row.name, row.created)
            s.gen, s.last_used, s.tasks, s.holder = row.gen, row.last_used, row.tasks, None
            s.state = None if state is None else msgspec.Raw(state)
            self.table[(row.agent, row.name)] = s
        for task_id, agent, name in members:
            self._members[task_id] = name
            kept = self.table.get((agent, name))
            if kept is not None:
                kept.pending += 1
                if kept.first is None:
                    kept.first = task_id

    def member(self, task_id: str) -> str | None:
        """The session of a task restored from the journal."""
        return self._members.pop(task_id, None)

    def claim(self, task: Task) -> None:
        """A restored task of a session that is not in the queue (running on a worker
        handed over, or a retry waiting for its backoff) is its session's current one."""
        if task.session is None:
            return
        s = self.table.get(_key(task))
        if s is None:
            s = self.table[_key(task)] = Session(task.agent, _key(task)[1], time.time())
        s.turn_of(task)

    def stats(self) -> dict[str, int]:
        return {"live": len(self.table), "expired": self.expired}

    # -- the Queue --------------------------------------------------------------------------
    def put(self, task: Task) -> None:
        if task.session is None or self._turn(task):
            self.inner.put(task)

    def requeue(self, task: Task) -> None:
        """A retry of the session's current task goes back; a later task (delayed until
        now) waits its turn."""
        if task.session is None or self._turn(task):
            self.inner.requeue(task)

    def _turn(self, task: Task) -> bool:
        """Whether the session's task may wait in the agents' queue now; else it is put
        in the session's line."""
        key = _key(task)
        s = self.table.get(key)
        if s is None:  # accepted before a journal knew it (a restored task of no row)
            s = self.table[key] = Session(task.agent, key[1], time.time())
        if s.turn_of(task):
            return True
        bisect.insort(s.line, task, key=lambda t: t.seq)
        self._parked[task.agent] = self._parked.get(task.agent, 0) + 1
        return False

    def take(self, agent: str) -> Task | None:
        return self.inner.take(agent)

    def remove(self, task: Task) -> bool:
        if task.session is not None:
            s = self.table.get(_key(task))
            if s is not None and task in s.line:
                s.line.remove(task)
                self._parked[task.agent] -= 1
                return True
        return self.inner.remove(task)

    def depth(self, agent: str) -> int:
        return self.inner.depth(agent) + self._parked.get(agent, 0)

    def recover(self, tasks: Iterable[Task]) -> None:
        for task in tasks:
            self.put(task)

    def parked(self, agent: str) -> int:
        """The agent's tasks waiting for their session's turn (in `depth` too)."""
        return self._parked.get(agent, 0)

    def position(self, task: Task) -> int | None:
        return self.inner.position(task)

    def drain(self, agent: str) -> list[Task]:
        """Every task of the agent waiting in a line, out of it (the agent will not run
        again: they end with the queue's)."""
        out: list[Task] = []
        for s in self.table.values():
            if s.agent == agent and s.line:
                out += s.line
                s.line = []
        self._parked.pop(agent, None)
        return out

    def why_waiting(self, task: Task) -> str | None:
        """Why a queued task of a session does not start: another task of it runs."""
        if task.session is None:
            return None
        s = self.table.get(_key(task))
        if s is None or task not in s.line or s.current is None:
            return None
        ahead = s.line.index(task)
        more = f" ({plural(ahead, 'task')} of it ahead)" if ahead else ""
        return (f"session {task.session}: task {s.current.id} "
                f"{'runs' if s.current.status == 'running' else 'waits before it'}{more}")

    def _finished(self, e: TaskFinished) -> None:
        task = e.task
        if task.session is None:
            return
        s = self.table.get(_key(task))
        if s is None:
            return
        s.pending = max(0, s.pending - 1)
        if s.first == task.id:  # restored, and ended before it was queued (lost)
            s.first = None
        elif s.current is task:
            s.current = None
        else:
            return  # a task cancelled while it waited in the line
        self._touch(s)
        if s.line:
            nxt = s.line.pop(0)
            self._parked[task.agent] -= 1
            s.turn_of(nxt)
            self.inner.put(nxt)
            if self.pump is not None:
                self.pump(task.agent)

    # -- dispatch's -----------------------------------------------------------------------
    def prefer(self, task: Task, r: Replica, agent: AgentLike) -> Replica:
        """The replica that holds the session when it is the same process and has a free
        slot, else `r` (the least loaded)."""
        s = self.table.get(_key(task))
        held = s.replica if s is not None else None
        if (held is None or held is r or s is None or held.pid != s.pid
                or held not in agent.replicas or not held.takes_tasks
                or held.tasks_running >= agent.spec.max_concurrent_tasks):
            return r
        return held

    def started(self, task: Task, r: Replica) -> msgspec.Raw | None:
        """The session's task starts on `r`: the state it is given."""
        key = _key(task)
        s = self.table.get(key)
        if s is None:
            s = self.table[key] = Session(task.agent, key[1], time.time())
        s.replica, s.pid, s.holder = r, r.pid, f"{r.name}#{r.index}"
        self._touch(s)
        return s.state

    # -- the worker's -----------------------------------------------------------------------
    async def checkpoint(self, task: Task, state: Any) -> dict[str, Any]:
        """session/checkpoint: the session's state, durable before it is answered."""
        if task.session is None:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"session/checkpoint: task {task.id} "
                                                   "has no session")
        s = self.table.get(_key(task))
        if s is None:
            s = self.table[_key(task)] = Session(task.agent, task.session, time.time())
        body = msgspec.json.encode(state)
        s.state = msgspec.Raw(body)
        s.last_used = time.time()
        journal = self.journal
        if journal is not None:
            journal.put(s.row())
            journal.put_state(s.row(), body)
            await journal.committed()
        return {}
