"""Labels belong to the data (docs/security.md#taint): which untrusted tools' output a
task, a session's turns and a replica's incarnation read, handed on with what they hand on.

A task's labels are what its replica's process could have read while it ran: its own
calls', its session's earlier turns', its replica's calls of no task, and the other tasks
its replica runs with it. They are kept in the task's home (`LabelStore`, a record per
task id and per session) before the call that reads the untrusted text is made, so they
hold across retries, restarts and nodes; a child it spawns and a task its agent call
starts are given them as they are accepted. This module is the logic, written once above
the homes; the home keeps records and answers one atomic question (a mark).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .replica import Replica

# the labels a task accepted now is given (set around a spawn, an agent called at
# /mcp/corral by a replica): Approvals' task start reads it
HANDED: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "corral_handed", default=())
# the anonymous caller a task accepted now is submitted by (handing.py): who started it
# (and, a session's first turn, its session) is kept in records of their own beside the
# labels, never handed on, so that "started by" (records.py) is not "holds the label"
STARTER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "corral_starter", default=None)
INCARNATIONS = 4096  # replicas' incarnations whose labels are kept (the oldest dropped)
SESSION = "session:"  # the keys of sessions' records begin so (a task's is its id)


class _Home(Protocol):
    @property
    def labels(self) -> LabelStore: ...


class LabelledTask(Protocol):
    """What the labels read of a task (tasks/model.py's Task, which imports this module:
    a Protocol, not an import of it)."""

    @property
    def id(self) -> str: ...
    @property
    def agent(self) -> str: ...
    @property
    def session(self) -> str | None: ...
    @property
    def tenant(self) -> str | None: ...
    @property
    def home(self) -> _Home: ...
    @property
    def replica(self) -> Replica | None: ...


class LabelStore(Protocol):
    """Where a home keeps labels: a record per key (a task's id, a session's key)."""

    async def mark(self, key: str, labels: Sequence[str]) -> None:
        """Each of `labels` added to the key's (one it has is not added twice), kept
        before this returns."""

    async def read(self, key: str) -> tuple[str, ...]:
        """The key's labels, the first marked first; () when it has none."""

    def hand(self, records: Sequence[tuple[str, Sequence[str]]]) -> None:
        """The records of a task being accepted now, (key, labels) each, kept together
        and no later than any write of the task's own the home is handed after this call
        (its row): a task its home holds holds them, whenever its home is cut short."""


class MemoryLabels:
    """A LabelStore in this process's memory (an engine without a state database)."""

    __slots__ = ("_by",)

    def __init__(self) -> None:
        self._by: dict[str, tuple[str, ...]] = {}

    async def mark(self, key: str, labels: Sequence[str]) -> None:
        self._by[key] = _union(self._by.get(key, ()), labels)

    async def read(self, key: str) -> tuple[str, ...]:
        return self._by.get(key, ())

    def hand(self, records: Sequence[tuple[str, Sequence[str]]]) -> None:
        for key, labels in records:
            self._by[key] = _union(self._by.get(key, ()), labels)


class NoLabels:
    """The LabelStore of a home that keeps nothing (model.Nowhere): the engine's memory
    holds a task's labels while it runs."""

    async def mark(self, key: str, labels: Sequence[str]) -> None:
        return None

    async def read(self, key: str) -> tuple[str, ...]:
        return ()

    def hand(self, records: Sequence[tuple[str, Sequence[str]]]) -> None:
        return None


def session_record(tenant: str, agent: str, name: str) -> str:
    """The key of a session's labels (its home's journal deletes it with the session)."""
    return f"{SESSION}{tenant}:{agent}:{name}"


def started_record(key: str) -> str:
    """The key of who started a task or a session (`key`: its id, its session_record)."""
    return f"started:{key}"


# what the key of a session's record (session_record, or who started it) begins with, and
# a task's never does
SESSIONS = (SESSION, started_record(SESSION))


def accepted(task_id: str, session: str | None, handed: Sequence[str]
             ) -> list[tuple[str, tuple[str, ...]]]:
    """The labels' records a task accepted now is given, (key, labels) each: its own and
    its session's (the session's next turn holds them though this turn makes no call)."""
    if not handed:
        return []
    labels = tuple(handed)
    # (a list of one or two, not a comprehension's frame: every anonymous message's)
    return [(task_id, labels)] if session is None else [(task_id, labels), (session, labels)]


def starts(task_id: str, session: str | None, starter: str | None
           ) -> list[tuple[str, tuple[str, ...]]]:
    """The records of who started a task accepted now and its session (`starter`, an
    anonymous caller; written at each turn of its own, the first's the one that counts):
    none for a task no anonymous caller sent."""
    if not starter:
        return []
    own = (started_record(task_id), (starter,))
    return [own] if session is None else [own, (started_record(session), (starter,))]


def session_key(task: LabelledTask, replica: Replica | None = None) -> str | None:
    """The record of a task's session's labels (a claim of a cluster's carries no
    tenant: its agent's is its)."""
    if task.session is None:
        return None
    tenant = task.tenant if task.tenant is not None else getattr(
        getattr(replica, "spec", None), "tenant", None)
    return session_record(tenant or "", task.agent, task.session)


def _union(have: tuple[str, ...], more: Iterable[str]) -> tuple[str, ...]:
    if not more:  # (most calls read nothing labelled: no generator made to add nothing)
        return have
    new = tuple(x for x in dict.fromkeys(more) if x not in have)
    return have + new if new else have


def _incarnation(r: Replica) -> tuple[str, Any]:
    return (r.label, getattr(r, "spawned_at", None))


class Labels:
    """The labels of the tasks this engine runs, of their sessions and of its replicas'
    incarnations, as the policy reads them on every call (PolicyGuard); what a task
    gained and its home has yet to keep is `unkept(task)`."""

    def __init__(self, bound: int = INCARNATIONS) -> None:
        self._tasks: dict[str, tuple[str, ...]] = {}  # a running task's (and its session's)
        self._kept: dict[str, tuple[str, ...]] = {}  # of those, what its home has
        self._sessions: dict[str, tuple[str, ...]] = {}  # a running turn's session's
        # a running turn -> its session's key as it was filed (a cluster's claim carries no
        # tenant: its replica's gives it, and the replica is gone by the turn's end)
        self._session_of: dict[str, str] = {}
        self._replicas: dict[tuple[str, Any], tuple[str, ...]] = {}  # calls of no task'
        self._on: dict[str, dict[str, None]] = {}  # replica label -> its labelled tasks
        self._where: dict[str, str] = {}  # a labelled task -> its replica's label
        self._bound = bound

    # -- reading -------------------------------------------------------------------------
    def loaded(self, task: LabelledTask) -> bool:
        """Whether the task's labels were read from its home by this engine."""
        return task.id in self._kept

    async def load(self, task: LabelledTask, replica: Replica | None) -> None:
        """The task's labels and its session's, as its home keeps them (a retry's, after
        a restart, on another node)."""
        store = task.home.labels
        own = await store.read(task.id)
        key = session_key(task, replica)
        session = await store.read(key) if key is not None else ()
        if key is not None:
            self._sessions[key] = _union(self._sessions.get(key, ()), session)
            self._session_of[task.id] = key
        self._kept[task.id] = _union(self._kept.get(task.id, ()), own)
        self._tasks[task.id] = _union(self._tasks.get(task.id, ()), (*own, *session))

    def of(self, replica: Replica | None, task: LabelledTask | None) -> tuple[str, ...]:
        """What a call could have read: its task's labels, its session's, its replica's
        incarnation's and its replica's other running tasks'."""
        got: tuple[str, ...] = ()
        if task is not None:
            got = self._tasks.get(task.id, ())
            key = session_key(task, replica)
            if key is not None:
                got = _union(got, self._sessions.get(key, ()))
        if replica is not None:
            got = _union(got, self._replicas.get(_incarnation(replica), ()))
            for other in self._on.get(replica.label, ()):
                got = _union(got, self._tasks.get(other, ()))
        return got

    def of_incarnation(self, replica: Replica) -> tuple[str, ...]:
        """What the replica's calls of no task read (`corral upgrade` hands it on with the
        process that read it)."""
        return self._replicas.get(_incarnation(replica), ())

    # -- marking -------------------------------------------------------------------------
    def mark(self, replica: Replica | None, task: LabelledTask | None, labels: Sequence[str]
             ) -> None:
        """`labels` read by a call: its task's (and its session's), or, of no task, its
        replica's incarnation's. A task's labels are then all its call could have read."""
        if task is None:
            if replica is not None and labels:
                self._mark_replica(replica, labels)
            return
        got = _union(self.of(replica, task), labels)
        if not got:
            return
        self._tasks[task.id] = got
        key = session_key(task, replica)
        if key is not None:
            self._sessions[key] = _union(self._sessions.get(key, ()), got)
            self._session_of[task.id] = key
        if replica is not None and self._where.get(task.id) != replica.label:
            self._on.setdefault(replica.label, {})[task.id] = None
            self._where[task.id] = replica.label

    def _mark_replica(self, replica: Replica, labels: Sequence[str]) -> None:
        at = _incarnation(replica)
        if at not in self._replicas and len(self._replicas) >= self._bound:
            del self._replicas[next(iter(self._replicas))]  # (an exited one is never asked of)
        self._replicas[at] = _union(self._replicas.get(at, ()), labels)

    def handed(self, task: LabelledTask, labels: Sequence[str], starter: str | None = None
               ) -> None:
        """A task accepted with labels handed on (a spawn's, an agent call's, an anonymous
        caller's own): its own and its session's from its start, handed to its home
        before its row is, so that no handle of it outlives them (accepted)."""
        had = self._tasks.get(task.id)
        # (a task accepted now has none yet: its labels, each once, in their order)
        have = self._tasks[task.id] = tuple(dict.fromkeys(labels)) if had is None else \
            _union(had, labels)
        session = session_key(task)
        records = accepted(task.id, session, have) + starts(task.id, session, starter)
        if records:  # (one write of them all: one transaction of the home's writer)
            task.home.labels.hand(records)
        self._kept[task.id] = have

    async def read_from(self, task: LabelledTask, others: Sequence[str]) -> None:
        """The task read the outcomes of these tasks (its children's, `task/wait`): their
        labels are its own from now, kept by its home before it is answered."""
        store = task.home.labels
        read: tuple[str, ...] = ()
        for other in others:
            read = _union(read, await store.read(other))
        if read:
            self.mark(task.replica, task, read)
            await self._keep(task)

    async def _keep(self, task: LabelledTask) -> None:
        for key, labels in self.unkept(task, task.replica):
            await task.home.labels.mark(key, labels)

    def unkept(self, task: LabelledTask, replica: Replica | None
               ) -> list[tuple[str, tuple[str, ...]]]:
        """The records its home has yet to keep of the task's labels and its session's:
        (key, labels) each, taken as kept."""
        have = self._tasks.get(task.id, ())
        if have == self._kept.get(task.id, ()):
            return []
        self._kept[task.id] = have
        key = session_key(task, replica)
        return [(task.id, have)] + ([(key, have)] if key is not None else [])

    def forget(self, task: LabelledTask) -> None:
        """The task ended: its labels are its home's alone now."""
        self._tasks.pop(task.id, None)
        self._kept.pop(task.id, None)
        key = self._session_of.pop(task.id, None) or session_key(task, task.replica)
        if key is not None:
            self._sessions.pop(key, None)
        where = self._where.pop(task.id, None)
        if where is not None:
            on = self._on.get(where)
            if on is not None:
                on.pop(task.id, None)
                if not on:
                    del self._on[where]
