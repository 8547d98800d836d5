"""Sessions: a conversation's tasks, one at a time, with a state that outlives each
(docs/durable.md#sessions).

`Sessions` is the Queue the dispatcher takes from, in front of the agents' own: a
session's current task waits in that queue, its later ones in the session's line. A
session is its owner's, not its name's: kept under the tenant its agent was of when it began.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...results import SessionInfo, SessionTask, SessionView
from ...text import plural
from ...timeouts import kept
from ..config import DEFAULT_SESSION_TTL, DEFAULT_TENANT
from ..stream import Stream
from .model import Task, TaskFinished
from .queue import Queue
from .sessionstates import HotStates, Key
from .turns import Move, TurnEvent, decide, ended, state

if TYPE_CHECKING:
    from ..quotas import Tenancy
    from ..replica import Replica
    from .host import AgentLike, TaskHost

# unique across restarts of the daemon too (a restored session keeps its own)
_generations = itertools.count(time.time_ns())
SWEEP_EVERY = 60.0  # seconds between looks over the table for expired sessions
LOAD_RETRY = 1.0  # seconds before a state the journal could not read is read again
# a refusal looks over the table for expired sessions at most this often (seconds): a
# caller at its bound does not make each refused task a pass over every session
REFUSED_SWEEP = 1.0
KEEP_HISTORY = 1000  # a session's last tasks kept in its history, on every home


class SessionBound(NamedTuple):
    """A bound on live sessions: an agent's own, or its tenant's over its agents."""

    who: str  # "agent NAME", "tenant NAME"
    agents: Collection[str]
    max_sessions: int  # 0: none
    max_bytes: int  # their states' bytes together; 0: none


class SessionKey(NamedTuple):
    """Whose a session is: its agent's tenant when it began, the agent's name, its own."""

    tenant: str
    agent: str
    name: str


class SessionRow(NamedTuple):
    """What a journal keeps of a session, besides its state and its tasks."""

    tenant: str  # its agent's when it began
    agent: str
    name: str
    created: float
    last_used: float
    tasks: int
    holder: str | None  # the replica that ran its last task ("agent#i")
    gen: int  # this life of the session (an ended one's name may start a new one)


def session_bounds(agent: AgentLike | None, tenancy: Tenancy | None) -> list[SessionBound]:
    """The bounds on an agent's live sessions: its own, and its tenant's if it has any."""
    if agent is None:
        return []
    out = [SessionBound(f"agent {agent.name}", (agent.name,), agent.spec.max_sessions,
                        agent.spec.max_session_bytes)]
    tenant = tenancy.tenant_of(agent.name) if tenancy is not None else None
    if tenancy is not None and tenant is not None:
        spec = tenancy.spec(tenant)
        if spec.max_sessions or spec.max_session_bytes:
            out.append(SessionBound(f"tenant {tenant}", [a.name for a in tenancy.members(tenant)],
                                    spec.max_sessions, spec.max_session_bytes))
    return out


def session_ttl(agent: AgentLike | None, tenant: str) -> float:
    """A session's session_ttl on every home: its agent's here; of an agent now another
    tenant's, or gone across a restart, the default (a cluster node that does not run it
    keeps the ttl the session's hash holds: decision 1991)."""
    if agent is None or agent.spec.tenant != tenant:
        return DEFAULT_SESSION_TTL
    return agent.spec.session_ttl


def expires(last_used: float, ttl: float, idle: bool) -> float | None:
    """When a session expires, on every home, from what its store read: `ttl` after its
    last use once no turn of it is unfinished; None: not while one is, nor with no ttl."""
    return last_used + ttl if ttl and idle else None


def over(bounds: Iterable[SessionBound], live: Mapping[str, int], held: Mapping[str, int],
         more: int, size: int) -> RpcError | None:
    """Why `more` sessions and `size` bytes of state more are past a bound, or None, on
    every home: on what its store read of each agent a bound counts (its live sessions,
    their states' bytes), which the store keeps the move under (decision 1992)."""
    for b in bounds:
        now = sum(live.get(a, 0) for a in b.agents)
        if more and b.max_sessions and now + more > b.max_sessions:
            return RpcError(jsonrpc.REFUSED, (
                f"sessions full: {b.who} has {plural(now, 'live session')} (max_sessions "
                f"{b.max_sessions}); end one (corral sessions end) or wait for one to "
                "expire (session_ttl)"))
        kept = sum(held.get(a, 0) for a in b.agents) + size
        if size > 0 and b.max_bytes and kept > b.max_bytes:
            return state_too_large(b.who, kept, b.max_bytes)
    return None


def bytes_counted(bounds: Iterable[SessionBound]) -> list[str]:
    """The agents whose live sessions' states' bytes a bound counts (max_session_bytes),
    which a store reads for a checkpoint's `over`: none, nothing to read."""
    return sorted({a for b in bounds if b.max_bytes for a in b.agents})


def state_too_large(who: str, held: int, most: int) -> RpcError:
    """Why a checkpoint is refused past max_session_bytes (its state not kept), on either home."""
    return RpcError(jsonrpc.REFUSED, f"session/checkpoint: session state too large: {who}'s "
                    f"live sessions would hold {plural(held, 'byte')} of state "
                    f"(max_session_bytes {most}); the session keeps its last state")


def turn_waits(session: str | None, current: str, runs: bool, ahead: int) -> str:
    """Why a queued turn of a session does not start, on either home."""
    more = f" ({plural(ahead, 'task')} of it ahead)" if ahead else ""
    return f"session {session}: task {current} {'runs' if runs else 'waits before it'}{more}"


class SessionJournal(Protocol):
    """Where sessions are made durable (the daemon's: corral.daemon.sessionjournal.SessionsDB)."""

    def put(self, row: SessionRow) -> None:
        """Keep the session's row (a newer one replaces it); does not block."""

    def put_state(self, row: SessionRow, state: bytes) -> None: ...

    def add_task(self, row: SessionRow, task_id: str) -> None:
        """A task of the session was accepted (its history)."""

    def end(self, row: SessionRow) -> None:
        """Forget the session: its row, state and history."""

    async def committed(self) -> None:
        """Return once everything put so far is durable; raise if it cannot be."""

    async def history(self, row: SessionRow) -> list[SessionTask]:
        """The session's tasks, in the order accepted."""

    async def state(self, row: SessionRow) -> bytes | None:
        """The session's state as committed (everything put before is awaited)."""

    def state_now(self, row: SessionRow) -> bytes | None:
        """The session's state as written so far, read on the caller's thread."""


class SessionsEnding(NamedTuple):
    """Agents removed (name -> their tenant): their sessions end; where turns are kept elsewhere (a
    cluster node hears this) that ending is added to `endings`, awaited by `end_agents`."""

    owners: Mapping[str, str]
    endings: list[Awaitable[None]]


class SessionTurns(NamedTuple):
    """A session as its store read it: its view, its turns unfinished, the turn holding its
    place as kept ('' none: what `end_session` compares) and its status (None: none holds it)."""

    view: SessionView
    unfinished: int
    current: str
    status: str | None


class SessionStore(Protocol):
    """Where sessions are kept (this engine's `Sessions`, a cluster's): storage only; which
    session a caller names, the stores together, and whether a session may end are
    SessionBook's, written once above them."""

    async def session_views(self, agent: str | None) -> list[SessionView]:
        """The live sessions (of `agent`), every tenant's."""

    async def session_turns(self, key: SessionKey) -> SessionTurns | None:
        """None: no such live session here."""

    async def session_history(self, key: SessionKey) -> list[SessionTask]:
        """The session's tasks, in the order accepted."""

    async def end_session(self, key: SessionKey, read: SessionTurns) -> bool:
        """Forget the session, only while its turns are as `read`; False: they moved, or
        it ended, since (read it, and decide, again)."""


async def end_turns(store: SessionStore, key: SessionKey) -> SessionView | None:
    """The session's view as it was, ended, as the rule decides (turns.py) on what
    `store` read, on every home: refused while a turn of it is unfinished, else kept by
    the store while the session is as read; None: no such live session there."""
    while (read := await store.session_turns(key)) is not None:
        if decide(state(bool(read.unfinished), read.view.waiting),
                  TurnEvent.CLOSE) is Move.REFUSE:
            holds = f": task {read.current} is {read.status}" if read.status else ""
            raise RpcError(jsonrpc.CONFLICT, f"session {key.name} of agent {key.agent} has "
                           f"{plural(read.unfinished, 'unfinished task')}{holds}; cancel "
                           "them or wait for them to end")
        if await store.end_session(key, read):
            return read.view
    return None


# whether a record of (agent, its tenant) is the caller's (daemon/caller.py `sees_record`)
Sees = Callable[[str, str | None], bool]


class SessionBook(NamedTuple):
    """The sessions a caller names, one source over every store that keeps them: this
    engine's, then its cluster's (a `local` task's session is the node's alone)."""

    here: Sessions
    elsewhere: tuple[SessionStore, ...]  # (daemon/clusterpeer.py: `session_stores`)

    @property
    def stores(self) -> tuple[SessionStore, ...]:
        return self.here, *self.elsewhere

    async def key(self, tenant: str | None, agent: str, name: str, sees: Sees) -> SessionKey:
        """The session a caller of `tenant` names: under its tenant, else under the tenant
        that holds the agent's name here now, else (the agent gone) the most recently used
        of those the caller `sees` (a caller's record check and its handler each decide
        this: another tenant's, used between the two, is never the one ended)."""
        if tenant is not None:
            return SessionKey(tenant, agent, name)
        if agent not in self.here.host.agents:
            found = [(v.last_used, v.tenant) for v in await self.listing(agent)
                     if (v.agent, v.session) == (agent, name)  # (a SCAN's glob is no name)
                     and sees(agent, v.tenant)]
            if found:
                return SessionKey(max(found)[1], agent, name)
        return self.here.key_of(agent, name)

    async def listing(self, agent: str | None) -> list[SessionView]:
        views: dict[tuple[str | None, str, str], SessionView] = {}
        for store in self.stores:
            for v in await store.session_views(agent):
                views.setdefault((v.tenant, v.agent, v.session), v)
        return list(views.values())

    async def info(self, tenant: str | None, agent: str, name: str, sees: Sees
                   ) -> SessionInfo:
        key = await self.key(tenant, agent, name, sees)
        for store in self.stores:
            if (got := await store.session_turns(key)) is not None:
                return SessionInfo(session=got.view, history=await store.session_history(key))
        raise no_such_session(agent, name)

    async def end(self, tenant: str | None, agent: str, name: str, sees: Sees
                  ) -> SessionView:
        key = await self.key(tenant, agent, name, sees)
        for store in self.stores:
            if (ended := await end_turns(store, key)) is not None:
                return ended
        raise no_such_session(agent, name)


def no_such_session(agent: str, name: str) -> RpcError:
    return RpcError(jsonrpc.NOT_FOUND, f"no such session: {jsonrpc.visible(name)} of agent "
                                       f"{agent}")


class Session:
    __slots__ = ("agent", "created", "current", "first", "front", "gen", "holder", "last_used",
                 "line", "name", "pending", "pid", "replica", "state_bytes", "tasks", "tenant",
                 "warming")

    def __init__(self, key: SessionKey, now: float) -> None:
        self.tenant, self.agent, self.name = key
        self.gen = next(_generations)
        self.created = now
        self.last_used = now
        self.tasks = 0  # tasks accepted in it
        self.pending = 0  # those not finished (queued, delayed, running)
        self.state_bytes = 0  # of its last session/checkpoint (0: none; HotStates holds it)
        self.holder: str | None = None
        # the replica and process that ran its last task (the sticky choice)
        self.replica: Replica | None = None
        self.pid: int | None = None
        self.current: Task | None = None  # the one task of it that may run
        # after a restart: its first unfinished task's id, until the engine has it back
        self.first: str | None = None
        self.line: list[Task] = []  # the later ones, in submission order
        # its current task while its state is read back (out of the queue till then), and
        # whether it goes back to the queue's front (a retry)
        self.warming: Task | None = None
        self.front = False

    def turn_of(self, task: Task) -> bool:
        """Whether `task` takes (or holds) the place of the one task of the session that
        may run, as the rule decides (turns.py): its own place, a retry's or a restored
        first's, is free to it."""
        free = self.current is task or (self.current is None and self.first in (None, task.id))
        if decide(state(not free, len(self.line)), TurnEvent.SUBMIT) is not Move.START:
            return False
        self.current, self.first = task, None
        return True

    def row(self) -> SessionRow:
        return SessionRow(self.tenant, self.agent, self.name, self.created, self.last_used,
                          self.tasks, self.holder, self.gen)

    @property
    def ident(self) -> SessionKey:
        return SessionKey(self.tenant, self.agent, self.name)

    @property
    def key(self) -> Key:
        return self.tenant, self.agent, self.name, self.gen


class Sessions:
    """The engine's sessions, and the Queue in front of the agents' queue (`inner`)."""

    def __init__(self, stream: Stream, inner: Queue, host: TaskHost, tenancy: Tenancy | None,
                 pump: Callable[[str], None]) -> None:
        """`host`: its agents now, whose specs bound their sessions; `pump`: the
        dispatcher's, told when a line moved (a task of it may start)."""
        self.inner = inner
        # the inner queue's own, no call in between: a line feeds that queue, not the take
        self.take: Callable[[str], Task | None] = inner.take
        self.host = host
        self._tenancy = tenancy
        self.table: dict[SessionKey, Session] = {}
        self._parked: dict[str, int] = {}  # tasks waiting in the lines, per agent
        # task id -> the life of the session it is a turn of, from its acceptance to its end
        self._turns: dict[str, Session] = {}
        # task id -> its session's name, for a restored task whose session was not kept
        self._names: dict[str, str] = {}
        self._journal: SessionJournal | None = None
        self.hot = HotStates(64 * 1024 * 1024)  # (the daemon's: session_memory_mb)
        # live sessions and their states' bytes, per tenant, per agent
        self._live: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._bytes: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._loading: set[asyncio.Task[None]] = set()
        self.pump = pump
        self.expired = 0  # sessions dropped for their session_ttl
        self.ended = 0  # sessions ended with their agent's removal
        self.refused = 0  # new sessions and checkpoints refused for a bound
        self._swept = 0.0  # when the table was last looked over (wall time)
        self._refusal_swept = 0.0  # when a refusal last did
        self.stream = stream  # SessionsEnding goes on it
        # told of a task's end while a task is bound to a session here
        self._ends = stream.subscribe(self._finished, TaskFinished, listening=False)

    @property
    def journal(self) -> SessionJournal | None:
        return self._journal

    @journal.setter
    def journal(self, journal: SessionJournal | None) -> None:
        """The daemon's: from then on a state may leave memory (it is read back)."""
        self._journal = journal
        self.hot.spills = journal is not None

    def key_of(self, agent: str, name: str) -> SessionKey:
        """Session `name` of the agent of this name now (of no agent: the default tenant's)."""
        known = self.host.agents.get(agent)
        return SessionKey(known.spec.tenant if known is not None else DEFAULT_TENANT, agent,
                          name)

    def _new(self, key: SessionKey, now: float) -> Session:
        s = self.table[key] = Session(key, now)
        self._live[key.tenant][key.agent] += 1
        return s

    def _sized(self, s: Session, size: int) -> None:
        self._bytes[s.tenant][s.agent] += size - s.state_bytes
        s.state_bytes = size

    def _of(self, task: Task) -> Session:
        """The life of its session the task is a turn of; for a restored task its journal
        kept no session for, one begun now."""
        s = self._turns.get(task.id)
        if s is None:
            assert task.session is not None
            key = self.key_of(task.agent, task.session)
            s = self.table.get(key) or self._new(key, time.time())
            self._turns[task.id] = s
            self._names.pop(task.id, None)
            self.stream.listen(self._ends)
        return s

    def _holds(self, task: Task) -> bool:
        """Whether the task is a turn of this table's session (a cluster keeps its turns' order)."""
        return task.id in self._turns or task.id in self._names

    def _held(self, s: Session) -> bool:
        """Whether this life of the session is still the table's (not ended since)."""
        return self.table.get(s.ident) is s

    # -- the table ------------------------------------------------------------------------
    def _expires(self, s: Session) -> float | None:
        return expires(s.last_used, session_ttl(self.host.agents.get(s.agent), s.tenant),
                       not s.pending)  # (idle: no turn of it unfinished)

    def _expired(self, s: Session, now: float) -> bool:
        at = self._expires(s)
        return at is not None and now > at

    def _drop(self, s: Session) -> None:
        if self._held(s):
            del self.table[s.ident]
            # (its view still tells its size; names come and go: no count of none is kept)
            self._live[s.tenant] -= Counter({s.agent: 1})
            self._bytes[s.tenant] -= Counter({s.agent: s.state_bytes})
            self.hot.drop(s.key)
        if self.journal is not None:
            self.journal.end(s.row())

    def sweep(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._swept = now
        for s in [s for s in self.table.values() if self._expired(s, now)]:
            self.expired += 1
            self._drop(s)

    async def end_agents(self, owners: Mapping[str, str]) -> None:
        """Agents (name -> their tenant) were removed: their sessions end, here and where
        turns are kept elsewhere (a cluster's). A task of one still unfinished keeps its
        life of it, no longer the table's: given nothing more, its checkpoints refused."""
        for s in [s for s in self.table.values() if owners.get(s.agent) == s.tenant]:
            self.ended += 1
            self._drop(s)
        if self.journal is not None:
            # deleted once committed; a journal that cannot write says so and writes it
            # when it can (the removal itself is done)
            with contextlib.suppress(Exception):
                await self.journal.committed()
        if self.stream.wants(SessionsEnding):
            ending = SessionsEnding(owners, [])
            self.stream.emit(ending)
            for elsewhere in ending.endings:
                await elsewhere

    def _touch(self, s: Session) -> None:
        s.last_used = time.time()
        if self.journal is not None:
            self.journal.put(s.row())

    def accept(self, task: Task) -> None:
        """A task naming a session accepted: bound to it (made anew if expired), in its
        history, its place taken (`_turn` counts it once put: its time come)."""
        assert task.session is not None
        key = self.key_of(task.agent, task.session)
        s = self.table.get(key)
        now = time.time()
        if s is not None and self._expired(s, now):
            self.expired += 1
            self._drop(s)
            s = None
        if s is None:
            if now - self._swept > SWEEP_EVERY:  # (the expired ones not asked for again)
                self.sweep(now)
            s = self._new(key, now)
        self._turns[task.id] = s
        if not s.turn_of(task):  # (its place in the order they came, a turn held for its
            bisect.insort(s.line, task, key=lambda t: t.seq)  # time's too, as a cluster's)
        self.stream.listen(self._ends)
        s.tasks += 1
        s.pending += 1
        self._touch(s)
        if self.journal is not None:
            self.journal.add_task(s.row(), task.id)

    def _live_at(self, key: SessionKey) -> Session | None:
        s = self.table.get(key)
        return None if s is None or self._expired(s, time.time()) else s

    def listing(self, agent: str | None = None) -> list[Session]:
        self.sweep()
        return sorted((s for s in self.table.values() if agent is None or s.agent == agent),
                      key=lambda s: (s.agent, s.name, s.tenant))

    # -- read by name (SessionStore) ---------------------------------------------------------
    def view(self, s: Session) -> SessionView:
        return SessionView(
            agent=s.agent, session=s.name, tasks=s.tasks, created=s.created,
            last_used=s.last_used, holder=s.holder, state_bytes=s.state_bytes,
            running=s.current.id if s.current is not None else None, waiting=len(s.line),
            expires=self._expires(s), tenant=s.tenant)

    async def session_views(self, agent: str | None) -> list[SessionView]:
        return [self.view(s) for s in self.listing(agent)]

    async def session_turns(self, key: SessionKey) -> SessionTurns | None:
        s = self._live_at(key)
        cur = s.current if s is not None else None
        return None if s is None else SessionTurns(self.view(s), s.pending, cur.id if cur else "",
                                                   cur.status if cur else None)

    async def session_history(self, key: SessionKey) -> list[SessionTask]:
        s, journal = self._live_at(key), self.journal
        return [] if s is None or journal is None else await journal.history(s.row())

    async def end_session(self, key: SessionKey, read: SessionTurns) -> bool:
        s = self._live_at(key)
        if s is None or await self.session_turns(key) != read:  # (moved since it was read)
            return False
        self._drop(s)
        if self.journal is not None:
            await self.journal.committed()
        return True

    def restore(self, sessions: Iterable[tuple[SessionRow, int | None]],
                members: Iterable[tuple[str, SessionKey]]) -> None:
        """The sessions a journal kept (with their states' sizes: the states stay there
        till used), and (task id, its session) of each unfinished task in the order
        accepted, before the tasks are restored: the first of each is its current one."""
        for row, size in sessions:
            s = self._new(SessionKey(row.tenant, row.agent, row.name), row.created)
            s.gen, s.last_used, s.tasks, s.holder = row.gen, row.last_used, row.tasks, None
            self._sized(s, size or 0)  # read back when a task of it starts
        for task_id, key in members:
            self.stream.listen(self._ends)
            kept = self.table.get(key)
            if kept is None:  # (its row was not kept: `_of` begins one if it comes back)
                self._names[task_id] = key.name
                continue
            self._turns[task_id] = kept
            kept.pending += 1
            if kept.first is None:
                kept.first = task_id

    def member(self, task_id: str) -> str | None:
        """The session of a task restored from the journal."""
        kept = self._turns.get(task_id)
        return kept.name if kept is not None else self._names.get(task_id)

    def claim(self, task: Task) -> None:
        """A restored task of a session not in the queue (on a handed-over worker, a retry in its
        backoff) is its session's current one."""
        if task.session is not None:
            self._of(task).turn_of(task)

    def stats(self) -> dict[str, int]:
        return {"live": len(self.table), "expired": self.expired, "ended": self.ended,
                "refused": self.refused,
                "state_bytes": sum(c.total() for c in self._bytes.values()),
                "states_in_memory": len(self.hot), "memory_bytes": self.hot.bytes,
                "states_read_back": self.hot.loads}

    # -- the bounds -----------------------------------------------------------------------
    def _over(self, key: SessionKey, more: int, size: int) -> RpcError | None:
        """`over` on this table's counts (its loop keeps what it decides as one step)."""
        return over(session_bounds(self.host.agents.get(key.agent), self._tenancy),
                    self._live.get(key.tenant, {}), self._bytes.get(key.tenant, {}), more, size)

    def refusal(self, agent: str, name: str) -> RpcError | None:
        """Why a task naming session `name` of `agent` is refused, or None."""
        key, now = self.key_of(agent, name), time.time()
        if self._live_at(key) is not None:
            return None
        why = self._over(key, 1, 0)
        if why is not None and now - self._refusal_swept > REFUSED_SWEEP:
            self._refusal_swept = now
            self.sweep(now)  # the expired ones do not count
            why = self._over(key, 1, 0)
        if why is not None:
            self.refused += 1
        return why

    # -- the Queue --------------------------------------------------------------------------
    def put(self, task: Task) -> None:
        if not self._holds(task) or self._turn(task, front=False):
            self.inner.put(task)

    def requeue(self, task: Task) -> None:
        """A retry of the session's current task goes back; a delayed one, its time come,
        starts if it holds the place, else waits on in the line."""
        if not self._holds(task) or self._turn(task, front=True):
            self.inner.requeue(task)

    def _turn(self, task: Task, front: bool) -> bool:
        """Whether the session's task may wait in the agents' queue now; else it waits
        in the session's line, or for its session's state to be read back."""
        s = self._of(task)
        at = bisect.bisect_left(s.line, task.seq, key=lambda t: t.seq)
        if at < len(s.line) and s.line[at] is task:  # (its place taken at its acceptance)
            self._park(task, 1)
            return False
        if s.turn_of(task):
            if not s.state_bytes or self.journal is None or self.hot.get(s.key) is not None:
                return True
            s.warming, s.front = task, front
            self._park(task, 1)
            self._read_back(s, task)
            return False
        s.line.insert(at, task)
        self._park(task, 1)
        return False

    def _park(self, task: Task, n: int) -> None:
        """`n` more of the agent's tasks wait here: counted once their time has come (a
        turn held for it is the delays' count till then, which max_queue adds)."""
        if task.not_before is None:
            self._parked[task.agent] = self._parked.get(task.agent, 0) + n

    def _read_back(self, s: Session, task: Task) -> None:
        kept(self._loading, asyncio.get_running_loop().create_task(self._load(s, task)))

    def _read_again(self, s: Session, task: Task) -> None:
        if s.warming is task:  # (not cancelled meanwhile)
            self._read_back(s, task)

    async def _load(self, s: Session, task: Task) -> None:
        assert self.journal is not None
        try:
            state = await self.journal.state(s.row())
        except Exception:  # the journal reports its failure: read again in a while
            asyncio.get_running_loop().call_later(LOAD_RETRY, self._read_again, s, task)
            return
        if s.warming is not task:  # cancelled while it was read
            return
        s.warming = None
        self._park(task, -1)
        if state is not None and self._held(s):
            self.hot.loads += 1
            self.hot.put(s.key, msgspec.Raw(state))
        (self.inner.requeue if s.front else self.inner.put)(task)
        self.pump(task.agent)

    def remove(self, task: Task) -> bool:
        s = self._turns.get(task.id)
        if s is not None and s.warming is task:
            s.warming = None
        elif s is not None and ended(False, len(s.line), task in s.line) is Move.LEAVE:
            s.line.remove(task)  # (its cancel is its end: it leaves the line at once)
        else:
            return self.inner.remove(task)
        self._park(task, -1)
        return task.not_before is None  # (one held for its time: the delays let it go too)

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
        """Every task of the agent waiting in a line, out of it (they end with the queue's)."""
        out: list[Task] = []
        for s in self.table.values():
            if s.agent == agent and s.warming is not None:
                out.append(s.warming)
                s.warming = None
            if s.agent == agent and s.line:
                out += s.line
                s.line = []
        self._parked.pop(agent, None)
        return out

    def why_waiting(self, task: Task) -> str | None:
        s = self._turns.get(task.id)
        if s is not None and s.warming is task:
            return f"session {task.session}: its state is being read back"
        if s is None or task not in s.line or s.current is None:
            return None
        return turn_waits(task.session, s.current.id, s.current.running,
                          s.line.index(task))

    def _finished(self, e: TaskFinished) -> None:
        task = e.task
        if task.session is None:  # (on every task's end)
            return
        self._names.pop(task.id, None)
        s = self._turns.pop(task.id, None)
        if not self._turns and not self._names:
            self.stream.listen(self._ends, False)
        if s is None:
            return
        s.pending = max(0, s.pending - 1)
        # (a restored first turn holds its place too, ended before it was queued: lost;
        # one cancelled in the line left it at its cancel, `remove`: no move)
        move = ended(s.current is task or s.first == task.id, len(s.line), False)
        if move is None:
            return
        s.current = s.first = None
        if not self._held(s):
            return  # its session ended with its agent
        self._touch(s)
        if move is Move.ADVANCE:
            nxt = s.line.pop(0)
            self._park(nxt, -1)
            if nxt.not_before is not None:  # (held for its time: requeued then, it starts)
                s.turn_of(nxt)
            elif self._turn(nxt, front=False):
                self.inner.put(nxt)
            self.pump(task.agent)

    # -- dispatch's -----------------------------------------------------------------------
    def prefer(self, task: Task, r: Replica, agent: AgentLike) -> Replica:
        """The replica holding the session if the same process with a free slot, else `r`."""
        s = self._turns.get(task.id)
        held = s.replica if s is not None else None
        if (held is None or held is r or s is None or held.pid != s.pid
                or held not in agent.replicas or not held.takes_tasks
                or held.tasks_running >= agent.spec.max_concurrent_tasks):
            return r
        return held

    def started(self, task: Task, r: Replica) -> msgspec.Raw | None:
        s = self._of(task)
        if not self._held(s):
            return None  # its session ended with its agent: nothing of it is given
        s.replica, s.pid, s.holder = r, r.pid, f"{r.name}#{r.index}"
        self._touch(s)
        if not s.state_bytes:
            return None
        state = self.hot.get(s.key)
        if state is None and self.journal is not None:
            # let go again since it was read back (others were read after it): rare
            body = self.journal.state_now(s.row())
            if body is not None:
                state = msgspec.Raw(body)
                self.hot.loads += 1
                self.hot.put(s.key, state)
        return state

    # -- the worker's -----------------------------------------------------------------------
    async def checkpoint(self, task: Task, state: Any) -> dict[str, Any]:
        """session/checkpoint: the session's state, durable before it is answered."""
        s = self._of(task)
        if not self._held(s):
            raise RpcError(jsonrpc.CONFLICT, f"session/checkpoint: session {s.name} of agent "
                                             f"{s.agent} has ended (its agent was removed); "
                                             "the state is not kept")
        body = msgspec.json.encode(state)
        why = self._over(s.ident, 0, len(body) - s.state_bytes)
        if why is not None:
            self.refused += 1
            raise why
        self._sized(s, len(body))
        self.hot.put(s.key, msgspec.Raw(body))
        s.last_used = time.time()
        journal = self.journal
        if journal is not None:
            journal.put(s.row())
            journal.put_state(s.row(), body)
            await journal.committed()
        return {}
