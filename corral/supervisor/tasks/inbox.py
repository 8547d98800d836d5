"""The inbox: what tasks ask of a person, and the person's decisions (DESIGN section 23,
docs/approvals.md).

An ask is an approval (a tool call or a model call held until a person approves it) or a
question (a prompt and the JSON schema its answer must fit). It belongs to the task that
asked, and to that task's tenant as it was when the task was accepted (DESIGN section 20).
Each ask is keyed within its task by its `key`, the call it holds: a retried attempt that
asks again for the same call finds the ask it made before (still pending, or decided, and
then its decision holds), never a second one.

`Inbox` is the service: `ask` records an ask (committed to its store before it returns),
`wait` until it ends, `decide` ends it (approved, denied, answered), its deadline ends it
timed out, and `withdraw` ends the asks of a task that ended. An ask ends once: a decision
after its end is refused naming how and by whom it ended. The pending asks are held in
memory as well as stored, bounded per tenant and per daemon; a bound reached refuses the
ask by its name. The store is the daemon's state database (daemon/inboxjournal.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, get_type_hints

import msgspec

from ... import jsonrpc
from ...askviews import Ask, AskEnd, AskKind, AskRequest
from ...jsonrpc import RpcError
from ...text import iso_time
from ..config import DEFAULT_TENANT
from ..stream import Stream
from .model import Task, TaskFinished
from .waitclock import WaitClock, WaitTimer

log = logging.getLogger("corral.inbox")

# a decision's edited arguments, or an answer, as JSON: past this it is refused by name
MAX_DECISION_BYTES = 64 * 1024
# what an ask shows a person (a call's arguments, a question, a server's form) as JSON:
# an agent's or an MCP server's to choose, held by the inbox or the cluster's Redis for
# as long as it waits, so past this the call is refused by name and nothing is asked
MAX_SUBJECT_BYTES = 64 * 1024
# pending asks held at once: the daemon's, and each tenant's (the operator's own tasks,
# tenant None, count as one tenant)
MAX_PENDING = 10_000
MAX_PENDING_PER_TENANT = 1_000
# asks one task (or one replica's incarnation, for its calls of no task) makes over its
# life, pending or ended: each is a row kept for the task's life, so one more is refused
MAX_ASKS_PER_TASK = 100
EXPIRE_RETRY = 1.0  # seconds: a deadline's end the store refused is tried again after

# a pending ask is held as its record packed, its fields in their order (one object, not
# a dozen: thousands of suspended tasks may wait for days), unpacked where it is read;
# not its id, which is the key it is held by, nor how it ended, which it has yet to (a
# pending ask's packed record then fits a smaller block of the allocator's)
_ENDED = frozenset({"end", "ended", "by", "data"})
_FIELDS = tuple(f for f in Ask.__struct_fields__ if f != "id" and f not in _ENDED)
_encode = msgspec.msgpack.Encoder().encode


@functools.cache
def _decoder() -> msgspec.msgpack.Decoder[tuple[Any, ...]]:
    """Made at the first ask read back, not at import: the field types' evaluation was
    ~1.3 ms of every daemon's start, and most daemons are never asked anything."""
    return msgspec.msgpack.Decoder(tuple[tuple(get_type_hints(Ask)[f] for f in _FIELDS)])  # type: ignore[misc]


def _pack(ask: Ask) -> bytes:
    return _encode(tuple(getattr(ask, f) for f in _FIELDS))


def _unpack(ask_id: str, packed: bytes) -> Ask:
    return Ask(id=ask_id, **dict(zip(_FIELDS, _decoder().decode(packed), strict=True)))


# the ends a person decides, by the kind of ask they decide
DECIDED = {AskKind.APPROVAL: frozenset({AskEnd.APPROVED, AskEnd.DENIED}),
           AskKind.QUESTION: frozenset({AskEnd.ANSWERED, AskEnd.DENIED})}
# who ends an ask when no person does
CORRAL = "corral"


def askable(task: Task) -> bool:
    """Whether an ask of the task would be found again by whoever runs it next: this
    engine's (its journal is here), or a cluster's claim that keeps its asks in Redis
    (Task.asks_kept; a claim given back as it is made keeps none)."""
    return task.journal_here or task.asks_kept is not None


def check_decision(ask: Ask, decision: Decision) -> None:
    """A decision the pending `ask` takes, else RpcError (INVALID_PARAMS) saying why: an
    end its kind does not take, data past MAX_DECISION_BYTES."""
    if decision.end not in DECIDED[ask.kind]:
        takes = " or ".join(sorted(DECIDED[ask.kind]))
        raise RpcError(jsonrpc.INVALID_PARAMS,
                       f"ask {ask.id} is {'an' if ask.kind is AskKind.APPROVAL else 'a'}"
                       f" {ask.kind}: it is {takes}, not {decision.end}")
    size = len(msgspec.json.encode(decision.data))
    if size > MAX_DECISION_BYTES:
        raise RpcError(jsonrpc.INVALID_PARAMS,
                       f"the decision's data is {size} bytes of JSON, over the bound "
                       f"(max_decision_bytes {MAX_DECISION_BYTES})")


def check_subject(req: AskRequest) -> None:
    """RpcError (INVALID_PARAMS) when what `req` asks is past MAX_SUBJECT_BYTES."""
    size = len(msgspec.json.encode(req.subject))
    if size > MAX_SUBJECT_BYTES:
        what = "call's arguments are" if req.kind is AskKind.APPROVAL else "question is"
        raise RpcError(jsonrpc.INVALID_PARAMS,
                       f"task {req.task_id}'s {req.kind} was not asked: its {what} "
                       f"{size} bytes of JSON, over the bound a person is asked with "
                       f"(max_ask_bytes {MAX_SUBJECT_BYTES})")


def too_many_asks(task_id: str, n: int, bound: int) -> str:
    """A task's ask past `bound` asks over its life (each call's, pending or ended; a
    retry's finds its earlier attempt's): [supervisor] max_asks_per_task on a node,
    [cluster] max_asks_per_task for a cluster's task."""
    return (f"task {task_id} has made {n} asks of a person, its bound "
            f"(max_asks_per_task {bound}): nothing more is asked")


def ended_message(ask: Ask) -> str:
    """What a decision of an ask that has ended is told."""
    return f"ask {ask.id} has ended: {ask.end} by {ask.by} at {iso_time(ask.ended or 0.0)}"


class InboxBounds(NamedTuple):
    """Pending asks held at once: the daemon's, and each tenant's (the operator's own
    tasks, tenant None, count as one tenant); [supervisor] max_pending_asks and
    max_pending_asks_per_tenant."""

    pending: int = MAX_PENDING
    per_tenant: int = MAX_PENDING_PER_TENANT
    per_task: int = MAX_ASKS_PER_TASK  # [supervisor] max_asks_per_task


DEFAULT_BOUNDS = InboxBounds()


class Decision(NamedTuple):
    """A person's decision of the ask `ask_id`; `data` as on Ask."""

    ask_id: str
    end: AskEnd
    by: str
    data: Any = None


class AskEnded(NamedTuple):
    """An ask was made (`ask.pending`) or ended: told on the engine's stream, for the
    inbox's feeds."""

    ask: Ask


class AskStore(Protocol):
    """Where asks are kept (daemon/inboxjournal.py): `save` commits an ask's record (new
    or ended) before it returns, or raises StoreError."""

    async def save(self, ask: Ask) -> None: ...

    def pending(self) -> Iterable[Ask]:
        """Every ask not ended, at start-up."""

    def find(self, task_id: str, key: str) -> Ask | None:
        """The task's ask for the call `key`, ended or not."""

    def get(self, ask_id: str) -> Ask | None: ...

    def count(self, task_id: str) -> int:
        """How many asks the task has made, ended or not."""


class HeldAsks:
    """An AskStore in memory: an engine's without a state database (its asks end with
    the process)."""

    def __init__(self) -> None:
        self.asks: dict[str, Ask] = {}

    async def save(self, ask: Ask) -> None:
        self.asks[ask.id] = ask

    def pending(self) -> list[Ask]:
        return [a for a in self.asks.values() if a.pending]

    def find(self, task_id: str, key: str) -> Ask | None:
        return next((a for a in self.asks.values()
                     if a.task_id == task_id and a.key == key), None)

    def get(self, ask_id: str) -> Ask | None:
        return self.asks.get(ask_id)

    def count(self, task_id: str) -> int:
        return sum(1 for a in self.asks.values() if a.task_id == task_id)


class Inbox:
    """The engine's asks: the pending ones in memory, every one in `store` (HeldAsks
    until the daemon gives its database's, before `load`). A task that ends withdraws its
    pending asks."""

    def __init__(self, stream: Stream, store: AskStore | None = None,
                 clock: WaitClock | None = None) -> None:
        self.store: AskStore = store if store is not None else HeldAsks()
        self.stream = stream
        self.clock = clock if clock is not None else WaitClock()
        self.max_pending = MAX_PENDING
        self.max_pending_per_tenant = MAX_PENDING_PER_TENANT
        self.max_asks_per_task = MAX_ASKS_PER_TASK
        self._pending: dict[str, bytes] = {}  # ask id -> the ask packed
        # task id -> its pending ask's id, or their ids when it has several
        self._by_task: dict[str, str | tuple[str, ...]] = {}
        self._per_tenant: dict[str | None, int] = {}
        # asks checked against the bounds whose records are being stored: counted as
        # pending, so that asks made at once do not pass a bound together
        self._storing: dict[str | None, int] = {}
        # ask id -> the futures of those waiting on its end, one each (none kept for an
        # ask no one waits on: a suspended task's, thousands of which may wait for days)
        self._waiters: dict[str, list[asyncio.Future[Ask]]] = {}
        self._timers: dict[str, WaitTimer] = {}
        self._deciding: set[str] = set()
        self._expiring: set[asyncio.Task[None]] = set()
        # told of a task's end while an ask of a task is pending here
        self._ends = stream.subscribe(self._finished, TaskFinished, listening=False)

    def _finished(self, e: TaskFinished) -> None:
        if not self._by_task:
            self.stream.listen(self._ends, False)
        elif e.task.id in self._by_task:
            task = asyncio.get_running_loop().create_task(self._withdrawn(e.task.id))
            self._expiring.add(task)

    async def _withdrawn(self, task_id: str) -> None:
        try:
            await self.withdraw(task_id)
        except Exception as exc:  # pending in the store: withdrawn at its next load
            log.error("the asks of task %s could not be withdrawn (%s)", task_id, exc)
        finally:
            self._expiring.discard(asyncio.current_task())  # type: ignore[arg-type]

    def load(self, store: AskStore, bounds: InboxBounds = DEFAULT_BOUNDS,
             ids: Mapping[str, str] = MappingProxyType({})) -> int:
        """Keep asks in `store` (the daemon's database) within `bounds` from now on: the
        pending asks it holds (after a restart) wait again, each with its deadline; how
        many. `ids`: task ids as the engine holds them, to hold each once."""
        self.store = store
        self.max_pending, self.max_pending_per_tenant, self.max_asks_per_task = bounds
        for ask in self.store.pending():
            self._hold(ask, ids.get(ask.task_id, ask.task_id))
        return len(self._pending)

    # -- asking ---------------------------------------------------------------------------
    async def ask(self, req: AskRequest) -> Ask:
        """The ask of `req`'s call: the one its task made before for the same key (pending
        or ended), else a new one, stored before this returns. Refused past a bound
        (QUOTA_EXCEEDED, naming it)."""
        held = next((a for a in self.waiting_for(req.task_id) if a.key == req.key), None)
        if held is not None:
            return held
        found = self.store.find(req.task_id, req.key)
        if found is not None:
            return found
        self._check_bounds(req.tenant)
        made = self.store.count(req.task_id)
        if made >= self.max_asks_per_task:
            raise RpcError(jsonrpc.QUOTA_EXCEEDED,
                           too_many_asks(req.task_id, made, self.max_asks_per_task))
        now = self.clock.time()
        ask = req.made(f"ask-{secrets.token_hex(8)}", now, req.tenant)
        storing = self._storing
        storing[req.tenant] = storing.get(req.tenant, 0) + 1
        try:
            await self.store.save(ask)
        finally:
            storing[req.tenant] -= 1
            if not storing[req.tenant]:
                del storing[req.tenant]
        self._hold(ask)
        self._tell(ask)
        return ask

    def _check_bounds(self, tenant: str | None) -> None:
        pending = len(self._pending) + sum(self._storing.values())
        if pending >= self.max_pending:
            raise RpcError(jsonrpc.QUOTA_EXCEEDED,
                           f"the inbox holds {pending} pending asks, its bound "
                           f"(max_pending_asks {self.max_pending})")
        held = self._per_tenant.get(tenant, 0) + self._storing.get(tenant, 0)
        if held >= self.max_pending_per_tenant:
            whose = ("the operator's tasks hold" if tenant in (None, DEFAULT_TENANT)
                     else f"tenant {tenant} holds")
            raise RpcError(jsonrpc.QUOTA_EXCEEDED,
                           f"{whose} {held} pending asks, its bound "
                           f"(max_pending_asks_per_tenant {self.max_pending_per_tenant})")

    def _hold(self, ask: Ask, task_id: str | None = None) -> None:
        self._pending[ask.id] = _pack(ask)
        task_id = ask.task_id if task_id is None else task_id
        had = self._by_task.get(task_id)
        self._by_task[task_id] = (ask.id if had is None else
                                  (had, ask.id) if isinstance(had, str) else (*had, ask.id))
        self.stream.listen(self._ends)
        self._per_tenant[ask.tenant] = self._per_tenant.get(ask.tenant, 0) + 1
        if ask.deadline is not None:
            self._arm(ask.id, ask.deadline)

    def _arm(self, ask_id: str, deadline: float) -> None:
        # (the timer holds its id, not the ask unpacked, for days)
        delay = max(0.0, deadline - self.clock.time())
        self._timers[ask_id] = self.clock.call_later(delay, lambda: self._expire(ask_id))

    def _release(self, ask: Ask) -> None:
        self._pending.pop(ask.id, None)
        left = tuple(i for i in self._ids(ask.task_id) if i != ask.id)
        if not left:
            self._by_task.pop(ask.task_id, None)
        else:
            self._by_task[ask.task_id] = left[0] if len(left) == 1 else left
        count = self._per_tenant.get(ask.tenant, 0) - 1
        if count > 0:
            self._per_tenant[ask.tenant] = count
        else:
            self._per_tenant.pop(ask.tenant, None)
        timer = self._timers.pop(ask.id, None)
        if timer is not None:
            timer.cancel()

    # -- waiting --------------------------------------------------------------------------
    async def wait(self, ask: Ask) -> Ask:
        """The ask as it ended (at once when it has)."""
        fut = self.waiter(ask)
        try:
            return await fut
        finally:
            self.unwait(ask.id, fut)

    def waiter(self, ask: Ask) -> asyncio.Future[Ask]:
        """A future of the caller's own that the ask's end resolves with the ask as it
        ended (done already when it has); a caller that stops waiting before, or sets it
        itself, lets it go (`unwait`). No coroutine, no shield: one object a waiter."""
        fut: asyncio.Future[Ask] = asyncio.get_running_loop().create_future()
        if not ask.pending:
            fut.set_result(ask)
            return fut
        if ask.id not in self._pending:  # ended while the caller held the record
            ended = self.store.get(ask.id)
            if ended is not None and not ended.pending:
                fut.set_result(ended)
                return fut
        waiting = self._waiters.get(ask.id)
        if waiting is None:
            self._waiters[ask.id] = [fut]
        else:
            waiting.append(fut)
        return fut

    def unwait(self, ask_id: str, fut: asyncio.Future[Ask]) -> None:
        """`fut` (`waiter`'s) no longer waits on the ask's end."""
        waiting = self._waiters.get(ask_id)
        if waiting is not None and fut in waiting:
            waiting.remove(fut)
            if not waiting:
                del self._waiters[ask_id]

    # -- ending ---------------------------------------------------------------------------
    async def decide(self, decision: Decision) -> Ask:
        """End a pending ask as a person decided. Refused (exact messages in
        docs/approvals.md): no such pending ask (NOT_FOUND: ended asks say how), an end
        its kind does not take, data past MAX_DECISION_BYTES (INVALID_PARAMS)."""
        ask = self._held(decision.ask_id)
        if ask is None or decision.ask_id in self._deciding:
            raise self._not_pending(decision.ask_id)
        check_decision(ask, decision)
        return await self._end(ask, decision.end, decision.by, decision.data)

    def _not_pending(self, ask_id: str) -> RpcError:
        if ask_id in self._deciding:
            return RpcError(jsonrpc.CONFLICT, f"ask {ask_id} is being decided by another "
                                              f"caller")
        ended = self.store.get(ask_id)
        if ended is None or ended.ended is None:
            return RpcError(jsonrpc.NOT_FOUND, f"no such ask: {ask_id}")
        return RpcError(jsonrpc.CONFLICT, ended_message(ended))

    async def withdraw(self, task_id: str) -> list[Ask]:
        """End the task's pending asks (it ended while they waited)."""
        mine = [a for a in self.waiting_for(task_id) if a.id not in self._deciding]
        return [await self._end(a, AskEnd.WITHDRAWN, CORRAL, None) for a in mine]

    def _expire(self, ask_id: str) -> None:
        self._timers.pop(ask_id, None)
        ask = self._held(ask_id)
        if ask is None or ask_id in self._deciding:
            return
        self._expiring.add(asyncio.get_running_loop().create_task(self._time_out(ask)))

    async def _time_out(self, ask: Ask) -> None:
        try:
            await self._end(ask, AskEnd.TIMED_OUT, CORRAL, None)
        except Exception as exc:  # the store refused: tried again, pending meanwhile
            log.error("ask %s could not be timed out (%s); trying again", ask.id, exc)
            if ask.id in self._pending:
                self._timers[ask.id] = self.clock.call_later(
                    EXPIRE_RETRY, lambda: self._expire(ask.id))
        finally:
            self._expiring.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _end(self, ask: Ask, end: AskEnd, by: str, data: Any) -> Ask:
        """The ask ended, committed before anyone waiting is told (a store that cannot be
        written refuses the decision; the ask stays pending)."""
        self._deciding.add(ask.id)
        try:
            ended = msgspec.structs.replace(ask, end=end, ended=self.clock.time(), by=by,
                                            data=data)
            await self.store.save(ended)
        finally:
            self._deciding.discard(ask.id)
        self._release(ask)
        for fut in self._waiters.pop(ask.id, ()):
            if not fut.done():
                fut.set_result(ended)
        self._tell(ended)
        return ended

    def _tell(self, ask: Ask) -> None:
        self.stream.emit(AskEnded(ask))

    # -- reading --------------------------------------------------------------------------
    def pending(self, seen: Callable[[Ask], bool] | None = None) -> list[Ask]:
        """The pending asks (those `seen` admits), oldest first."""
        asks: Iterable[Ask] = map(_unpack, self._pending.keys(), self._pending.values())
        if seen is not None:
            asks = filter(seen, asks)
        return sorted(asks, key=lambda a: (a.created, a.id))

    def get(self, ask_id: str) -> Ask | None:
        """A pending ask, else the stored record (ended), else None."""
        ask = self._held(ask_id)
        return ask if ask is not None else self.store.get(ask_id)

    def _held(self, ask_id: str) -> Ask | None:
        packed = self._pending.get(ask_id)
        return None if packed is None else _unpack(ask_id, packed)

    def _ids(self, task_id: str) -> tuple[str, ...]:
        held = self._by_task.get(task_id)
        return () if held is None else (held,) if isinstance(held, str) else held

    def asking(self, task_id: str) -> bool:
        """Whether the task waits for something now."""
        return task_id in self._by_task

    def waiting_for(self, task_id: str) -> list[Ask]:
        """What the task waits for now."""
        return [_unpack(i, self._pending[i]) for i in self._ids(task_id)]

    def close(self) -> None:
        """Stop the deadlines (the asks stay pending in the store)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for waiting in self._waiters.values():
            for fut in waiting:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()
        for task in self._expiring:
            task.cancel()


