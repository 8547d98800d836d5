"""The inbox: what tasks ask of a person, and the person's decisions (docs/approvals.md).

An ask belongs to its task and to that task's tenant when it was accepted; it is keyed
within its task by the call it holds (a retried attempt finds its earlier ask) and ends
once. Pending asks are held in memory as well as stored (daemon/inboxjournal.py); their
waits and deadlines are askwaits.AskWaits' (`Inbox.waits`).
"""

from __future__ import annotations

import asyncio
import functools
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
from .askwaits import CORRAL as CORRAL
from .askwaits import AskEnded as AskEnded
from .askwaits import AskWaits
from .model import Resumer, Task
from .waitclock import WaitClock

# a decision's edited arguments, or an answer, as JSON: past this it is refused by name
MAX_DECISION_BYTES = 64 * 1024
# what an ask shows a person as JSON: an agent's or an MCP server's to choose, held for
# as long as it waits, so past this the call is refused by name and nothing is asked
MAX_SUBJECT_BYTES = 64 * 1024
# pending asks held at once, the daemon's and each tenant's (tenant None: the operator's)
MAX_PENDING = 10_000
MAX_PENDING_PER_TENANT = 1_000
# asks one task (or one replica's incarnation, for its calls of no task) makes over its
# life, pending or ended: each is a row kept for the task's life, so one more is refused
MAX_ASKS_PER_TASK = 100
# an MCP server's elicitation's key (a question's is "ask:KEY"): asked from inside its
# tool call, which no next attempt takes up where it stopped (its task is not suspended)
ELICITED = "ask:elicit:"

# a pending ask is held as its record packed (one object, not a dozen: thousands may wait
# for days), without its id (its key) nor its end: it fits a smaller allocator block
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


def check_decision(ask: Ask, decision: Decision) -> None:
    """A decision the pending `ask` takes, else RpcError (INVALID_PARAMS) saying why."""
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
    """A task's ask past `bound` asks over its life, on either home."""
    return (f"task {task_id} has made {n} asks of a person, its bound "
            f"(max_asks_per_task {bound}): nothing more is asked")


def ended_message(ask: Ask) -> str:
    return f"ask {ask.id} has ended: {ask.end} by {ask.by} at {iso_time(ask.ended or 0.0)}"


class AskRecords(Protocol):
    """What a decision reads and writes where its ask is kept (of model.AskShelf)."""

    async def read(self, ask_id: str) -> Ask | None: ...

    async def end(self, ask: Ask, end: AskEnd, by: str, data: Any = None) -> Ask: ...


async def decide(shelf: AskRecords, decision: Decision) -> Ask:
    """A person's decision of an ask, wherever it is kept: its end written once there.
    Refused: no such ask; a bad decision; an ask that has ended (CONFLICT, naming how and
    by whom), also the loser of two decisions at once. The same decision by the caller
    that won is answered with it (its request made twice)."""
    ask = await shelf.read(decision.ask_id)
    if ask is None:
        raise RpcError(jsonrpc.NOT_FOUND, f"no such ask: {decision.ask_id}")
    if ask.pending:
        check_decision(ask, decision)
    mine = (decision.end, decision.by, decision.data)
    # (of one ended already, its end as written: one being written is waited for)
    ended = await shelf.end(ask, *mine)
    if ask.pending and (ended.end, ended.by, ended.data) == mine:
        return ended
    raise RpcError(jsonrpc.CONFLICT, ended_message(ended))


class InboxBounds(NamedTuple):
    """[supervisor] max_pending_asks, max_pending_asks_per_tenant, max_asks_per_task."""

    pending: int = MAX_PENDING
    per_tenant: int = MAX_PENDING_PER_TENANT
    per_task: int = MAX_ASKS_PER_TASK


DEFAULT_BOUNDS = InboxBounds()


class Decision(NamedTuple):
    """A person's decision of the ask `ask_id`; `data` as on Ask."""

    ask_id: str
    end: AskEnd
    by: str
    data: Any = None


class AskStore(Protocol):
    """Where asks are kept (daemon/inboxjournal.py): `save` commits a record, else StoreError."""

    async def save(self, ask: Ask) -> None: ...

    def pending(self) -> Iterable[Ask]:
        """Every ask not ended, at start-up."""

    def find(self, task_id: str, key: str) -> Ask | None:
        """The task's ask for the call `key`, ended or not."""

    def get(self, ask_id: str) -> Ask | None: ...

    def count(self, task_id: str) -> int:
        """How many asks the task has made, ended or not."""


class HeldAsks:
    """An AskStore in memory: an engine's without a state database."""

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
    until the daemon gives its database's: `load`)."""

    def __init__(self, stream: Stream, store: AskStore | None = None,
                 clock: WaitClock | None = None) -> None:
        self.store: AskStore = store if store is not None else HeldAsks()
        self.stream = stream
        self.clock = clock if clock is not None else WaitClock()
        self.waits = AskWaits(stream, self.clock)
        self.max_pending, self.max_pending_per_tenant, self.max_asks_per_task = DEFAULT_BOUNDS
        self._pending: dict[str, bytes] = {}  # ask id -> the ask packed
        self._per_tenant: dict[str | None, int] = {}
        # asks checked against the bounds whose records are being stored: counted as
        # pending, so that asks made at once do not pass a bound together
        self._storing: dict[str | None, int] = {}
        # ask id -> its end being written, resolved with it as written (None: not written):
        # a decision meanwhile waits for it and is told that end
        self._ending: dict[str, asyncio.Future[Ask | None]] = {}
        # ask id -> its withdrawal being written: read so from its task's end on
        self._withdrawn: dict[str, Ask] = {}

    def load(self, store: AskStore, bounds: InboxBounds = DEFAULT_BOUNDS,
             ids: Mapping[str, str] = MappingProxyType({})) -> int:
        """Keep asks in `store` within `bounds` from now on: the pending asks it holds
        wait again; how many. `ids`: task ids as the engine holds them, to hold each once."""
        self.store = store
        self.max_pending, self.max_pending_per_tenant, self.max_asks_per_task = bounds
        for ask in self.store.pending():
            self._hold(ask, ids.get(ask.task_id, ask.task_id))
        return len(self._pending)

    # -- the home of a node's task's asks (model.AskShelf) ------------------------------
    async def keep(self, task: Task, req: AskRequest) -> Ask:
        return await self.ask(req)

    async def find(self, task: Task, key: str) -> Ask | None:
        return self.store.find(task.id, key)

    async def read(self, ask_id: str) -> Ask | None:
        return self.get(ask_id)

    async def end(self, ask: Ask, end: AskEnd, by: str, data: Any = None) -> Ask:
        while (ending := self._ending.get(ask.id)) is not None:
            # another end being written (a decision, a deadline, a withdrawal): a
            # person's is that end once written (one not written leaves the ask pending,
            # ended here then); corral's, a deadline's, is refused: its waits try again
            if by == CORRAL:
                raise RpcError(jsonrpc.CONFLICT, f"ask {ask.id} is being ended by "
                                                 "another caller")
            if (ended := await asyncio.shield(ending)) is not None:
                return ended
        held = self._held(ask.id)
        if held is not None:
            return await self._end(held, end, by, data)
        ended = self.store.get(ask.id)
        if ended is None or ended.ended is None:
            raise RpcError(jsonrpc.NOT_FOUND, f"no such ask: {ask.id}")
        return ended

    def heed(self, ask: Ask) -> Ask | None:
        # (its end is this inbox's to write, and told when written)
        return None if ask.id in self._pending else self.store.get(ask.id)

    def unheed(self, ask: Ask) -> bool:
        return True  # (its deadline is kept here with its record)

    async def give_back(self, task: Task, why: str) -> Resumer:
        asks = self.waiting_for(task.id)
        if not asks or any(a.key.startswith(ELICITED) for a in asks):
            return Resumer.NOBODY
        return Resumer.ENGINE  # (its row is the engine's journal's: the engine writes it)

    async def holds(self, task: Task) -> bool:
        return True

    # -- asking ---------------------------------------------------------------------------
    async def ask(self, req: AskRequest) -> Ask:
        """The ask of `req`'s call: the one its task made before for the same key, else
        a new one, stored before this returns. Refused past a bound (QUOTA_EXCEEDED)."""
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
        self._per_tenant[ask.tenant] = self._per_tenant.get(ask.tenant, 0) + 1
        self.waits.hold(self, ask, task_id)

    def _release(self, ask: Ask) -> None:
        self._pending.pop(ask.id, None)
        count = self._per_tenant.get(ask.tenant, 0) - 1
        if count > 0:
            self._per_tenant[ask.tenant] = count
        else:
            self._per_tenant.pop(ask.tenant, None)

    async def wait(self, ask: Ask) -> Ask:
        return await self.waits.wait(self, ask)

    # -- ending ---------------------------------------------------------------------------
    def withdraw(self, task_id: str, ask_id: str | None = None, why: str | None = None
                 ) -> asyncio.Future[list[Ask]]:
        """End the task's pending asks (`ask_id`: that one alone) withdrawn, `why` their
        data's reason: read so from this call on, written and told after; the future is
        them as written. One being decided is its decision's; one whose withdrawal is not
        written reads pending again."""
        writes = []
        for ask in self.waiting_for(task_id):
            if ask.id not in self._ending and ask_id in (None, ask.id):
                gone = self._begin(ask, AskEnd.WITHDRAWN, CORRAL,
                                   None if why is None else {"reason": why})
                self._withdrawn[ask.id] = gone
                writes.append(self._write(ask, gone))
        return asyncio.gather(*writes)

    async def _end(self, ask: Ask, end: AskEnd, by: str, data: Any) -> Ask:
        return await self._write(ask, self._begin(ask, end, by, data))

    def _begin(self, ask: Ask, end: AskEnd, by: str, data: Any) -> Ask:
        self._ending[ask.id] = asyncio.get_running_loop().create_future()
        return msgspec.structs.replace(ask, end=end, ended=self.clock.time(), by=by,
                                       data=data)

    async def _write(self, ask: Ask, ended: Ask) -> Ask:
        """`ended` committed before anyone waiting is told (a store that cannot be written
        refuses it; the ask stays pending)."""
        written = None
        try:
            await self.store.save(ended)
            written = ended
        finally:
            self._withdrawn.pop(ask.id, None)
            self._ending.pop(ask.id).set_result(written)
        self._release(ask)
        self._tell(ended)
        return ended

    def _tell(self, ask: Ask) -> None:
        self.stream.emit(AskEnded(ask))

    # -- reading --------------------------------------------------------------------------
    def pending(self, seen: Callable[[Ask], bool] | None = None) -> list[Ask]:
        """The pending asks (those `seen` admits), oldest first."""
        asks: Iterable[Ask] = (_unpack(i, packed) for i, packed in self._pending.items()
                               if i not in self._withdrawn)
        if seen is not None:
            asks = filter(seen, asks)
        return sorted(asks, key=lambda a: (a.created, a.id))

    def get(self, ask_id: str) -> Ask | None:
        ask = self._withdrawn.get(ask_id) or self._held(ask_id)
        return ask if ask is not None else self.store.get(ask_id)

    def _held(self, ask_id: str) -> Ask | None:
        packed = self._pending.get(ask_id)
        return None if packed is None or ask_id in self._withdrawn else _unpack(ask_id,
                                                                                packed)

    def asking(self, task_id: str) -> bool:
        return any(i in self._pending and i not in self._withdrawn
                   for i in self.waits.ids(task_id))

    def waiting_for(self, task_id: str) -> list[Ask]:
        pending = self._pending
        return [_unpack(i, pending[i]) for i in self.waits.ids(task_id)
                if i in pending and i not in self._withdrawn]

    def close(self) -> None:
        """Stop the deadlines (the asks stay pending in the store)."""
        self.waits.close()
